"""Batch statistics of our ACDC data path beside the reference code's.

The swap experiment (docs/fidelity.md) showed that our CrossMatch step fed by
the reference's data path scores higher than fed by ours. This script looks
for *what* differs in the batches, without training: it draws many batches
from both sides (ours: ``IterationBatches`` + ``strong_views`` as the trainer
calls them; the reference: its own ``ACDCDataset`` in ``train_l`` /
``train_u`` mode, imported from the harness copy) and compares summary
statistics of each stream, with their standard errors:

- labeled: image mean / std, share of non-zero pixels, sharpness (mean
  absolute neighbour difference), class shares of the label;
- unlabeled weak view: the same image statistics;
- strong views: mean / std, mean absolute change from the weak view, the
  sharpness ratio to the weak view (blur), CutMix box presence and area.

Our sides: linear and order-0 interpolation with float views, and order 0
with the reference's 8-bit PIL views (``train.unlabeled_views: pil``).

  python benchmarks/reference/data_path_stats.py [--samples 2000] [--out benchmarks/results/acdc_data_path_stats.json]

Run from the project root after the harness setup (``run_reference_acdc.sh``
does it: it needs ``/tmp/refcpu``) and after ``results/data/acdc`` is
preprocessed.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch

from crossmatch import config
from crossmatch.data.augment import strong_views
from crossmatch.data.batches import IterationBatches
from crossmatch.data.specs import get_spec
from crossmatch.data.splits import resolve_splits
from crossmatch.io import write_json
from crossmatch.provenance import record


def image_stats(x: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-sample statistics of ``N x 1 x H x W`` images."""
    x = x.float()[:, 0]
    sharp = (x[:, 1:, :] - x[:, :-1, :]).abs().mean((1, 2)) + (x[:, :, 1:] - x[:, :, :-1]).abs().mean((1, 2))
    return {"mean": x.mean((1, 2)).numpy(), "std": x.std((1, 2)).numpy(),
            "nonzero": (x > 1e-6).float().mean((1, 2)).numpy(), "sharpness": sharp.numpy()}


def label_stats(y: torch.Tensor, n_classes: int = 4) -> dict[str, np.ndarray]:
    return {f"class_{c}": (y == c).float().mean((1, 2)).numpy() for c in range(n_classes)}


def strong_stats(weak: torch.Tensor, strong: torch.Tensor, box: torch.Tensor) -> dict[str, np.ndarray]:
    """Strong view against its weak view, outside the CutMix box (the
    pasted region comes from another image)."""
    w, s, keep = weak.float()[:, 0], strong.float()[:, 0], ~box.bool()
    change = ((s - w).abs() * keep).sum((1, 2)) / keep.sum((1, 2)).clamp(min=1)
    sw, ss = image_stats(weak)["sharpness"], image_stats(strong)["sharpness"]
    return {"mean": s.mean((1, 2)).numpy(), "std": s.std((1, 2)).numpy(), "abs_change": change.numpy(),
            "sharpness_ratio": ss / np.maximum(sw, 1e-8), "box_present": box.flatten(1).any(1).float().numpy(),
            "box_area": box.float().mean((1, 2)).numpy()}


def collect(acc: dict[str, dict[str, list]], stream: str, stats: dict[str, np.ndarray]) -> None:
    for k, v in stats.items():
        acc.setdefault(stream, {}).setdefault(k, []).extend(np.asarray(v, dtype=float).tolist())


# our sides: name -> (train.interpolation, train.unlabeled_views)
OURS = {"ours_linear": ("linear", "float"), "ours_nearest": ("nearest", "float"), "ours_pil": ("nearest", "pil")}


def ours(samples: int, seed: int, interpolation: str, root: Path, views: str = "float") -> dict:
    spec = get_spec("acdc")
    splits = resolve_splits(spec, root, 3)
    pil = views == "pil"
    data = IterationBatches(splits.labeled, splits.unlabeled, 4, (128, 128), 4, seed, interpolation,
                            quantize=spec.intensity_range if pil else None)
    gen = torch.Generator()
    acc: dict = {}
    for t in range(samples // 4):
        b = data[t]
        gen.manual_seed(seed * 1_000_003 + t)
        collect(acc, "labeled_image", image_stats(b["x"]))
        collect(acc, "labeled_label", label_stats(b["y"]))
        collect(acc, "weak", image_stats(b["u"]))
        views, boxes = strong_views(b["u"], b["u_mix"], gen, 2, spec.intensity_range, pil=pil)
        for v, box in zip(views, boxes):
            collect(acc, "strong", strong_stats(b["u"], v, box))
    return acc


def reference(samples: int, seed: int, work: Path) -> dict:
    ref_acdc = work / "ref" / "ACDC"
    sys.path.insert(0, str(ref_acdc))
    sys.path.insert(0, str(work / "pylib"))
    from dataset.acdc import ACDCDataset  # the reference's own module, not copied

    root = str(work / "ref_data")
    splits = ref_acdc / "splits" / "acdc" / "3"
    u_set = ACDCDataset("acdc", root, "train_u", 128, str(splits / "unlabeled.txt"))
    l_set = ACDCDataset("acdc", root, "train_l", 128, str(splits / "labeled.txt"), nsample=len(u_set.ids))
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    g = np.random.default_rng(seed)
    acc: dict = {}
    for t in range(samples // 4):
        li, ui, mi = g.integers(0, len(l_set), 4), g.integers(0, len(u_set), 4), g.integers(0, len(u_set), 4)
        xs, ys = zip(*(l_set[int(i)] for i in li))
        x, y = torch.stack(xs), torch.stack(ys)
        u = [u_set[int(i)] for i in ui]
        mix = [u_set[int(i)] for i in mi]
        w = torch.stack([s[0] for s in u])
        collect(acc, "labeled_image", image_stats(x))
        collect(acc, "labeled_label", label_stats(y))
        collect(acc, "weak", image_stats(w))
        for view in (1, 2):  # the reference pastes the mix sample's own strong view into the box
            s = torch.stack([a[view] for a in u])
            s_mix = torch.stack([a[view] for a in mix])
            box = torch.stack([a[2 + view] for a in u]).bool()
            pasted = torch.where(box.unsqueeze(1), s_mix, s)
            collect(acc, "strong", strong_stats(w, pasted, box))
    return acc


def summarise(acc: dict) -> dict:
    return {stream: {k: {"mean": float(np.mean(v)), "se": float(np.std(v) / np.sqrt(len(v))), "n": len(v)}
                     for k, v in d.items()} for stream, d in acc.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=2000, help="samples per stream and side")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", type=Path, default=Path("results/data/acdc"), help="our preprocessed ACDC")
    p.add_argument("--work", type=Path, default=Path("/tmp/refcpu"), help="the harness's work folder")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/acdc_data_path_stats.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    sides = {name: summarise(ours(args.samples, args.seed, interp, args.root, views))
             for name, (interp, views) in OURS.items()}
    sides["reference"] = summarise(reference(args.samples, args.seed, args.work))
    rows = []
    for stream, stats in sides["reference"].items():
        for k, r in stats.items():
            row = {"stream": stream, "statistic": k, "reference": round(r["mean"], 5)}
            for side in OURS:
                o = sides[side][stream][k]
                row[side] = round(o["mean"], 5)
                row[f"z_{side}"] = round((o["mean"] - r["mean"]) / max(np.hypot(o["se"], r["se"]), 1e-12), 1)
            rows.append(row)
    print(f"{'stream':14s} {'statistic':16s} {'reference':>10s}" + "".join(f" {n[5:]:>10s} {'z':>6s}" for n in OURS))
    for r in rows:
        print(f"{r['stream']:14s} {r['statistic']:16s} {r['reference']:10.4f}"
              + "".join(f" {r[n]:10.4f} {r['z_' + n]:6.1f}" for n in OURS))
    write_json(args.out, {"samples": args.samples, "seed": args.seed, "rows": rows, "sides": sides,
                          "provenance": record()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
