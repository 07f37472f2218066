"""The training losses of our CrossMatch runs beside the reference code's, in
the reference's own terms, epoch by epoch: its log prints, within each epoch
of ``len(unlabeled) / batch`` iterations, running means of the total loss,
``Loss x`` (supervised), ``Loss s`` (mean of the two strong-view terms),
``Loss KD`` ((1 - eta) mean of the four tkd terms + eta mean of the two dkd
terms) and the mask ratio. The same means are computed from our ``log.csv``
over the same iterations (the epoch's last printed line: its first
``Iters + 1`` iterations). Equal steps on equally distributed batches give
equal curves up to the seed noise; a term that drifts apart tells which
part of the step the runs differ in.

  python benchmarks/reference/loss_terms.py \\
      --ours results/runs/acdc_l3_cpu_cm_nearest_s0/crossmatch/s0,... \\
      --reference results/runs/acdc_l3_cpu_reference_order/crossmatch/s0,... \\
      --out benchmarks/results/acdc_l3_cpu_cm_loss_terms.json

Reference runs are ``run_reference_acdc.sh`` folders (their ``train.log``).

Between two printed lines of one epoch the running means give the mean over
that interval alone (38 iterations at the README budget); ``intervals`` of
the JSON holds them per run, ours over the same iterations. They show the
plateau every run starts with: while the confident pseudo-labels hold no
foreground, the strong-view Dice loss sits at (classes - 1) / classes (0.75
for ACDC) with a gradient of nearly zero, and CrossMatch is a supervised
run at half the rate. ``plateau_exit`` is the end of the first interval,
after the plateau is reached, whose Loss s falls below ``--exit-below``.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

import pandas as pd

from crossmatch.provenance import record

TERMS = ("loss_x", "loss_s", "loss_kd", "mask_ratio")
LINE = re.compile(r"Iters: (\d+), Total loss: [\d.]+, Loss x: ([\d.]+), Loss s: ([\d.]+), "
                  r"Loss KD: ([\d.]+), Mask ratio: ([\d.]+)")
EPOCH = re.compile(r"Epoch: (\d+)")


def reference_lines(train_log: Path) -> list[tuple[int, int, dict]]:
    """Every printed loss line: (epoch, iterations of the epoch so far, running means)."""
    out: list[tuple[int, int, dict]] = []
    epoch = None
    for line in train_log.read_text().splitlines():
        if m := EPOCH.search(line):
            epoch = int(m.group(1))
        elif (m := LINE.search(line)) and epoch is not None:
            out.append((epoch, int(m.group(1)) + 1, dict(zip(TERMS, map(float, m.groups()[1:])))))
    if not out:
        raise SystemExit(f"{train_log}: no 'Iters: ...' lines of the reference's log")
    return out


def reference_epochs(train_log: Path) -> dict[int, dict]:
    """Epoch -> its last printed line (running means over its first ``iters`` iterations)."""
    return {epoch: {"iters": n, **vals} for epoch, n, vals in reference_lines(train_log)}


def reference_intervals(train_log: Path, epoch_length: int) -> list[dict]:
    """Means over each interval between two printed lines of an epoch (from the
    running means); ``end`` is the interval's last iteration, counted from 1."""
    out: list[dict] = []
    prev = None
    for epoch, n, vals in reference_lines(train_log):
        n0, v0 = (prev[1], prev[2]) if prev and prev[0] == epoch else (0, dict.fromkeys(TERMS, 0.0))
        if n > n0:
            out.append({"end": epoch * epoch_length + n, "iterations": n - n0,
                        **{t: (vals[t] * n - v0[t] * n0) / (n - n0) for t in TERMS}})
        prev = epoch, n, vals
    return out


def _reference_terms(log: pd.DataFrame, eta: float) -> pd.DataFrame:
    """Our log's columns combined as the reference's script combines its terms."""
    log = log.copy()
    log["loss_x"] = log["sup"]
    log["loss_s"] = (log["ip_s1"] + log["ip_s2"]) / 2
    tkd = log[["tkd_w_dw", "tkd_w_ds", "tkd_s_dw", "tkd_s_ds"]].mean(axis=1)
    log["loss_kd"] = (1 - eta) * tkd + eta * log[["dkd_dw", "dkd_ds"]].mean(axis=1)
    return log


def our_intervals(log_csv: Path, intervals: list[dict], eta: float) -> list[dict]:
    """Our log's means over the reference's intervals (those our run covers)."""
    log = _reference_terms(pd.read_csv(log_csv), eta)
    out = []
    for iv in intervals:
        seg = log[(log["iteration"] > iv["end"] - iv["iterations"]) & (log["iteration"] <= iv["end"])]
        if len(seg) == iv["iterations"]:
            out.append({"end": iv["end"], "iterations": iv["iterations"],
                        **{t: float(seg[t].mean()) for t in TERMS}})
    return out


def plateau_exit(intervals: list[dict], n_classes: int = 4, below: float = 0.7,
                 min_length: int = 10) -> int | None:
    """The end of the first interval after the strong-view loss reached its
    plateau ((classes - 1) / classes, within 0.01) whose mean falls below
    ``below``; intervals shorter than ``min_length`` (an epoch's first line,
    one iteration) are too noisy to count, either way."""
    level = (n_classes - 1) / n_classes
    reached = False
    for iv in (iv for iv in intervals if iv["iterations"] >= min_length):
        reached = reached or iv["loss_s"] >= level - 0.01
        if reached and iv["loss_s"] < below:
            return iv["end"]
    return None


def our_epochs(log_csv: Path, epoch_length: int, spans: dict[int, int], eta: float) -> dict[int, dict]:
    """Our log's means of the same quantities over the same iterations."""
    log = _reference_terms(pd.read_csv(log_csv), eta)
    out = {}
    for epoch, iters in spans.items():
        first = epoch * epoch_length
        seg = log[(log["iteration"] > first) & (log["iteration"] <= first + iters)]
        if len(seg) == iters:
            out[epoch] = {"iters": iters, **{t: float(seg[t].mean()) for t in TERMS}}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ours", required=True, help="our run folders (with log.csv), comma-separated")
    p.add_argument("--reference", required=True, help="reference run folders (with train.log), comma-separated")
    p.add_argument("--epoch-length", type=int, default=310, help="the reference's iterations per epoch "
                   "(ACDC, 3 labeled, batch 4: 1,243 unlabeled slices // 4 = 310)")
    p.add_argument("--eta", type=float, default=0.3)
    p.add_argument("--exit-below", type=float, default=0.7,
                   help="Loss s under which an interval counts as past the plateau (default 0.7)")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    ref = {run: reference_epochs(Path(run) / "train.log") for run in a.reference.split(",")}
    spans = {e: min(r[e]["iters"] for r in ref.values() if e in r) for e in set().union(*ref.values())}
    ours = {run: our_epochs(Path(run) / "log.csv", a.epoch_length, spans, a.eta) for run in a.ours.split(",")}
    rows = []
    for epoch in sorted(spans):
        row = {"epoch": epoch, "iterations": spans[epoch]}
        for side, runs in (("ours", ours), ("reference", ref)):
            for t in TERMS:
                vals = [r[epoch][t] for r in runs.values() if epoch in r]
                row[f"{side}_{t}"] = statistics.mean(vals) if vals else None
                row[f"{side}_{t}_runs"] = vals
        rows.append(row)
    head = " | ".join(f"{t} ours / ref" for t in TERMS)
    print(f"| epoch (iterations) | {head} |\n|---|" + "---|" * len(TERMS))
    for r in rows:
        cells = " | ".join("-" if r[f"ours_{t}"] is None or r[f"reference_{t}"] is None else
                           f"{r[f'ours_{t}']:.3f} / {r[f'reference_{t}']:.3f}" for t in TERMS)
        print(f"| {r['epoch']} ({r['iterations']}) | {cells} |")

    ref_iv = {run: reference_intervals(Path(run) / "train.log", a.epoch_length) for run in ref}
    grid = max(ref_iv.values(), key=len)
    intervals = {**{run: our_intervals(Path(run) / "log.csv", grid, a.eta) for run in ours}, **ref_iv}
    exits = {run: plateau_exit(iv, below=a.exit_below) for run, iv in intervals.items()}
    print("\n| run | plateau exit (iteration) |\n|---|---|")
    for run, it in exits.items():
        print(f"| {run} | {it if it is not None else 'not within the log'} |")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"ours": a.ours.split(","), "reference": a.reference.split(","),
                                     "epoch_length": a.epoch_length, "rows": rows,
                                     "exit_below": a.exit_below, "plateau_exit": exits, "provenance": record(),
                                     "intervals": intervals}, indent=2) + "\n")


if __name__ == "__main__":
    main()
