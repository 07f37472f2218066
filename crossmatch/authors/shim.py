"""Run one of the authors' training scripts as published, in this process, for a
fixed number of optimiser steps, keeping what our evaluator needs. The parent
(``crossmatch.authors.run``) starts it as ``python -m crossmatch.authors.shim SPEC``
in the script's folder; SPEC is a JSON file (``Spec``'s fields).

Nothing in the script is edited. Before it is imported, at run time:

- the learning rate: ``torch.optim.SGD`` is replaced by a subclass that sets
  the script's own poly rate ``lr (1 - k / total) ** 0.9`` with ``total`` =
  the budget (the script sets it after each step from that step's index; so
  does this), and stops the script after ``budget`` steps;
- snapshots: every ``snapshot_every`` steps and after the last one, the state
  dict of the network the script wraps in DDP is written to
  ``<out>/iter_NNNNN.pt``, and ``<out>/steps.csv`` gets (iteration, lr, seconds);
- seeds: Python's, NumPy's and torch's generators are seeded with ``seed``
  (the script seeds nothing: as published every run is unseeded);
- ``num_workers`` (when set) replaces every DataLoader's worker count (the
  script starts 3 x 3 x batch workers);
- without CUDA, the device shim: ``.cuda()`` of tensors and modules is the
  identity, the process group uses gloo, SyncBatchNorm stays BatchNorm, DDP
  and DataLoader lose their CUDA-only arguments. The arithmetic is unchanged;
- tensorboard, when it is not installed, logs nothing; torchvision's fake
  registrations of C++ operators a CPU build of torch lacks are skipped (the
  script uses only its transforms).
"""
from __future__ import annotations

import csv
import importlib
import json
import os
import random
import runpy
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class Spec:
    script: str                 # the training script, relative to the working folder
    argv: list[str]             # its arguments
    budget: int                 # optimiser steps
    snapshot_every: int
    out: str                    # snapshots and steps.csv
    seed: int
    threads: int = 0
    num_workers: int | None = None
    cpu: bool = True            # apply the device shim


class BudgetReached(BaseException):
    """Raised after the last step (BaseException: the script's own handlers let it through)."""


def _cpu_shim() -> None:
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.cuda.set_device = lambda *a, **k: None
    torch.cuda.device_count = lambda: 1       # the script computes rank % device_count
    torch.nn.SyncBatchNorm.convert_sync_batchnorm = classmethod(lambda cls, module, *a, **k: module)
    init_pg = torch.distributed.init_process_group

    def gloo(*a, **k):
        k["backend"] = "gloo"
        return init_pg(*a[1:], **k) if a else init_pg(**k)

    torch.distributed.init_process_group = gloo


def _wrap_init(cls: type, edit) -> None:
    init = cls.__init__

    def __init__(self, *a, **k):
        edit(k)
        init(self, *a, **k)

    cls.__init__ = __init__


def _libraries() -> None:
    try:
        importlib.import_module("torch.utils.tensorboard")
    except ImportError:
        class SummaryWriter:
            def __init__(self, *a, **k): pass
            def __getattr__(self, name): return lambda *a, **k: None
        stub = types.ModuleType("torch.utils.tensorboard")
        stub.SummaryWriter = SummaryWriter
        sys.modules["torch.utils.tensorboard"] = stub
    register_fake = torch.library.register_fake

    def tolerant(op, *a, **k):
        register = register_fake(op, *a, **k)
        if a or not (isinstance(op, str) and op.startswith("torchvision::")):
            return register

        def decorate(fn):
            try:
                return register(fn)
            except RuntimeError as e:  # the operator is in torchvision's C++ library, absent here
                if "does not exist" not in str(e):
                    raise
                return fn

        return decorate

    torch.library.register_fake = tolerant


def main(spec: Spec) -> None:
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    random.seed(spec.seed)
    np.random.seed(spec.seed)
    torch.manual_seed(spec.seed)
    _libraries()
    networks: list[torch.nn.Module] = []

    def ddp(k):
        if spec.cpu:
            k.pop("device_ids", None)
            k.pop("output_device", None)

    _wrap_init(torch.nn.parallel.DistributedDataParallel, ddp)
    ddp_init = torch.nn.parallel.DistributedDataParallel.__init__

    def capture(self, module, *a, **k):  # the network the script trains
        networks.append(module)
        ddp_init(self, module, *a, **k)

    torch.nn.parallel.DistributedDataParallel.__init__ = capture

    def loader(k):
        if spec.num_workers is not None:
            k["num_workers"] = spec.num_workers
        if spec.cpu:
            k["pin_memory"] = False
            k.pop("pin_memory_device", None)

    _wrap_init(torch.utils.data.DataLoader, loader)
    if spec.cpu:
        _cpu_shim()

    class BudgetSGD(torch.optim.SGD):
        def __init__(self, params, lr, *a, **k):
            super().__init__(params, lr, *a, **k)
            self.base_lr, self.steps, self.tic, self.rows = lr, 0, time.perf_counter(), []

        def step(self, closure=None):
            if self.steps:  # the script's rate after step index steps-1, with total = budget
                for g in self.param_groups:
                    g["lr"] = self.base_lr * (1 - (self.steps - 1) / spec.budget) ** 0.9
            lr = self.param_groups[0]["lr"]
            result = super().step(closure)
            self.steps += 1
            self.rows.append({"iteration": self.steps, "lr": lr, "seconds": time.perf_counter() - self.tic})
            if self.steps % spec.snapshot_every == 0 or self.steps == spec.budget:
                tmp = out / f".iter_{self.steps:05d}.pt.tmp"
                torch.save({"model": networks[0].state_dict(), "iteration": self.steps}, tmp)
                os.replace(tmp, out / f"iter_{self.steps:05d}.pt")
                with open(out / ".steps.csv.tmp", "w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=["iteration", "lr", "seconds"])
                    w.writeheader()
                    w.writerows(self.rows)
                os.replace(out / ".steps.csv.tmp", out / "steps.csv")
                print(f"authors' code: step {self.steps}/{spec.budget}, {self.rows[-1]['seconds']:.0f} s",
                      flush=True)
            if self.steps >= spec.budget:
                raise BudgetReached
            return result

    torch.optim.SGD = BudgetSGD
    sys.argv = [spec.script, *spec.argv]
    sys.path.insert(0, os.getcwd())  # as `python script` would
    try:
        runpy.run_path(spec.script, run_name="__main__")
    except BudgetReached:
        sys.stdout.flush()
        os._exit(0)  # the script's loader workers and process group are not torn down
    raise SystemExit(f"the authors' script ended before {spec.budget} steps")


if __name__ == "__main__":
    main(Spec(**json.loads(Path(sys.argv[1]).read_text())))
