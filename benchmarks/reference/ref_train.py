"""Run one public CrossMatch reference training script (ACDC, after the CPU
edits of ``../shared/harness/reference-cpu/cpu.patch``) at a fixed iteration
budget, and keep what our evaluator needs, without editing the script:

- its optimiser is wrapped (``torch.optim.SGD`` is replaced before the script
  imports it) so that the poly schedule spans the budget, as the script's own
  ``lr * (1 - iters / total_iters) ** 0.9`` does with ``total_iters = budget``
  (it sets the rate after each step from that step's index; so do we);
- every ``--snapshot-every`` steps and after the last one, the network's
  state dict (weights and batch-norm statistics) is written to
  ``<out>/snapshots/iter_NNNNN.pt``, and ``<out>/log.csv`` gets a row
  (iteration, lr, cumulative seconds);
- the script is stopped by its own ``--max-iters`` (cpu.patch), which also
  skips its epoch-end evaluation on the val+test list;
- ``--sampler-seed S`` gives every ``DistributedSampler`` the seed S (the
  script leaves it at torch's default 0, so its data order is the same for
  every ``--seed``); without it the script's order is untouched.

  python ref_train.py --budget 1500 --out DIR -- train_cross_match.py --config ... --seed 0 ...

Run from the patched reference's ACDC folder (its imports are relative to it).
The reference has no mid-epoch resume: an interrupted run starts again.
"""
from __future__ import annotations

import argparse
import csv
import os
import runpy
import sys
import time
from pathlib import Path

import torch

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--budget", type=int, required=True)
p.add_argument("--out", type=Path, required=True)
p.add_argument("--snapshot-every", type=int, default=100)
p.add_argument("--sampler-seed", type=int, default=None,
               help="seed of the script's DistributedSamplers (default: theirs, 0)")
p.add_argument("script", nargs=argparse.REMAINDER)
args = p.parse_args()
script = [a for a in args.script if a != "--"]
snaps = args.out / "snapshots"
snaps.mkdir(parents=True, exist_ok=True)
networks: list[torch.nn.Module] = []

_ddp_init = torch.nn.parallel.DistributedDataParallel.__init__


def _capture(self, module, *a, **k):  # the script wraps its network in DDP: remember it
    networks.append(module)
    _ddp_init(self, module, *a, **k)


torch.nn.parallel.DistributedDataParallel.__init__ = _capture


class BudgetSGD(torch.optim.SGD):
    def __init__(self, params, lr, *a, **k):
        super().__init__(params, lr, *a, **k)
        self.base_lr, self.steps, self.tic, self.rows = lr, 0, time.perf_counter(), []

    def step(self, closure=None):
        if self.steps:  # the script's rate after step index steps-1, with total_iters = budget
            for g in self.param_groups:
                g["lr"] = self.base_lr * (1 - (self.steps - 1) / args.budget) ** 0.9
        lr = self.param_groups[0]["lr"]
        out = super().step(closure)
        self.steps += 1
        self.rows.append({"iteration": self.steps, "lr": lr, "seconds": time.perf_counter() - self.tic})
        if self.steps % args.snapshot_every == 0 or self.steps == args.budget:
            tmp = snaps / f".iter_{self.steps:05d}.pt.tmp"
            torch.save({"model": networks[0].state_dict(), "iteration": self.steps}, tmp)
            os.replace(tmp, snaps / f"iter_{self.steps:05d}.pt")
            with open(args.out / "log.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=["iteration", "lr", "seconds"])
                w.writeheader()
                w.writerows(self.rows)
        return out


torch.optim.SGD = BudgetSGD

if args.sampler_seed is not None:  # the data order, otherwise fixed whatever --seed says
    _sampler_init = torch.utils.data.distributed.DistributedSampler.__init__

    def _seeded(self, *a, **k):
        k["seed"] = args.sampler_seed
        _sampler_init(self, *a, **k)

    torch.utils.data.distributed.DistributedSampler.__init__ = _seeded
sys.argv = script + ["--max-iters", str(args.budget)]
sys.path.insert(0, os.path.dirname(os.path.abspath(script[0])))  # as `python script` would
runpy.run_path(script[0], run_name="__main__")
if not networks or not (snaps / f"iter_{args.budget:05d}.pt").is_file():
    raise SystemExit(f"ref_train: the script ended before {args.budget} steps")
print(f"ref_train: {args.budget} steps, snapshots in {snaps}", flush=True)
