#!/usr/bin/env bash
# One non-interactive GPU benchmark run (meant for a lent H200: 16 cores, CUDA). Everything goes under $1.
#
#   benchmarks/gpu_bench.sh OUT_DIR
#
# Needs a Python with CUDA torch, MONAI and this package installed (PY=..., default: python3); run from the
# repository root. Steps (each logs to OUT_DIR/<step>.log and goes on if a step fails):
#   1. environment: nvidia-smi, torch/CUDA versions
#   2. lungscreen bench --device cuda (small + full scans, our path vs the MONAI chain, same run)
#   3. sliding-window variants on the full scan: bf16 at sw_batch_size 2..32, fp32, fp16, channels_last_3d,
#      torch.compile (pipelines.bench.gpu variants)
#   4. memory-bandwidth floor of the sliding window (pipelines.bench.gpu floor; formula in that module):
#        floor_s = windows_run * bytes_per_window / 4.8e12 B/s
#        bytes_per_window = sum over leaf modules (numel in + numel out) * 2 B (bf16) + params + stitch buffers
#   5. batch throughput: N_SCANS (default 10) full-size phantom scans screened as one folder, with 1, 4 and 8
#      processes sharing the GPU (torchrun shards the cases; each rank prefetches and writes in threads);
#      scans/s = N_SCANS / wall seconds of the whole command (start-up included) -> OUT_DIR/throughput.tsv
set -uo pipefail

OUT=${1:?usage: benchmarks/gpu_bench.sh OUT_DIR}
PY=${PY:-python3}
N_SCANS=${N_SCANS:-10}
REPEATS=${REPEATS:-5}
DEVICE=${DEVICE:-cuda}      # DEVICE=cpu SIZE=small N_SCANS=2 REPEATS=1: a quick smoke test of this script
SIZE=${SIZE:-full}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1

step() {  # step NAME COMMAND...: run, log, record status
  local name=$1; shift
  echo "== $name: $*" | tee -a "$OUT/steps.txt"
  local t0=$SECONDS
  "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "   $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/steps.txt"
  return 0
}

step env bash -c "nvidia-smi; $PY -c 'import torch, monai; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0), monai.__version__)'"

# 2. per-stage + end-to-end + MONAI baseline on CUDA
step bench $PY -c "from pipelines.cli.main import main; raise SystemExit(main(['bench', '--out', '$OUT/bench', '--sizes', 'small', '$SIZE', '--device', '$DEVICE', '--repeats', '$REPEATS']))"
BENCH_JSON=$(ls -t "$OUT"/bench/*.json 2>/dev/null | head -1)

# phantom scans for steps 3 and 5 (generated in parallel, one process per scan)
mkdir -p "$OUT/data/images"
gen() { $PY -c "from pipelines.phantom.write import make_dataset; make_dataset('$OUT/data/gen_$1', n=1, seed=$((7000 + $1)), size='$SIZE')" >/dev/null 2>&1 \
  && mv "$OUT"/data/gen_$1/images/* "$OUT/data/images/"; }
export -f gen; export OUT PY SIZE
step generate bash -c "seq 0 $((N_SCANS - 1)) | xargs -P 16 -I{} bash -c 'gen {}'"
FIRST=$(ls "$OUT"/data/images/* | head -1)

# 3. sliding-window variants
step variants $PY -m pipelines.bench.gpu variants --case "$FIRST" --out "$OUT/variants.json" --device "$DEVICE"

# 4. bandwidth floor (needs step 2's JSON)
if [ -n "${BENCH_JSON:-}" ]; then
  step floor $PY -m pipelines.bench.gpu floor --bench-json "$BENCH_JSON" --out "$OUT/floor.json"
fi

# 5. batch throughput over the folder: 1, 4, 8 processes on the one GPU
printf "processes\tscans\tseconds\tscans_per_s\n" >"$OUT/throughput.tsv"
for NP in 1 4 8; do
  rm -rf "$OUT/screen_np$NP"
  T0=$(date +%s.%N)
  if [ "$NP" = 1 ]; then
    step "throughput_np$NP" $PY -m pipelines.cli screen "$OUT/data/images" "$OUT/screen_np$NP" --device "$DEVICE"
  else
    step "throughput_np$NP" $PY -m torch.distributed.run --standalone --nproc_per_node "$NP" -m pipelines.screening.api \
      "$OUT/data/images" "$OUT/screen_np$NP" --device "$DEVICE"
  fi
  T1=$(date +%s.%N)
  DONE=$(ls "$OUT"/screen_np$NP/cases/*/result.json 2>/dev/null | wc -l)
  $PY -c "d=$T1-$T0; print(f'$NP\t$DONE\t{d:.2f}\t{$DONE/d:.3f}')" >>"$OUT/throughput.tsv"
done
cat "$OUT/throughput.tsv"
rm -rf "$OUT/data"  # ~0.3 GB of generated scans
echo "results in $OUT (bench/*.md, variants.json, floor.json, throughput.tsv, *.log)"
