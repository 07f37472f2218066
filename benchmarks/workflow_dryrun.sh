#!/usr/bin/env bash
# Dry run of the paper grid: job count and wall time (best of 3), written to
# benchmarks/results/workflow_dryrun.json.
#   bash benchmarks/workflow_dryrun.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python - <<'PY'
import json, re, subprocess, sys, time
times, out = [], ""
for _ in range(3):
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "snakemake", "-n", "all_tables", "--configfile",
                        "config/paper.yaml"], capture_output=True, text=True, check=True)
    times.append(time.perf_counter() - t)
    out = r.stdout
stats = out.split("Job stats:", 1)[1]
jobs = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)}
result = {"command": "snakemake -n all_tables --configfile config/paper.yaml",
          "jobs": jobs, "seconds_best_of_3": round(min(times), 2),
          "seconds_all": [round(t, 2) for t in times]}
with open("benchmarks/results/workflow_dryrun.json", "w") as f:
    json.dump(result, f, indent=1)
print(json.dumps(result, indent=1))
PY
