"""A workflow's evidence, committed without its checkpoints, and its tables
rebuilt from what was committed (no training, no evaluation).

``collect(results, dest, config)`` copies every run's light outputs
(``config.yaml``, ``experiment.yaml``, ``log.csv``,
``eval/{best,final}/{summary.json,metrics_per_case.csv}``, and
``eval/protocols/{curve.csv,summary.json}`` where the workflow analysed the
run) and ``grid.json`` to ``dest``, with ``provenance.json``: the workflow
config, the command that makes the tables again, and per run the
provenance its training recorded (commit, command, date, torch, device, CPU).
``rebuild(dest)`` writes the tables of every grid table (best and final
checkpoints) and the evidence of every comparison dataset to
``dest/tables`` and ``dest/figures`` from those files alone. The project's
committed archives live in ``evidence/<config name>/``;
``crossmatch report rebuild`` rebuilds them all.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from .. import provenance
from ..errors import DataError
from ..grid import evidence_ids, load_grid, table_ids
from ..io import write_json

EVIDENCE = provenance.REPO / "evidence"
FILES = ("config.yaml", "experiment.yaml", "log.csv", "eval/best/summary.json", "eval/best/metrics_per_case.csv",
         "eval/final/summary.json", "eval/final/metrics_per_case.csv")
PROTOCOL_FILES = ("eval/protocols/curve.csv", "eval/protocols/summary.json")
REBUILD = "crossmatch report rebuild {dest}"


def collect(results: str | Path, dest: str | Path, config: str = "") -> Path:
    """Copy the light outputs of a finished workflow (``results``) to ``dest``."""
    src, dest = Path(results), Path(dest)
    if not (src / "grid.json").is_file():
        raise DataError(f"{src / 'grid.json'} not found: give the workflow's results folder (its `results:` key)")
    grid = load_grid(src / "grid.json")
    datasets = {t["dataset"] for t in grid["tables"] if t["kind"] == "comparison"}
    analysed = {i for d in datasets for i in evidence_ids(grid, d)}
    runs: dict[str, Any] = {}
    for rid in grid["experiments"]:
        for name in FILES + (PROTOCOL_FILES if rid in analysed else ()):
            f = src / "runs" / rid / name
            if not f.is_file():
                raise DataError(f"{f} not found: finish the workflow (snakemake ... all_tables) before collecting")
            out = dest / "runs" / rid / name
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, out)
        runs[rid] = (yaml.safe_load((src / "runs" / rid / "config.yaml").read_text()) or {}).get("provenance")
    shutil.copy2(src / "grid.json", dest / "grid.json")
    write_json(dest / "provenance.json", {"config": config, "results": str(src),
                                          "rebuild": REBUILD.format(dest=dest), "collected": provenance.record(),
                                          "runs": runs})
    return dest


def rebuild(dest: str | Path, n_boot: int = 10000) -> list[Path]:
    """Every table (and the evidence figure) of the archive ``dest``, from its files; returns the tables."""
    from . import write_table
    from .collect import with_runs
    from .evidence import write_evidence
    dest = Path(dest)
    if not (dest / "grid.json").is_file():
        raise DataError(f"{dest} is not an evidence archive (no grid.json); make one with "
                        "`crossmatch report archive RESULTS DEST`")
    grid = load_grid(dest / "grid.json")
    runs = lambda ids, ckpt: [str(dest / "runs" / i / "eval" / ckpt / "summary.json") for i in ids]  # noqa: E731
    written = []
    for t in grid["tables"]:
        for ckpt, suffix in (("best", ""), ("final", "_final")):
            prefix = dest / "tables" / f"{t['name']}{suffix}"
            write_table(with_runs(grid, runs(table_ids(t), ckpt)), t["name"], prefix, checkpoint=ckpt)
            written.append(prefix.with_suffix(".md"))
        if t["kind"] == "comparison":
            ids = evidence_ids(grid, t["dataset"])
            write_evidence(with_runs(grid, runs(ids, "protocols")), t["dataset"], dest, n_boot=n_boot)
            written += [dest / "tables" / f"{k}_{t['dataset']}.md" for k in ("protocols", "paired", "reproduction")]
    return written


def archives() -> list[Path]:
    """The project's committed archives (``evidence/*/``)."""
    return sorted(p.parent for p in EVIDENCE.glob("*/grid.json"))
