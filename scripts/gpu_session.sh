#!/usr/bin/env bash
# One lent-GPU session (one H200, 16 cores), non-interactive, sized for one device call of < 10 minutes:
#   1. training data made on the machine: N_FULL full phantoms (seed FULL_SEED), N_SMALL small ones (SMALL_SEED)
#      and nodules inserted into the real chest CT (INSERT_SEEDS, needs REAL_CT); every case in training. Seeds
#      never overlap the validation (7000, 1000's held-out split, 201-206) or evaluation (9000, 101-106) sets.
#   2. three fine-tunings of the shipped UNet at once on the one GPU, each bounded by the same wall-clock
#      budget and annealed over it (pipelines.training.data.TimeCosineLR), so they are comparable:
#        A  the gpu-device profile (volumes cached on the GPU, patch transforms there), stage 7's recipe
#        B  the same recipe through the classic loader (CPU worker processes): the fallback, and a second seed
#        C  A with stage 10's heavier nodule pasting (more pasted nodules, more part-solid/GGO, juxta-vascular)
#      The choice between them is made afterwards on CPU with `make validate`, never here.
#   1b. python -m pipelines.segmentation.probe: the gpu profile's loader alone, its batch transfer and its step alone.
#   3. `lungscreen bench --device cuda` (our path vs the plain MONAI chain, same run) and the demo set screened
#      on CUDA (its nodules.csv compared with a CPU run afterwards).
#
#   bash scripts/gpu_session.sh OUT_DIR
#
# Writes to OUT_DIR (at most 8 files): A.pt B.pt C.pt (UNet state dicts), logs.tgz, bench.tgz, session.log.
set -uo pipefail
OUT=${1:?usage: scripts/gpu_session.sh OUT_DIR}
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
N_FULL=${N_FULL:-40}; FULL_SEED=${FULL_SEED:-1400}; N_SMALL=${N_SMALL:-16}; SMALL_SEED=${SMALL_SEED:-2400}
INSERT_SEEDS=${INSERT_SEEDS:-"1 2 3 4 5 6 7 8 9 10 11 12"}; REAL_CT=${REAL_CT:-.carry/totalseg_chest_ct_crop_1p5mm.nii.gz}
SIZE=${SIZE:-full}; SMALL_SIZE=${SMALL_SIZE:-small}; DEVICE=${DEVICE:-cuda}; WORKERS=${WORKERS:-16}
BUDGET_S=${BUDGET_S:-560}; BENCH_S=${BENCH_S:-120}; BENCH_SIZES=${BENCH_SIZES:-full}; CACHE_S=${CACHE_S:-60}; RUNS=${RUNS:-"A B C"}
INIT_WEIGHTS=${INIT_WEIGHTS:-monai_bundle/models/model.pt}; LR=${LR:-0.0005}
WORK=${WORK:-/tmp/lungscreen_gpu}
export PYTHONUNBUFFERED=1
T0=$SECONDS
log() { echo "[$((SECONDS - T0)) s] $*" | tee -a "$OUT/session.log"; }

PY=${PY:-python3}
if [ -d .whl ] && ! $PY -c 'import monai, SimpleITK, nibabel, ignite' 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
LS=($PY -m pipelines.cli.main)

log "environment"
$PY -c 'import torch, monai, SimpleITK as s; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0), monai.__version__, s.Version_VersionString())' >>"$OUT/session.log" 2>&1
(nproc; free -g; nvidia-smi --query-gpu=name,memory.total --format=csv) >>"$OUT/session.log" 2>&1

# ---- 1. data ----------------------------------------------------------------------------------------------
log "data: $N_FULL $SIZE (seed $FULL_SEED) + $N_SMALL $SMALL_SIZE (seed $SMALL_SEED) + inserted seeds [$INSERT_SEEDS]"
rm -rf "$WORK"; mkdir -p "$WORK"
parts=("$WORK/full")
"${LS[@]}" sample-data "$WORK/full" --n "$N_FULL" --seed "$FULL_SEED" --size "$SIZE" --workers "$((WORKERS - 2))" \
  >>"$OUT/session.log" 2>&1 &
full_pid=$!
if [ "$N_SMALL" -gt 0 ]; then
  parts+=("$WORK/small")
  "${LS[@]}" sample-data "$WORK/small" --n "$N_SMALL" --seed "$SMALL_SEED" --size "$SMALL_SIZE" --workers 1 \
    >>"$OUT/session.log" 2>&1
fi
if [ -f "$REAL_CT" ]; then
  for s in $INSERT_SEEDS; do
    "${LS[@]}" insert-nodules "$REAL_CT" "$WORK/inserted_$s" --n 3 --seed "$s" >>"$OUT/session.log" 2>&1 \
      && parts+=("$WORK/inserted_$s")
  done
else
  log "no $REAL_CT: no inserted-nodule cases"
fi
# the bench's full scan and the demo set, made now so that step 3 spends its time measuring
$PY -c "from pathlib import Path; from pipelines.bench.run import generate_scans; print(generate_scans(Path('$WORK/benchdata'), ['$BENCH_SIZES']))" \
  >>"$OUT/session.log" 2>&1
"${LS[@]}" sample-data "$WORK/demo" --n 3 --seed 7 --size small >/dev/null 2>&1
wait $full_pid
$PY - "$WORK/mix" "${parts[@]}" >>"$OUT/session.log" 2>&1 <<'PY'
import json, sys
from pathlib import Path
from pipelines.phantom.write import merge_datasets
out, parts = sys.argv[1], sys.argv[2:]
merge_datasets(parts, out)
p = Path(out) / "datalist.json"
d = json.loads(p.read_text())
d = {"training": d["training"] + d.get("validation", []) + d.get("test", []), "validation": [], "test": []}
p.write_text(json.dumps(d, indent=1))
print(f"training mix: {len(d['training'])} cases from {len(parts)} sets")
PY
log "data done: $(grep -c '"image"' "$WORK/mix/datalist.json") cases"

# ---- 1b. where a training iteration's time goes (loader alone, transfer, step alone), the machine to itself ----
PROBE_S=${PROBE_S:-10}
if [ "$PROBE_S" -gt 0 ]; then
  log "probe: gpu profile, loader and step $PROBE_S s each"
  timeout $((PROBE_S * 2 + 90)) $PY -m pipelines.segmentation.probe --dataset "$WORK/mix" --profile gpu --device "$DEVICE" \
    --seconds "$PROBE_S" --set train#num_workers=14 train#cache_workers=16 train#max_fg_per_nodule=16 \
    --out "$WORK/probe_gpu.json" >>"$OUT/session.log" 2>&1
  log "probe exit $?"
fi

# ---- 2. three fine-tunings at once ----------------------------------------------------------------------
SEG_S=$((BUDGET_S - (SECONDS - T0) - BENCH_S - CACHE_S - 25))
[ "$SEG_S" -lt 60 ] && SEG_S=60
COMMON=(train#loss#batch=false "train#lr=$LR" train#max_fg_per_nodule=16 train#paste_prob=0.5 val_interval=100000
  train#trainer#max_epochs=100000 train#epoch_length=50 "train#time_limit_s=$SEG_S" train#lr_schedule=time_cosine
  validate#max_cases=1)
declare -A PROFILE SEED EXTRA
PROFILE[A]=gpu-device; SEED[A]=21; EXTRA[A]="train#cache_workers=5"
PROFILE[B]=cpu; SEED[B]=22
EXTRA[B]="train#num_samples=4 train#batch_size=8 train#num_workers=8 train#cache_workers=5 train#max_bg_indices=50000"
PROFILE[C]=gpu-device; SEED[C]=23
EXTRA[C]="train#cache_workers=5 train#paste_prob=0.8 train#paste_max_count=3 train#paste_type_p=[0.35,0.25,0.3,0.1] train#paste_location_p=[0.3,0.2,0.5]"
INIT=(); [ -n "$INIT_WEIGHTS" ] && [ -f "$INIT_WEIGHTS" ] && INIT=(--init-weights "$INIT_WEIGHTS")
log "train [$RUNS] at once: $SEG_S s each (+ caching), lr $LR wall-clock cosine, from ${INIT_WEIGHTS:-scratch}"
declare -A PIDS
for r in $RUNS; do
  # shellcheck disable=SC2086  # EXTRA holds several KEY=VALUE words
  timeout $((SEG_S + CACHE_S + 60)) "${LS[@]}" train --dataset "$WORK/mix" --out "$WORK/run_$r" --profile "${PROFILE[$r]}" \
    --seed "${SEED[$r]}" --device "$DEVICE" "${INIT[@]}" --no-eval --stages segmentation \
    --set "${COMMON[@]}" ${EXTRA[$r]:-} >"$WORK/train_$r.log" 2>&1 &
  PIDS[$r]=$!
done
for r in $RUNS; do
  wait "${PIDS[$r]}"; rc=$?
  last=$(tail -1 "$WORK/run_$r/segmentation/train_log.jsonl" 2>/dev/null)
  log "run $r exit $rc; last progress: $last"
  if [ -f "$WORK/run_$r/models/model.pt" ]; then
    cp "$WORK/run_$r/models/model.pt" "$OUT/$r.pt"
  else  # killed before its end: take the newest checkpoint's network
    ck=$(ls -t "$WORK/run_$r"/segmentation/checkpoints/*.pt 2>/dev/null | head -1)
    [ -n "$ck" ] && $PY -c "import torch,sys; torch.save(torch.load(sys.argv[1], map_location='cpu', weights_only=True)['model'], sys.argv[2])" \
      "$ck" "$OUT/$r.pt" && log "run $r: weights from $ck"
  fi
done
nvidia-smi --query-gpu=memory.used --format=csv >>"$OUT/session.log" 2>&1
(cd "$WORK" && tar czf "$OUT/logs.tgz" probe_*.json train_*.log run_*/segmentation/train_log.jsonl run_*/train_result.json 2>/dev/null)

# ---- 3. bench and the demo set on CUDA ------------------------------------------------------------------
LEFT=$((BUDGET_S - (SECONDS - T0) - 5))
[ "$LEFT" -lt "$BENCH_S" ] && BENCH_S=$LEFT
if [ "$BENCH_S" -gt 20 ]; then
  log "demo set on $DEVICE, then bench (<= $BENCH_S s together)"
  timeout "$BENCH_S" bash -c "
    ${LS[*]} screen '$WORK/demo/images' '$WORK/bench/demo' --device '$DEVICE' --no-report;
    ${LS[*]} bench --out '$WORK/bench/results' --scan $BENCH_SIZES=\$(ls '$WORK'/benchdata/$BENCH_SIZES/images/* | head -1) \
      --device '$DEVICE' --repeats 2 --quick" >>"$OUT/session.log" 2>&1
  log "bench exit $?"
  (cd "$WORK" && tar czf "$OUT/bench.tgz" bench/results bench/demo/nodules.csv bench/demo/candidates.csv \
    bench/demo/submission.csv bench/demo/summary.csv bench/demo/cases/*/result.json 2>/dev/null)
fi
log "done"
ls -la "$OUT" >>"$OUT/session.log"
