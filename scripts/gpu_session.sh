#!/usr/bin/env bash
# One lent-GPU session, non-interactive: generate training data, train the shipped weights, benchmark.
#   bash scripts/gpu_session.sh OUT_DIR
# Environment knobs (defaults are the recorded shipped-weights recipe):
#   N_TRAIN=48 TRAIN_SEED=1000 SIZE=full PROFILE=gpu SEG_S=220 CLS_S=60 BENCH_S=90 WORKERS=16 BUDGET_S=585
#   INIT_WEIGHTS=monai_bundle/models/model.pt (fine-tune the shipped UNet; empty = from scratch)
# Writes to OUT_DIR (at most 8 files): model.pt, classifier.pt, train_result.json, train_log.jsonl,
# train.log, session.log, bench.tgz.
set -uo pipefail
OUT=${1:?usage: scripts/gpu_session.sh OUT_DIR}
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
N_TRAIN=${N_TRAIN:-48}; TRAIN_SEED=${TRAIN_SEED:-1000}; SIZE=${SIZE:-full}; PROFILE=${PROFILE:-gpu}
SEG_S=${SEG_S:-220}; CLS_S=${CLS_S:-60}; BENCH_S=${BENCH_S:-90}; WORKERS=${WORKERS:-16}
DEVICE=${DEVICE:-cuda}; WORK=${WORK:-/tmp/lungscreen_gpu}; BUDGET_S=${BUDGET_S:-585}
export PYTHONUNBUFFERED=1 LUNGSCREEN_TRAIN_NO_EVAL=1
T0=$SECONDS
log() { echo "[$((SECONDS - T0)) s] $*" | tee -a "$OUT/session.log"; }

PY=${PY:-python3}
if [ -d .whl ] && ! $PY -c 'import monai, SimpleITK' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD

log "environment"
$PY -c 'import torch, monai, SimpleITK as s; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0), monai.__version__, s.Version_VersionString())' >>"$OUT/session.log" 2>&1
(nproc; df -h /dev/shm /tmp; nvidia-smi --query-gpu=name,memory.total --format=csv) >>"$OUT/session.log" 2>&1

log "data: $N_TRAIN $SIZE cases, seed $TRAIN_SEED, $WORKERS workers"
rm -rf "$WORK"; mkdir -p "$WORK"
timeout 150 $PY -m pipelines.cli sample-data "$WORK/train" --n "$N_TRAIN" --seed "$TRAIN_SEED" --size "$SIZE" \
  --workers "$WORKERS" >>"$OUT/session.log" 2>&1
log "data done: $(ls "$WORK/train/images" 2>/dev/null | wc -l) images"

INIT_WEIGHTS=${INIT_WEIGHTS-monai_bundle/models/model.pt}
INIT=(); [ -n "$INIT_WEIGHTS" ] && [ -f "$INIT_WEIGHTS" ] && INIT=(--init-weights "$INIT_WEIGHTS")
train() {
  $PY -m pipelines.cli train --dataset "$WORK/train" --out "$WORK/run" --profile "$PROFILE" --seed 0 \
    --device "$DEVICE" "${INIT[@]}" --set "train#time_limit_s=$SEG_S" "classifier#time_limit_s=$CLS_S" \
    "train#trainer#max_epochs=40" "$@" >>"$OUT/train.log" 2>&1
}
log "train (segmentation <= $SEG_S s, classifier <= $CLS_S s)"
timeout $((SEG_S + CLS_S + 150)) bash -c "$(declare -f train); $(declare -p PY WORK PROFILE DEVICE SEG_S CLS_S OUT INIT); train"
rc=$?
if [ $rc -ne 0 ] && [ ! -f "$WORK/run/models/model.pt" ] && [ $((SECONDS - T0)) -lt 200 ]; then
  log "training failed (exit $rc); retrying with in-process data loading"
  SEG_S=$((SEG_S / 2))
  timeout $((SEG_S + CLS_S + 120)) bash -c "$(declare -f train); $(declare -p PY WORK PROFILE DEVICE SEG_S CLS_S OUT INIT); train train#num_workers=0 train#cache_workers=0 classifier#num_workers=0"
fi
log "train exit $rc"
cp "$WORK"/run/models/*.pt "$OUT/" 2>/dev/null
cp "$WORK/run/train_result.json" "$OUT/" 2>/dev/null
cp "$WORK/run/segmentation/train_log.jsonl" "$OUT/" 2>/dev/null
ls -la "$OUT" >>"$OUT/session.log"

LEFT=$((BUDGET_S - (SECONDS - T0) - 10))
[ "$LEFT" -lt "$BENCH_S" ] && BENCH_S=$LEFT
if [ -f benchmarks/gpu_bench.sh ] && [ "$BENCH_S" -gt 30 ]; then
  log "bench (<= $BENCH_S s)"
  [ -f "$OUT/model.pt" ] && mkdir -p monai_bundle/models && cp "$OUT/model.pt" "$OUT/classifier.pt" monai_bundle/models/ 2>/dev/null
  timeout "$BENCH_S" env PY="$PY" REPEATS=2 N_SCANS=8 DEVICE="$DEVICE" SIZE="$SIZE" bash benchmarks/gpu_bench.sh "$WORK/bench" \
    >>"$OUT/session.log" 2>&1
  tar czf "$OUT/bench.tgz" --exclude=data -C "$WORK" bench 2>/dev/null
fi
log "done"
