"""Our trainer and CrossMatch step, fed by the reference code's own data path.

The swap experiment of docs/fidelity.md: every batch comes from the public
reference's ACDC ``ACDCDataset`` (its weak geometry with order-0 zoom, its
8-bit PIL strong views, ColorJitter, PIL blur and CutMix boxes) through
``DistributedSampler`` loaders built as its ``train_cross_match.py`` builds
them (labeled list repeated to the unlabeled list's length, ``drop_last``,
``set_epoch(epoch)``, the CutMix source loader at ``epoch + epochs``: the
same order for every seed). Everything else is ours: network, step, optimiser,
poly schedule, validation, checkpoints, so that ``crossmatch evaluate --run``
scores the run like any other. Nothing of the reference is copied: its
modules are imported from the patched copy the harness sets up.

If our step on the reference's data reaches the reference code's Dice, the
gap is in our data path; if it stays at ours, it is in the training loop.

  python benchmarks/reference/ours_on_reference_data.py --seed 0 --out results/runs/swap/crossmatch/s0 \
      [--set train.threads=1 ...]

Run from the project root after the harness setup (``run_reference_acdc.sh``
does it). Resumes from ``latest.pt`` like ``crossmatch train`` (the data
order restarts at the resumed iteration's place in its epoch).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

import crossmatch.methods.crossmatch as cm_module
import crossmatch.train as train_module
from crossmatch import config
from crossmatch.data.augment import apply_cutmix

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--seed", type=int, required=True)
p.add_argument("--out", type=Path, required=True)
p.add_argument("--config", default="config/experiments/acdc_l3_cpu.yaml")
p.add_argument("--set", action="append", default=[])
p.add_argument("--work", type=Path, default=Path("/tmp/refcpu"), help="the harness's work folder")
args = p.parse_args()
ref_acdc = args.work / "ref" / "ACDC"
ref_cfg = yaml.safe_load((args.work / "cfg" / "b4_128.yaml").read_text())
sys.path.insert(0, str(ref_acdc))
sys.path.insert(0, str(args.work / "pylib"))  # torchvision, as the harness installs it
from dataset.acdc import ACDCDataset  # noqa: E402  (the reference's own module)

cfg = config.load(args.config, [f"train.seed={args.seed}", "method.name=crossmatch", *args.set])
t = cfg["train"]
assert t["batch_size"] == ref_cfg["batch_size"] and list(t["crop"]) == [ref_cfg["crop_size"]] * 2
splits = ref_acdc / "splits" / "acdc" / "3"
u_set = ACDCDataset("acdc", ref_cfg["data_root"], "train_u", ref_cfg["crop_size"], str(splits / "unlabeled.txt"))
l_set = ACDCDataset("acdc", ref_cfg["data_root"], "train_l", ref_cfg["crop_size"], str(splits / "labeled.txt"),
                    nsample=len(u_set.ids))
per_epoch = len(u_set) // t["batch_size"]


def loader(ds, epoch: int, skip: int, gen: torch.Generator) -> DataLoader:
    sampler = DistributedSampler(ds, num_replicas=1, rank=0)  # the reference's sampler, default seed 0
    sampler.set_epoch(epoch)
    idx = list(sampler)[skip * t["batch_size"]:]
    return DataLoader(ds, batch_size=t["batch_size"], sampler=idx, num_workers=1, drop_last=True, generator=gen)


def reference_batches(start: int, stop: int):
    """Batches ``start .. stop-1`` in the reference's order, as our batch dicts
    (plus the reference's strong views and boxes)."""
    gen = torch.Generator().manual_seed(1000 * args.seed + start)  # worker seeds: augmentations per seed
    it = start
    while it < stop:
        epoch, skip = divmod(it, per_epoch)
        zipped = zip(loader(l_set, epoch, skip, gen), loader(u_set, epoch, skip, gen),
                     loader(u_set, epoch + ref_cfg["epochs"], skip, gen))
        for (x, y), (u, s1, s2, b1, b2), (u_mix, s1_mix, s2_mix, _, _) in zipped:
            yield {"x": x, "y": y, "u": u, "u_mix": u_mix, "s1": s1, "s2": s2, "box1": b1, "box2": b2,
                   "s1_mix": s1_mix, "s2_mix": s2_mix}
            it += 1
            if it >= stop:
                return


current: dict = {}


def reference_views(u, u_mix, gen, views, clip=None):
    """Stands in for our ``strong_views``: the reference's strong views of this batch."""
    b = current["batch"]
    assert views == 2
    boxes = [b["box1"].bool(), b["box2"].bool()]
    return [apply_cutmix(b["s1"], b["s1_mix"], boxes[0]), apply_cutmix(b["s2"], b["s2_mix"], boxes[1])], boxes


step = train_module.Trainer.step


def step_with_views(self, it, batch):
    current["batch"] = {k: v.to(self.device) for k, v in batch.items()}
    return step(self, it, batch)


class _Batches:  # what fit() builds; the loader below ignores it
    def __init__(self, *a, **k): pass


cm_module.strong_views = reference_views
train_module.Trainer.step = step_with_views
train_module.IterationBatches = _Batches
train_module.iteration_loader = lambda data, start, stop, workers: reference_batches(start, stop)
print(f"ours on the reference's data: seed {args.seed}, {per_epoch} iterations per epoch -> {args.out}", flush=True)
print(train_module.train(cfg, args.out))
