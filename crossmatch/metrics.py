"""Per-case segmentation metrics (Dice, Jaccard, HD95, ASD) built on medpy.

Metrics follow ``medpy.metric.binary`` exactly where both masks are non-empty:

* ``dice``/``jaccard``: overlap fractions in [0, 1] (not percentages).
* ``hd95``: 95th percentile (``numpy.percentile``, linear interpolation) of the
  pooled surface distances pred->gt and gt->pred; surfaces are the voxels
  removed by one binary erosion with a face-connected (connectivity 1)
  structuring element.
* ``asd``: medpy's *directed* average surface distance, pred surface -> gt
  surface (``medpy.metric.binary.asd(pred, gt)``, as in the UA-MT / SSL4MIS
  reference evaluation code), not the symmetric ASSD.

Distances are reported twice: ``*_vox`` with unit spacing (voxelspacing=None)
and ``*_mm`` with the physical spacing given by the caller (NaN when the
spacing is unknown).

Empty-mask policy, applied per case and per foreground class (medpy raises
RuntimeError on an empty mask, and SSL4MIS's 2D ``calculate_metric_percase``
returns hd95 = 0, a perfect distance, for a missed structure; we do neither):

* both prediction and ground truth empty -> dice = 1, jaccard = 1, hd95 = 0,
  asd = 0 (the absence was segmented correctly);
* exactly one of them empty -> dice = 0, jaccard = 0, and hd95 = asd = the
  length of the image diagonal, sqrt(sum_i (n_i * s_i)^2) for an array of
  shape (n_i) and spacing (s_i) (s_i = 1 for the voxel-unit values), a
  worst-case penalty larger than any distance two non-empty masks in the same
  array can have. A missed or hallucinated structure never scores distance 0.

The flags ``empty_pred``/``empty_gt`` record when a rule applied. The same
text is available as the constant ``EMPTY_POLICY`` for quoting in reports.

Aggregation (``summarise``): per class, mean and population std (ddof=0) over
cases; for the class-averaged score, each case's classes are averaged first,
then mean/std over cases. NaN values (mm metrics without spacing) are ignored
with nan-aware reductions; a statistic with no finite input is returned as
``None`` so the summary is strict-JSON serialisable.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

EMPTY_POLICY: str = (
    "Empty-mask policy, applied per case and per foreground class: "
    "both prediction and ground truth empty -> dice = 1, jaccard = 1, hd95 = 0, asd = 0 "
    "(the absence was segmented correctly); "
    "exactly one of them empty -> dice = 0, jaccard = 0, and hd95 = asd = the length of "
    "the image diagonal, sqrt(sum_i (n_i * s_i)^2) for an array of shape (n_i) and "
    "spacing (s_i) (s_i = 1 for the voxel-unit values), a worst-case penalty larger than "
    "any distance two non-empty masks in the same array can have. "
    "A missed or hallucinated structure never scores distance 0."
)

__all__ = ["EMPTY_POLICY", "METRIC_KEYS", "case_metrics", "dice", "summarise"]


def dice(p: np.ndarray, g: np.ndarray) -> float:
    """Dice of two boolean masks under ``EMPTY_POLICY`` (both empty: 1, one empty: 0).

    The one Dice of the package: ``case_metrics`` reports it and validation
    (``crossmatch.evaluate.mean_dice``) selects checkpoints with it, so the
    selection score and the reported score cannot drift apart. It equals
    medpy's ``dc`` wherever both masks are non-empty (tested)."""
    denom = int(np.count_nonzero(p)) + int(np.count_nonzero(g))
    return 1.0 if denom == 0 else 2.0 * int(np.count_nonzero(p & g)) / denom

#: Metric keys produced by :func:`case_metrics` and aggregated by :func:`summarise`.
METRIC_KEYS: tuple[str, ...] = ("dice", "jaccard", "hd95_vox", "asd_vox", "hd95_mm", "asd_mm")


def _as_labels(arr: np.ndarray, name: str) -> np.ndarray:
    """Return ``arr`` as an integer array; reject non-integral float labels."""
    arr = np.asarray(arr)
    if arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer):
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        # Label maps loaded from NIfTI/HDF5 are often stored as float.
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must contain integer labels; got non-integral values")
        return arr.astype(np.int64)
    raise ValueError(f"{name} must be an integer label array, got dtype {arr.dtype}")


def _diagonal(shape: Sequence[int], spacing: Sequence[float] | None) -> float:
    """Length of the array's bounding-box diagonal, sqrt(sum (n_i * s_i)^2)."""
    sp = [1.0] * len(shape) if spacing is None else [float(s) for s in spacing]
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, sp))))


def case_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    n_classes: int,
    spacing: Sequence[float] | None,
) -> list[dict[str, Any]]:
    """Metrics for one case, one dict per foreground class 1..n_classes-1.

    Args:
        pred, gt: integer label maps of identical 2D or 3D shape, values in
            [0, n_classes). Label 0 is background and is not scored.
        n_classes: number of classes including background (>= 2).
        spacing: physical voxel size per axis (len == ndim, all > 0), or None
            when unknown (then ``hd95_mm``/``asd_mm`` are NaN).

    Returns:
        ``[{"class", "dice", "jaccard", "hd95_vox", "asd_vox", "hd95_mm",
        "asd_mm", "empty_pred", "empty_gt"}, ...]`` with Python floats/bools.
        Empty masks follow ``EMPTY_POLICY``.
    """
    pred = _as_labels(pred, "pred")
    gt = _as_labels(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"shape mismatch: pred {pred.shape} vs gt {gt.shape}")
    if pred.ndim not in (2, 3):
        raise ValueError(f"pred/gt must be 2D or 3D, got shape {pred.shape}")
    if int(n_classes) != n_classes or n_classes < 2:
        raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    n_classes = int(n_classes)
    for name, arr in (("pred", pred), ("gt", gt)):
        if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
            raise ValueError(
                f"{name} labels out of range [0, {n_classes}): "
                f"min {int(arr.min())}, max {int(arr.max())}"
            )
    if spacing is not None:
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != pred.ndim:
            raise ValueError(f"spacing has {len(spacing)} entries for a {pred.ndim}D array")
        if not all(math.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"spacing must be finite and positive, got {spacing}")

    # medpy pulls in scipy.stats (0.7 s): imported here, not by every training job
    from medpy.metric import binary as mb

    diag_vox = _diagonal(pred.shape, None)
    diag_mm = _diagonal(pred.shape, spacing) if spacing is not None else math.nan

    rows: list[dict[str, Any]] = []
    for c in range(1, n_classes):
        p = pred == c
        g = gt == c
        empty_pred = not p.any()
        empty_gt = not g.any()
        if empty_pred and empty_gt:
            jac = 1.0
            hd_v = asd_v = 0.0
            hd_mm = asd_mm = 0.0 if spacing is not None else math.nan
        elif empty_pred or empty_gt:
            jac = 0.0
            hd_v = asd_v = diag_vox
            hd_mm = asd_mm = diag_mm
        else:
            jac = float(mb.jc(p, g))
            hd_v = float(mb.hd95(p, g, voxelspacing=None))
            asd_v = float(mb.asd(p, g, voxelspacing=None))
            if spacing is not None:
                hd_mm = float(mb.hd95(p, g, voxelspacing=spacing))
                asd_mm = float(mb.asd(p, g, voxelspacing=spacing))
            else:
                hd_mm = asd_mm = math.nan
        rows.append(
            {
                "class": c,
                "dice": dice(p, g),
                "jaccard": jac,
                "hd95_vox": hd_v,
                "asd_vox": asd_v,
                "hd95_mm": hd_mm,
                "asd_mm": asd_mm,
                "empty_pred": bool(empty_pred),
                "empty_gt": bool(empty_gt),
            }
        )
    return rows


def _stats(values: Sequence[float]) -> dict[str, Any]:
    """NaN-aware mean/std (ddof=0); ``None`` when no finite value exists."""
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(finite.mean()), "std": float(finite.std()), "n": int(finite.size)}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate per-case-per-class rows (``case_metrics`` dicts plus ``case``).

    Every case must have exactly one row per class and all cases the same set
    of classes (otherwise the class average would mix different class sets).

    Returns a JSON-serialisable dict::

        {"per_class": {"<c>": {metric: {"mean", "std", "n"}}},
         "mean":      {metric: {"mean", "std", "n"}},   # classes averaged per case first
         "n_cases": int, "n_empty_pred": int, "n_empty_gt": int}

    ``n`` is the number of finite values used; ``std`` is the population
    std (ddof=0); ``n_empty_*`` count (case, class) rows with the flag set.
    NaN inputs are ignored; all-NaN statistics are ``None``.
    """
    if not rows:
        raise ValueError("summarise() needs at least one row")
    table: dict[Any, dict[int, dict[str, Any]]] = {}
    for r in rows:
        missing = [k for k in ("case", "class", *METRIC_KEYS) if k not in r]
        if missing:
            raise ValueError(f"row is missing keys {missing}: {r}")
        per_case = table.setdefault(r["case"], {})
        c = int(r["class"])
        if c in per_case:
            raise ValueError(f"duplicate row for case {r['case']!r}, class {c}")
        per_case[c] = r
    classes = sorted(next(iter(table.values())))
    for case, per_case in table.items():
        if sorted(per_case) != classes:
            raise ValueError(
                f"case {case!r} has classes {sorted(per_case)}, expected {classes}"
            )
    cases = list(table)

    per_class = {
        str(c): {m: _stats([table[k][c][m] for k in cases]) for m in METRIC_KEYS}
        for c in classes
    }
    mean: dict[str, Any] = {}
    for m in METRIC_KEYS:
        case_means = []
        for k in cases:
            vals = np.asarray([table[k][c][m] for c in classes], dtype=np.float64)
            vals = vals[np.isfinite(vals)]
            # No finite class value -> NaN, which _stats then skips.
            case_means.append(float(vals.mean()) if vals.size else math.nan)
        mean[m] = _stats(case_means)
    return {
        "per_class": per_class,
        "mean": mean,
        "n_cases": len(cases),
        "n_empty_pred": int(sum(bool(r.get("empty_pred", False)) for r in rows)),
        "n_empty_gt": int(sum(bool(r.get("empty_gt", False)) for r in rows)),
    }
