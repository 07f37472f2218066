#!/usr/bin/env bash
# Dry run of the paper grid: job count, wall time (best of 3) and whether the
# Snakemake process imported torch (it should not: the DAG needs only the
# torch-free config code), written to $OUT (default
# benchmarks/results/workflow_dryrun.json).
#   bash benchmarks/workflow_dryrun.sh
#   CHECKOUT=/path/to/other/worktree OUT=/tmp/before.json bash benchmarks/workflow_dryrun.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/benchmarks/results/workflow_dryrun.json}
cd "${CHECKOUT:-.}"
OUT=$OUT python - <<'PY'
import json, os, re, subprocess, sys, time
# the dry run in this process's child, reporting at exit whether torch was imported
probe = ("import atexit, sys; atexit.register(lambda: print('TORCH_IMPORTED', 'torch' in sys.modules)); "
         "from snakemake.cli import main; sys.argv[0] = 'snakemake'; main()")
times, out = [], ""
for _ in range(3):
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", probe, "-n", "all_tables", "--configfile", "config/paper.yaml", "--config", "data_root=/data"],
                       capture_output=True, text=True)
    times.append(time.perf_counter() - t)
    out = r.stdout
    assert "Job stats:" in out, r.stderr[-2000:]
stats = out.split("Job stats:", 1)[1]
jobs = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)}
commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
result = {"command": "snakemake -n all_tables --configfile config/paper.yaml --config data_root=/data", "commit": commit,
          "date": time.strftime("%Y-%m-%d"), "jobs": jobs, "torch_imported": "TORCH_IMPORTED True" in out,
          "seconds_best_of_3": round(min(times), 2), "seconds_all": [round(t, 2) for t in times]}
with open(os.environ["OUT"], "w") as f:
    json.dump(result, f, indent=1)
print(json.dumps(result, indent=1))
PY
