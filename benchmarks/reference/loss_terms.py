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
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

import pandas as pd

TERMS = ("loss_x", "loss_s", "loss_kd", "mask_ratio")
LINE = re.compile(r"Iters: (\d+), Total loss: [\d.]+, Loss x: ([\d.]+), Loss s: ([\d.]+), "
                  r"Loss KD: ([\d.]+), Mask ratio: ([\d.]+)")
EPOCH = re.compile(r"Epoch: (\d+)")


def reference_epochs(train_log: Path) -> dict[int, dict]:
    """Epoch -> its last printed line (running means over its first ``iters`` iterations)."""
    out: dict[int, dict] = {}
    epoch = None
    for line in train_log.read_text().splitlines():
        if m := EPOCH.search(line):
            epoch = int(m.group(1))
        elif (m := LINE.search(line)) and epoch is not None:
            out[epoch] = {"iters": int(m.group(1)) + 1,
                          **dict(zip(TERMS, map(float, m.groups()[1:])))}
    if not out:
        raise SystemExit(f"{train_log}: no 'Iters: ...' lines of the reference's log")
    return out


def our_epochs(log_csv: Path, epoch_length: int, spans: dict[int, int], eta: float) -> dict[int, dict]:
    """Our log's means of the same quantities over the same iterations."""
    log = pd.read_csv(log_csv)
    log["loss_x"] = log["sup"]
    log["loss_s"] = (log["ip_s1"] + log["ip_s2"]) / 2
    tkd = log[["tkd_w_dw", "tkd_w_ds", "tkd_s_dw", "tkd_s_ds"]].mean(axis=1)
    log["loss_kd"] = (1 - eta) * tkd + eta * log[["dkd_dw", "dkd_ds"]].mean(axis=1)
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
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"ours": a.ours.split(","), "reference": a.reference.split(","),
                                     "epoch_length": a.epoch_length, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
