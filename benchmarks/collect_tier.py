"""Commit a workflow's evidence without its checkpoints, and regenerate its
tables from what was committed (no training, no evaluation).

  # after `snakemake all_tables --configfile config/acdc_cpu_tier.yaml ...`:
  python benchmarks/collect_tier.py results/acdc_cpu_tier benchmarks/results/acdc_cpu_tier
  # on a fresh clone: the tables and figure again, from the committed files only
  python benchmarks/collect_tier.py --tables benchmarks/results/acdc_cpu_tier

Collected per run: config.yaml, experiment.yaml, log.csv,
eval/{best,final}/{summary.json,metrics_per_case.csv}, and for the runs of
a comparison table (the workflow analyses only those) also
eval/protocols/{curve.csv,summary.json}; and the workflow's grid.json. The
tables (comparison_<dataset> under best and final, the ablations, and the
evidence of crossmatch.report.evidence) go to <dest>/tables, the
protocol-curve figure to <dest>/figures. A missing file stops the
collection with its path.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from crossmatch.grid import table_ids
from crossmatch.report import main as report_main

FILES = ("config.yaml", "experiment.yaml", "log.csv", "eval/best/summary.json", "eval/best/metrics_per_case.csv",
         "eval/final/summary.json", "eval/final/metrics_per_case.csv")
PROTOCOL_FILES = ("eval/protocols/curve.csv", "eval/protocols/summary.json")


def collect(src: Path, dest: Path) -> None:
    grid = json.loads((src / "grid.json").read_text())
    analysed = {i for t in grid["tables"] if t["kind"] == "comparison" for i in table_ids(t)}
    for rid in grid["experiments"]:
        for name in FILES + (PROTOCOL_FILES if rid in analysed else ()):
            f = src / "runs" / rid / name
            if not f.is_file():
                sys.exit(f"{f} not found: finish the workflow (all_tables) before collecting")
            out = dest / "runs" / rid / name
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, out)
    shutil.copy2(src / "grid.json", dest / "grid.json")


def tables(dest: Path) -> None:
    grid = json.loads((dest / "grid.json").read_text())
    g = str(dest / "grid.json")
    for t in grid["tables"]:
        ids = table_ids(t)
        for ckpt in ("best", "final"):
            runs = [str(dest / "runs" / i / "eval" / ckpt / "summary.json") for i in ids]
            suffix = "" if ckpt == "best" else "_final"
            if report_main(["table", "--grid", g, "--name", t["name"], "--checkpoint", ckpt, "--runs", *runs,
                            "--out", str(dest / "tables" / f"{t['name']}{suffix}")]):
                sys.exit(1)
        if t["kind"] == "comparison":
            runs = [str(dest / "runs" / i / "eval" / "protocols" / "summary.json") for i in ids]
            if report_main(["evidence", "--grid", g, "--dataset", t["dataset"], "--runs", *runs,
                            "--out", str(dest)]):
                sys.exit(1)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", nargs="?", type=Path, help="the workflow's results folder")
    p.add_argument("dest", type=Path, help="where the evidence lives (benchmarks/results/<name>)")
    p.add_argument("--tables", action="store_true", help="only regenerate the tables from dest")
    a = p.parse_args()
    if not a.tables:
        if a.src is None:
            p.error("give the results folder to collect from, or --tables")
        collect(a.src, a.dest)
    tables(a.dest)
    print(f"tables -> {a.dest / 'tables'}, figures -> {a.dest / 'figures'}")
