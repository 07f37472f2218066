"""Figures (matplotlib, Agg): ablation plots, training curves, qualitative overlays.

Each writes ``<prefix>.png`` (150 dpi), ``<prefix>.pdf`` and a one-line
caption ``<prefix>.txt``, all atomically. Figures of a synthetic (phantom)
dataset say "synthetic" in their title and caption.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from ..data.h5 import read_case  # noqa: E402
from ..data.specs import get_spec  # noqa: E402
from ..errors import DataError  # noqa: E402
from ..io import atomic_path, write_text  # noqa: E402
from . import collect  # noqa: E402
from .names import dataset_name, labeled_text, method_colour, method_name, typeset  # noqa: E402

SYNTHETIC_NOTE = "SYNTHETIC PHANTOM DATA — not comparable to the paper."
CLASS_COLOURS = ("#e41a1c", "#4daf4a", "#377eb8", "#ff7f00", "#984ea3", "#ffff33")


def _title(grid: dict[str, Any], dataset: str, text: str) -> str:
    return f"{text} [synthetic]" if collect.is_synthetic(grid, dataset) else text


def _save(fig: plt.Figure, out_prefix: str | Path, caption: str, grid: dict[str, Any], dataset: str) -> None:
    prefix = str(out_prefix)
    for fmt in ("png", "pdf"):
        with atomic_path(f"{prefix}.{fmt}") as tmp:
            # no creation date in the PDF: a figure rebuilt from the same runs is the same file
            fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight",
                        metadata={"CreationDate": None} if fmt == "pdf" else None)
    plt.close(fig)
    if collect.is_synthetic(grid, dataset):
        caption = f"{caption} {SYNTHETIC_NOTE}"
    write_text(f"{prefix}.txt", caption.replace("\n", " ") + "\n")


def _checkpoint_text(checkpoint: str) -> str:
    return ("best-validation checkpoint, selected on the validation split only" if checkpoint == "best"
            else "final checkpoint")


def ablation_figure(grid: dict[str, Any], name: str, out_prefix: str | Path, checkpoint: str = "best") -> None:
    """Test mean Dice (%) per variant, mean ± sample std over seeds: a curve over
    ``x`` (``plot: curve`` and every variant has an x) or bars."""
    spec = collect.find_table(grid, name)
    if spec["kind"] != "ablation":
        raise DataError(f"table {name!r} is a {spec['kind']} table, not an ablation")
    labels, xs, means, stds, n = [], [], [], [], 0
    for row in spec["rows"]:
        _, ids = collect.first_cell(spec, row)
        stat = collect.aggregate([collect.summary_mean(collect.load_summary(grid, rid, checkpoint), "dice")
                                  for rid in ids], 100.0)
        labels.append(str(row["label"]))
        xs.append(row.get("x"))
        means.append(np.nan if stat.mean is None else stat.mean)
        stds.append(0.0 if stat.std is None else stat.std)
        n = max(n, stat.n)
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    curve = spec.get("plot") == "curve" and all(x is not None for x in xs)
    yerr = np.asarray(stds) if n > 1 else None   # no error bar from one seed
    if curve:
        order = np.argsort(np.asarray(xs, dtype=float))
        ax.errorbar(np.asarray(xs, float)[order], np.asarray(means)[order],
                    yerr=None if yerr is None else yerr[order], marker="o", capsize=3)
        _honest_range(ax, np.asarray(means), yerr)
    else:
        ax.bar(range(len(labels)), means, yerr=yerr, capsize=3, color=method_colour(spec.get("method", "")))
        ax.set_xticks(range(len(labels)), labels, rotation=20 if len(labels) > 3 else 0)
    ax.set_xlabel(typeset(str(spec.get("xlabel", ""))))
    ax.set_ylabel("test mean Dice (%)")
    labeled, where = spec["labeled"][0], dataset_name(spec["dataset"])
    title = typeset(str(spec.get("title", name)))
    ax.set_title(_title(grid, spec["dataset"], f"{title} — {where}, {labeled_text(spec['dataset'], labeled)}"),
                 fontsize=9)
    ax.grid(alpha=0.3)
    spread = "mean ± sample std over n = {n} seeds" if n > 1 else "n = 1 seed (no error bar)"
    caption = (f"Ablation '{spec.get('title', name)}' on {where} ({labeled_text(spec['dataset'], labeled)}): "
               f"test mean Dice (%) of the {_checkpoint_text(checkpoint)}, {spread.format(n=n)}.")
    _save(fig, out_prefix, caption, grid, spec["dataset"])


def _honest_range(ax: plt.Axes, means: np.ndarray, yerr: np.ndarray | None, span: float = 10.0) -> None:
    """A y range of at least ``span`` Dice points, so that a fraction of a point
    does not fill the axis and look like a collapse."""
    lo = np.nanmin(means - (0 if yerr is None else yerr))
    hi = np.nanmax(means + (0 if yerr is None else yerr))
    if np.isfinite(lo) and np.isfinite(hi) and hi - lo < span:
        mid = (hi + lo) / 2
        bottom = min(max(0.0, mid - span / 2), 100.0 - span)
        ax.set_ylim(bottom, bottom + span)


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (the first points average what exists so far)."""
    c = np.cumsum(np.insert(y, 0, 0.0))
    idx = np.arange(1, len(y) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def _mean_over_seeds(logs: list[dict[str, np.ndarray]], column: str) -> tuple[np.ndarray, np.ndarray]:
    """(iterations, mean over seeds) at the iterations where every seed logged ``column``."""
    common: set[float] | None = None
    series = []
    for log in logs:
        if column not in log:
            return np.array([]), np.array([])
        ok = np.isfinite(log[column])
        s = dict(zip(log["iteration"][ok].tolist(), log[column][ok].tolist()))
        series.append(s)
        common = set(s) if common is None else common & set(s)
    its = np.array(sorted(common or ()))
    return its, np.array([np.mean([s[i] for s in series]) for i in its])


def training_curves(grid: dict[str, Any], dataset: str, out_prefix: str | Path) -> None:
    """Training loss (moving average over 2 % of the iterations) and validation
    mean Dice (%) vs iteration, per method of the dataset's comparison table
    (its first labeled count), mean over seeds."""
    spec = collect.comparison_table(grid, dataset)
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(9, 3.4))
    n_seeds, labeled_shown = 0, []
    for row in spec["rows"]:
        labeled, ids = collect.first_cell(spec, row)
        logs = [collect.read_log(grid, rid) for rid in ids]
        n_seeds = max(n_seeds, len(ids))
        method = row.get("method", "")
        label = f"{method_name(method) if method else row['label']} ({labeled_text(dataset, labeled)})"
        colour = method_colour(method)
        labeled_shown.append(labeled)
        its, loss = _mean_over_seeds(logs, "loss")
        if its.size:
            ax_loss.plot(its, _smooth(loss, max(1, len(its) // 50)), label=label, lw=1.2, color=colour)
        its, val = _mean_over_seeds(logs, "val_dice")
        if its.size:
            ax_val.plot(its, 100 * val, marker="o", ms=3, label=label, lw=1.2, color=colour)
    ax_loss.set(xlabel="iteration", ylabel="training loss (smoothed)", title="Training loss")
    ax_val.set(xlabel="iteration", ylabel="validation mean Dice (%)", title="Validation Dice")
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(_title(grid, dataset, f"Training curves — {dataset_name(dataset)}"), fontsize=10)
    caption = (f"Training curves on {dataset_name(dataset)} (per method, its first labeled count): total training "
               f"loss (trailing moving average over 2% of the iterations) and validation mean Dice (%) "
               f"vs iteration, mean over {n_seeds} seeds.")
    _save(fig, out_prefix, caption, grid, dataset)


def pick_cases(scores: dict[str, float], n: int) -> list[str]:
    """``n`` representative cases: sorted by score (ties by id), the cases at the
    quantiles (i + 0.5) / n, i = 0..n-1 (n = 1: the median; n = 3: ~17th, 50th, 83rd percentile)."""
    ranked = sorted(scores, key=lambda c: (scores[c], c))
    if not ranked:
        return []
    picks = [ranked[min(len(ranked) - 1, int((i + 0.5) / n * len(ranked)))] for i in range(n)]
    return list(dict.fromkeys(picks))


def _slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    return np.take(volume, index, axis=axis) if volume.ndim == 3 else volume


def qualitative(grid: dict[str, Any], dataset: str, out_prefix: str | Path, n_cases: int = 3,
                checkpoint: str = "best") -> list[str]:
    """Image, ground truth and every method's prediction (first seed, first
    labeled count, ``checkpoint``) for ``n_cases`` test cases, as colour overlays.

    Cases: ranked by the mean over the shown runs of their per-case mean Dice
    (``metrics_per_case.csv``) and picked at evenly spaced quantiles
    (``pick_cases``), so they are representative, not the best. The slice is
    the axial slice with the most ground-truth foreground (axis 0 of a 2D
    dataset's slices x H x W volume, the last axis of a 3D volume). Returns
    the case ids shown.
    """
    spec = collect.comparison_table(grid, dataset)
    ds = get_spec(dataset)
    runs = [(method_name(row["method"]) if row.get("method") else str(row["label"]), *collect.first_cell(spec, row))
            for row in spec["rows"]]
    runs = [(label, labeled, ids[0]) for label, labeled, ids in runs]
    per_run = {rid: collect.per_case_dice(grid, rid, checkpoint) for _, _, rid in runs}
    cases = sorted(set.intersection(*(set(s) for s in per_run.values())))
    cases = pick_cases({c: float(np.mean([s[c] for s in per_run.values()])) for c in cases}, n_cases)
    if not cases:
        raise DataError(f"no test case is evaluated by every run of {spec['name']}")
    root = Path(grid["experiments"][runs[0][2]]["config"]["dataset"]["root"])
    axis = 0 if ds.dim == 2 else -1
    cmap = ListedColormap(CLASS_COLOURS[: ds.n_classes - 1])
    ncol = 2 + len(runs)
    fig, axes = plt.subplots(len(cases), ncol, figsize=(2.1 * ncol, 2.2 * len(cases)), squeeze=False)
    for r, case in enumerate(cases):
        image, label, _ = read_case(root / "volumes" / f"{case}.h5", ds.n_classes)
        fg = (label > 0).sum(axis=tuple(a for a in range(label.ndim) if a != axis % label.ndim)) \
            if label.ndim == 3 else np.array([1])
        k = int(np.argmax(fg))
        img = image if label.ndim == 2 else _slice(image, axis, k)   # a single (RGB) image: as is
        panels = [("image", None, None), ("ground truth", label, None)]
        for mlabel, lab, rid in runs:
            with h5py.File(collect.prediction_path(grid, rid, checkpoint, case), "r") as f:
                pred = np.asarray(f["pred"][()])
            if pred.shape != label.shape:
                raise DataError(f"run {rid}: prediction of {case} has shape {pred.shape}, the volume "
                                f"{label.shape}; re-run `crossmatch evaluate --run {collect.run_dir(grid, rid)}`")
            extra = f" ({labeled_text(dataset, lab)})" if lab != runs[0][1] else ""
            panels.append((f"{mlabel}{extra}\nDice {100 * per_run[rid][case]:.1f}%", pred, None))
        for c, (name, mask, _) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", interpolation="nearest")
            if mask is not None:
                m = _slice(mask, axis, k).astype(float)
                ax.imshow(np.ma.masked_where(m == 0, m), cmap=cmap, vmin=0.5, vmax=ds.n_classes - 0.5,
                          alpha=0.5, interpolation="nearest")
            ax.set_title(name if r == 0 or c >= 2 else "", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        # 2D volumes: the slice file's own number (`<case>_slice_<k+1>.h5`); 3D: the axial index
        where = "" if label.ndim == 2 else f"\nslice {k + 1}" if ds.dim == 2 else f"\naxial z = {k}"
        axes[r, 0].set_ylabel(f"{case}{where}", fontsize=7)
    fig.legend(handles=[Patch(color=CLASS_COLOURS[i], label=n) for i, n in enumerate(ds.class_names)],
               loc="lower center", ncol=len(ds.class_names), fontsize=7, frameon=False)
    labeled = runs[0][1]
    fig.suptitle(_title(grid, dataset, f"Qualitative results — {dataset_name(dataset)}, "
                                       f"{labeled_text(dataset, labeled)}"),
                 fontsize=10)
    caption = (f"Qualitative results on {dataset_name(dataset)} test cases {', '.join(cases)} (picked at evenly "
               f"spaced quantiles of the mean per-case Dice over methods; slice with the most ground-truth "
               f"foreground): image, ground truth and each method's prediction with its case mean Dice; "
               f"first seed, first labeled count, {_checkpoint_text(checkpoint)}.")
    _save(fig, out_prefix, caption, grid, dataset)
    return cases


PROTOCOL_MARKERS = {"final": "s", "best_val": "o", "valtest": "^", "best_test": "*"}
PROTOCOL_SIZES = {"final": 6, "best_val": 10, "valtest": 14, "best_test": 6}   # concentric when they coincide


def protocol_curves(grid: dict[str, Any], dataset: str, out_prefix: str | Path) -> None:
    """Validation and test mean Dice (%) of every snapshot vs iteration, one
    panel per method of the comparison table (its first labeled count), one
    line pair per seed; each protocol's checkpoint marked on the test curve."""
    from .evidence import cells
    shown: dict[str, Any] = {}
    for c in cells(grid, dataset):
        shown.setdefault(c.label, c)  # the first labeled count of each row
    n = len(shown)
    cols = min(n, 3)   # a grid that stays readable when the report shrinks it
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.0 * rows), squeeze=False, sharey=True,
                             layout="constrained")   # titles, labels and legend kept apart in every row
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, c in zip(axes.flat, shown.values()):
        for k, (seed, s) in enumerate(sorted(c.by_seed.items())):
            its, val, test = (np.asarray(s["curve"][key], dtype=float)
                              for key in ("iteration", "val_dice", "test_dice"))
            colour = f"C{k % 10}"
            ax.plot(its, 100 * val, ls="--", lw=1, color=colour, label=f"seed {seed} validation")
            ax.plot(its, 100 * test, ls="-", lw=1.2, color=colour, label=f"seed {seed} test")
            for name, marker in PROTOCOL_MARKERS.items():
                p = s["protocols"][name]
                # outlines of different sizes: protocols that pick one checkpoint show as concentric marks
                ax.plot(p["iteration"], 100 * p["test_dice"], marker=marker, ms=PROTOCOL_SIZES[name],
                        mfc="none" if name != "best_test" else colour, mec=colour, ls="none",
                        label=name if k == 0 else None)
        name = method_name(c.method) if c.method else c.label
        ax.set_title(f"{name}\n{labeled_text(dataset, c.labeled)}", fontsize=9)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    for r in range(rows):
        axes[r][0].set_ylabel("mean Dice (%)")
    # beside the panels, not on one: the curves of the last panel stay visible
    axes[0][cols - 1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    fig.suptitle(_title(grid, dataset, f"Validation and test Dice over training — {dataset_name(dataset)}"),
                 fontsize=10)
    caption = (f"Validation (dashed) and test (solid) mean Dice (%) of every snapshot on {dataset_name(dataset)}, per "
               "method and seed; markers: the checkpoint each protocol selects (square final, circle best_val "
               "= ours, triangle valtest = best on validation + test, star best_test = best on the test set), "
               "placed at its test Dice; protocols that select the same checkpoint show as concentric marks. Scored after training by `crossmatch protocols`; selection never "
               "reads the test curve.")
    _save(fig, out_prefix, caption, grid, dataset)
