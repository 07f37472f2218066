#!/usr/bin/env bash
# The README's real-data CPU comparison: ACDC, 3 labeled patients, batch 4 + 4
# (+ 4 mix) at 128x128, 1,500 iterations, SGD lr 0.01 poly; same budget and
# seed for every method. Each run resumes if interrupted.
#   SEEDS="0 1" METHODS="supervised crossmatch" bash benchmarks/acdc_l3_cpu.sh
#   RUNS=results/runs/other EXTRA="--set model.upsample=bilinear" bash benchmarks/acdc_l3_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${SEEDS:-0}
METHODS=${METHODS:-"supervised crossmatch"}
RUNS=${RUNS:-results/runs/acdc_l3_cpu}
OUT=${OUT:-benchmarks/results/$(basename "$RUNS").json}
[ -f results/data/acdc/manifest.json ] || crossmatch preprocess --config config/experiments/acdc_l3_cpu.yaml
for seed in $SEEDS; do
  for method in $METHODS; do
    run=$RUNS/$method/s$seed
    crossmatch train --config config/experiments/acdc_l3_cpu.yaml --set method.name="$method" \
      --set train.seed="$seed" ${EXTRA:-} --out "$run"
    crossmatch evaluate --run "$run" --no-predictions
  done
done
python benchmarks/summarise_runs.py "$RUNS" --out "$OUT"
