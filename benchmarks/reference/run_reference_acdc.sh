#!/usr/bin/env bash
# The public CrossMatch reference code itself at the README budget (ACDC, 3 labeled
# patients, 4(+4+4) at 128x128, 1,500 iterations), evaluated by our evaluator:
#   SEEDS="0 1 2" METHODS="crossmatch supervised" bash benchmarks/reference/run_reference_acdc.sh
# Setup (reference copy + ../shared/harness/reference-cpu/cpu.patch, torchvision beside the
# venv, the reference's slice files) is the harness's own (run.sh with no parts). Each
# (method, seed) writes results/runs/acdc_l3_cpu_reference/<method>/s<seed>: snapshots
# every 100 iterations (ref_train.py), then best-on-validation / final test scores
# (evaluate_reference.py); finished runs are skipped. THREADS (default 2) and
# WORKERS (data-loader processes per loader, default 1) size it for this machine.
# SAMPLER_SEED=k gives the script's DistributedSamplers the seed k + the run's seed
# (as shipped they use 0 whatever --seed is: one data order for every seed).
set -euo pipefail
cd "$(dirname "$0")/../.."
PROJECT=$PWD
HARNESS=${HARNESS:-$PROJECT/../shared/harness/reference-cpu}
WORK=${WORK:-${TMPDIR:-/tmp}/refcpu}
SEEDS=${SEEDS:-0}; METHODS=${METHODS:-crossmatch}
THREADS=${THREADS:-2}; WORKERS=${WORKERS:-1}; BUDGET=${BUDGET:-1500}
SAMPLER_SEED=${SAMPLER_SEED:-}
RUNS=${RUNS:-results/runs/acdc_l3_cpu_reference}
OUT=${OUT:-benchmarks/results/$(basename "$RUNS").json}
PY=$PROJECT/.venv/bin/python
[ -d "$HARNESS" ] || { echo "no reference harness at $HARNESS" >&2; exit 1; }
[ -f "$WORK/ref/ACDC/.patched" ] && [ -f "$WORK/cfg/b4_128.yaml" ] || \
  PARTS="" PROFILE=0 WORK=$WORK bash "$HARNESS/run.sh" > "$WORK.setup.log" 2>&1 || true
[ -f "$WORK/cfg/b4_128.yaml" ] || { echo "reference setup failed, see $WORK.setup.log" >&2; exit 1; }
root=$(crossmatch train --config config/experiments/acdc_l3_cpu.yaml --print-config | sed -n "s/^  root: //p")
[ -f "$root/manifest.json" ] || crossmatch preprocess --config config/experiments/acdc_l3_cpu.yaml
R=$WORK/ref/ACDC
for seed in $SEEDS; do
  for method in $METHODS; do
    case $method in crossmatch) script=train_cross_match.py;; supervised) script=supervised.py;;
      *) echo "no reference script for $method" >&2; exit 1;; esac
    run=$PROJECT/$RUNS/$method/s$seed
    order=(); [ -z "$SAMPLER_SEED" ] || order=(--sampler-seed $((SAMPLER_SEED + seed)))
    if [ ! -f "$run/snapshots/iter_$(printf %05d "$BUDGET").pt" ]; then
      rm -rf "$run"; mkdir -p "$run"
      port=$("$PY" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
      echo "[$(date +%T)] reference $method seed $seed -> $run"
      (cd "$R" && env MASTER_ADDR=127.0.0.1 MASTER_PORT=$port RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 \
        OMP_NUM_THREADS=$THREADS REF_THREADS=$THREADS REF_NUM_WORKERS=$WORKERS PYTHONPATH="$WORK/pylib" \
        "$PY" -W ignore "$PROJECT/benchmarks/reference/ref_train.py" --budget "$BUDGET" --out "$run" "${order[@]}" -- \
        "$script" --config "$WORK/cfg/b4_128.yaml" --labeled-id-path splits/acdc/3/labeled.txt \
        --unlabeled-id-path splits/acdc/3/unlabeled.txt --save-path "$run/ref" --seed "$seed") \
        > "$run/train.log" 2>&1 || { echo "reference run failed, see $run/train.log" >&2; exit 1; }
    fi
    OMP_NUM_THREADS=$THREADS "$PY" benchmarks/reference/evaluate_reference.py "$run" --method "$method" \
      --seed "$seed" > "$run/evaluate.log" 2>&1 || { echo "evaluation failed, see $run/evaluate.log" >&2; exit 1; }
    tail -2 "$run/evaluate.log"
  done
done
"$PY" benchmarks/summarise_runs.py "$RUNS" --out "$OUT"
