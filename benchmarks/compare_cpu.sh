#!/usr/bin/env bash
# The README's real-data CPU comparisons: train + evaluate every method of
# METHODS with the same config, budget and seed, then summarise into
# benchmarks/results/<runs folder name>.json. Each run resumes if interrupted.
#   bash benchmarks/compare_cpu.sh            # ACDC, 3 labeled, 1,500 iterations
#   SEEDS="0 1" METHODS="supervised crossmatch semsim" bash benchmarks/compare_cpu.sh
#   CONFIG=config/experiments/la_l4_subset_cpu.yaml RUNS=results/runs/la_l4_subset_cpu \
#     METHODS="supervised crossmatch simcvd" EXTRA_simcvd="--set method.ramp_length=40" bash benchmarks/compare_cpu.sh
# EXTRA applies to every run, EXTRA_<method> to that method's only (e.g. a key
# only that method has). THREADS sets torch's CPU threads (default: torch's).
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${CONFIG:-config/experiments/acdc_l3_cpu.yaml}
SEEDS=${SEEDS:-0}
METHODS=${METHODS:-"supervised crossmatch"}
RUNS=${RUNS:-results/runs/acdc_l3_cpu_bilinear}
OUT=${OUT:-benchmarks/results/$(basename "$RUNS").json}
# shellcheck disable=SC2086
root=$(crossmatch train --config "$CONFIG" ${EXTRA:-} --print-config | sed -n "s/^  root: //p")
# shellcheck disable=SC2086
[ -f "$root/manifest.json" ] || crossmatch preprocess --config "$CONFIG" ${EXTRA:-}
for seed in $SEEDS; do
  for method in $METHODS; do
    run=$RUNS/$method/s$seed
    extra_var=EXTRA_$method
    # shellcheck disable=SC2086  # EXTRA* are lists of --set options
    crossmatch train --config "$CONFIG" --set method.name="$method" --set train.seed="$seed" \
      ${THREADS:+--set train.threads=$THREADS} ${EXTRA:-} ${!extra_var:-} --out "$run"
    crossmatch evaluate --run "$run" --no-predictions ${THREADS:+--threads $THREADS}
  done
done
python benchmarks/summarise_runs.py "$RUNS" --out "$OUT"
