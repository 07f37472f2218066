#!/usr/bin/env bash
# CPU step benchmarks of the README (2 threads; about 30 minutes on 2 cores).
# Under glibc's default allocator and with mmap off (the two settings the
# reference was measured under): supervised vs CrossMatch. Under our
# trainer's default (in-process allocator tuning): every variant, and the
# bare network at the stacked decoder's batch (4 x 12) to show how the
# per-sample cost scales with the batch on this CPU. Every result also counts
# the step's GFLOP, and each JSON records this machine's matmul GFLOP/s.
#   PART=methods bash benchmarks/run_cpu.sh     # the README's first Benchmarks table (~13 min, measured)
set -euo pipefail
cd "$(dirname "$0")/.."
B="python benchmarks/step_benchmark.py"
R=benchmarks/results
if [ "${PART:-all}" = all ]; then
  $B --dataset acdc --allocators default no_mmap --variants supervised crossmatch --out $R/cpu_acdc_env.json
  $B --dataset acdc --allocators tuned --variants supervised crossmatch crossmatch_one_backward crossmatch_looped \
    --out $R/cpu_acdc_tuned.json
  $B --dataset la --warmup 2 --iters 2 --allocators default no_mmap --variants supervised crossmatch --out $R/cpu_la_env.json
  $B --dataset la --warmup 2 --iters 2 --allocators tuned --variants supervised crossmatch crossmatch_one_backward \
    crossmatch_looped --out $R/cpu_la_tuned.json
fi
$B --dataset acdc --allocators tuned --variants network supervised semsim --out $R/cpu_acdc_methods.json
$B --dataset acdc --allocators tuned --variants crossmatch crossmatch_looped --out $R/cpu_acdc_stacking.json
$B --dataset acdc --allocators tuned --variants network --batch 48 --out $R/cpu_acdc_network_b48.json
$B --dataset la --warmup 2 --iters 2 --allocators tuned --variants network supervised simcvd --out $R/cpu_la_methods.json
# the methods of the paper's comparison table, beside supervised in the same session
$B --dataset acdc --warmup 1 --iters 2 --allocators tuned --variants supervised uamt mcnet bcp --out $R/cpu_acdc_comparison.json
$B --dataset la --warmup 1 --iters 2 --allocators tuned --variants supervised uamt mcnet bcp --out $R/cpu_la_comparison.json
# the README's real-data training budget (4 + 4 + 4 at 128x128): the step alone, against the runs' s/iteration
$B --dataset acdc --allocators tuned --variants network supervised crossmatch crossmatch_looped --batch 4 --crop 128 128 \
  --out $R/cpu_acdc_readme_budget.json
