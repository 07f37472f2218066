"""Reading what the workflow wrote: grid tables, run summaries, logs, reported values.

Everything the report shows comes from ``grid.json`` (``crossmatch.grid.expand``)
and the run folders (``crossmatch.layout``: ``log.csv``,
``eval/<checkpoint>/summary.json``, ``metrics_per_case.csv`` and
``predictions/<case>.h5``, written by ``crossmatch.evaluate``): those the
workflow rule passed (``with_runs``), or by hand ``<grid.results>/runs/<id>/``. A missing
file is a ``DataError`` naming the run and the command that produces it.
"""
from __future__ import annotations

import csv
import math
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import layout
from ..errors import DataError


@dataclass(frozen=True)
class Metric:
    """One table column: a ``summary.json`` metric key, how it is shown, which way is better."""
    key: str
    label: str
    unit: str
    scale: float
    higher_better: bool
    reported_key: str     # column of the reported-results CSV holding the same metric


METRICS_VOX = (
    Metric("dice", "Dice (%)", "%", 100.0, True, "dice"),
    Metric("jaccard", "Jaccard (%)", "%", 100.0, True, "jaccard"),
    Metric("hd95_vox", "95HD (vox)", "voxel", 1.0, False, "hd95"),
    Metric("asd_vox", "ASD (vox)", "voxel", 1.0, False, "asd"),
)
METRICS_MM = (
    Metric("hd95_mm", "95HD (mm)", "mm", 1.0, False, "hd95"),
    Metric("asd_mm", "ASD (mm)", "mm", 1.0, False, "asd"),
)


@dataclass(frozen=True)
class Stat:
    """Mean and sample std (ddof=1; None for one seed) of the per-run means over seeds."""
    mean: float | None
    std: float | None
    n: int


def find_table(grid: dict[str, Any], name: str) -> dict[str, Any]:
    for t in grid["tables"]:
        if t["name"] == name:
            return t
    raise DataError(f"no table {name!r} in the grid; tables: {[t['name'] for t in grid['tables']]}")


def comparison_table(grid: dict[str, Any], dataset: str) -> dict[str, Any]:
    for t in grid["tables"]:
        if t["kind"] == "comparison" and t["dataset"] == dataset:
            return t
    raise DataError(f"no comparison table for dataset {dataset!r} in the grid; comparison datasets: "
                    f"{[t['dataset'] for t in grid['tables'] if t['kind'] == 'comparison']}")


def is_synthetic(grid: dict[str, Any], dataset: str) -> bool:
    return bool(grid.get("synthetic", {}).get(dataset, False))


def is_upper_bound(row: dict[str, Any]) -> bool:
    """A fully supervised upper bound: its method class has ``labels_all``."""
    method = row.get("method")
    if not method:
        return False
    from ..methods import get_method
    try:
        return bool(get_method(method).labels_all)
    except ValueError:  # a method this checkout does not know: fall back on the grid's cell key
        return list(row["cells"]) == ["all"]


def first_cell(table: dict[str, Any], row: dict[str, Any]) -> tuple[str, list[str]]:
    """The row's cell of the first labeled count it has (the upper bound's is ``all``)."""
    for n in table["labeled"]:
        if n in row["cells"]:
            return n, row["cells"][n]
    n = next(iter(row["cells"]))
    return n, row["cells"][n]


def run_dir(grid: dict[str, Any], rid: str) -> Path:
    """The run folder of ``rid``. With ``grid["run_dirs"]`` (the runs a workflow
    rule passed as its inputs, ``with_runs``) only those: a report never reads a
    run its rule does not depend on. Without it (by hand), the grid's layout."""
    given = grid.get("run_dirs")
    if given is None:
        return layout.run_dir(grid["results"], rid)
    if rid not in given:
        raise DataError(f"run {rid} is in the table but not among the runs given to the report (--runs); "
                        "pass its eval/<checkpoint>/summary.json (the workflow's report rules do)")
    return Path(given[rid])


def with_runs(grid: dict[str, Any], summaries: list[str | Path]) -> dict[str, Any]:
    """``grid`` restricted to the runs of the given ``summary.json`` paths (the
    experiment id is the one the summary records)."""
    dirs: dict[str, str] = {}
    for path in summaries:
        run, _ = layout.Run.of_summary(path)
        dirs[_read_json(Path(path), "a run summary")["experiment"]] = str(run.root)
    return {**grid, "run_dirs": dirs}


def _read_json(path: Path, what: str, hint: str = "") -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise DataError(f"{what} {path} cannot be read ({e.strerror}){hint}") from None
    except ValueError as e:
        raise DataError(f"{what} {path} is not valid JSON ({e}){hint}") from None


def _evaluate_hint(grid: dict[str, Any], rid: str, checkpoint: str) -> str:
    return (f"produce it with `crossmatch evaluate --run {run_dir(grid, rid)} --checkpoint {checkpoint}` "
            "(or let the workflow run the evaluation: `snakemake --cores 2 all_tables`)")


def run_files(grid: dict[str, Any], rid: str) -> layout.Run:
    return layout.Run(run_dir(grid, rid))


def load_summary(grid: dict[str, Any], rid: str, checkpoint: str) -> dict[str, Any]:
    path = run_files(grid, rid).summary(checkpoint)
    hint = f"; {_evaluate_hint(grid, rid, checkpoint)}"
    if not path.is_file():
        raise DataError(f"run {rid}: {path} not found{hint}")
    return _read_json(path, f"run {rid}:", hint)


def same_cases(summaries: dict[str, dict[str, Any]], what: str) -> None:
    """Refuse to set runs side by side that were scored on different numbers of
    test cases (e.g. one evaluated with ``--limit``): their means do not compare."""
    counts: dict[int, list[str]] = {}
    for rid, s in summaries.items():
        counts.setdefault(int(s.get("n_test_cases") or s.get("n_cases") or 0), []).append(rid)
    if len(counts) > 1:
        (few, few_ids), (many, _) = min(counts.items()), max(counts.items())
        raise DataError(f"{what}: its runs were scored on different test sets ({few} cases for {few_ids[0]}"
                        f"{f' and {len(few_ids) - 1} more' if len(few_ids) > 1 else ''}, {many} for others); "
                        f"evaluate {few_ids[0]} on the whole test split: crossmatch evaluate --run "
                        "<its run folder>, without --limit")


def summary_mean(summary: dict[str, Any], key: str) -> float | None:
    """The run's mean over test cases and foreground classes, None when not computed."""
    value = summary.get("mean", {}).get(key, {}).get("mean")
    return None if value is None or not math.isfinite(float(value)) else float(value)


def aggregate(values: list[float | None], scale: float = 1.0) -> Stat:
    """Mean and sample std over seeds; None unless every seed has the value."""
    if not values or any(v is None for v in values):
        return Stat(None, None, len(values))
    arr = np.asarray(values, dtype=np.float64) * scale
    std = float(arr.std(ddof=1)) if arr.size > 1 else None
    return Stat(float(arr.mean()), std, int(arr.size))


def per_case_dice(grid: dict[str, Any], rid: str, checkpoint: str) -> dict[str, float]:
    """Case id -> mean Dice over foreground classes, from ``metrics_per_case.csv``."""
    path = run_files(grid, rid).per_case(checkpoint)
    if not path.is_file():
        raise DataError(f"run {rid}: {path} not found; {_evaluate_hint(grid, rid, checkpoint)}")
    scores: dict[str, list[float]] = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            scores.setdefault(r["case"], []).append(float(r["dice"]))
    return {case: float(np.mean(v)) for case, v in scores.items()}


def prediction_path(grid: dict[str, Any], rid: str, checkpoint: str, case: str) -> Path:
    path = run_files(grid, rid).prediction(checkpoint, case)
    if not path.is_file():
        raise DataError(f"run {rid}: {path} not found; {_evaluate_hint(grid, rid, checkpoint)} "
                        "without --no-predictions")
    return path


def read_log(grid: dict[str, Any], rid: str) -> dict[str, np.ndarray]:
    """``log.csv`` as columns of floats (blank cells -> NaN)."""
    path = run_files(grid, rid).log
    if not path.is_file():
        raise DataError(f"run {rid}: {path} not found; produce it with `crossmatch train --out "
                        f"{run_dir(grid, rid)} ...` (or the workflow: `snakemake --cores 2 all_tables`)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise DataError(f"run {rid}: {path} has no rows; re-run `crossmatch train` to resume the run")

    def num(text: str | None) -> float:
        try:
            return float(text) if text not in (None, "") else math.nan
        except ValueError:
            return math.nan

    return {k: np.array([num(r.get(k)) for r in rows]) for k in rows[0]}


def load_reported(grid: dict[str, Any]) -> list[dict[str, Any]]:
    """The reported-results CSV (``grid["reported"]``; none when unset)."""
    path = grid.get("reported") or ""
    if not path:
        return []
    if not Path(path).is_file():
        raise DataError(f"reported results {path} not found (grid['reported']); fix `reported:` "
                        "in the workflow config or remove it")
    with open(path, newline="") as f:
        return [{k: (v or "").strip() for k, v in r.items()} for r in csv.DictReader(f)]
