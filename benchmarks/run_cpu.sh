#!/usr/bin/env bash
# CPU step benchmarks of the README (2 threads; about 20 minutes on 2 cores).
# Under glibc's default allocator and with mmap off (the two settings the
# reference was measured under): supervised vs CrossMatch. Under our
# trainer's default (in-process allocator tuning): every variant.
set -euo pipefail
cd "$(dirname "$0")/.."
B="python benchmarks/step_benchmark.py"
$B --dataset acdc --allocators default no_mmap --variants supervised crossmatch --out benchmarks/results/cpu_acdc_env.json
$B --dataset acdc --allocators tuned --out benchmarks/results/cpu_acdc_tuned.json
$B --dataset la --warmup 2 --iters 2 --allocators default no_mmap --variants supervised crossmatch --out benchmarks/results/cpu_la_env.json
$B --dataset la --warmup 2 --iters 2 --allocators tuned --out benchmarks/results/cpu_la_tuned.json
