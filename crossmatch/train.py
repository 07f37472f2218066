"""The one trainer every method shares (``Trainer``; ``train`` runs it).

It owns the optimiser and poly schedule, AMP, deterministic seeding, the
progress bar, the CSV log, validation with best-on-validation selection,
checkpoints and resume. It writes ``config.yaml``, ``log.csv`` and
``checkpoints/{latest,best,final}.pt`` of the run folder (``crossmatch.layout``),
and with ``train.snapshots`` the weights of every validation point
(``checkpoints/snapshots/``, for ``crossmatch.protocols``).

A re-run of the same command resumes from ``latest.pt``; batch ``t`` and its
augmentations are a function of (seed, t), and the RNG states are restored,
so the resumed run ends with the same weights as an uninterrupted one.
Checkpoints hold plain data only and are read with torch's ``weights_only``
(``crossmatch.checkpoints``): the RNG states are stored as a tensor, lists
and numbers, and a ``latest.pt`` written before that (numpy's state as an
array) still resumes.

``on_checkpoint(experiment, iteration)`` is called after every ``latest.pt``:
the tests inject faults through it. The command line sets it from the
test-only environment variable ``CROSSMATCH_FAIL_ONCE=<marker path>``
(``fail_once``): with no file at that path, the first job that checkpoints
creates the marker and exits with status 1, as a crashed job would; once
the marker exists it has no effect, so a retried or re-run job resumes and
completes (tests/test_faults.py checks Snakemake's ``retries`` with it).
``CROSSMATCH_TEST_HOLD=<folder>`` (``hold_at_checkpoint``) holds the N-th
experiment to checkpoint (N in ``<folder>/hold``) at its first checkpoint
until ``<folder>/release`` exists, writing ``<folder>/held``: the fault tests
interrupt a training in a known state, not after a guessed time.
"""
from __future__ import annotations

import copy
import csv
import importlib
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from . import config, provenance
from .checkpoints import RESTART, RETRAIN, load_checkpoint, save_checkpoint
from .config import experiment_id
from .data.batches import IterationBatches, iteration_loader
from .data.specs import DatasetSpec, get_spec
from .errors import ConfigError, TrainingDiverged
from .evaluate import mean_dice
from .factories import (make_model, make_optimizer, pick_device, pick_precision, poly_lr, seed_everything,
                        splits_for)
from .io import atomic_path, write_text, write_yaml
from .layout import Run
from .methods import get_method
from .methods.base import StepContext
from .runtime import tune_allocator

__all__ = ["Trainer", "train", "validate", "save_checkpoint", "fail_once", "FAIL_ONCE_ENV", "HOLD_ENV",
           "hold_at_checkpoint", "checkpoint_hooks"]


def _rng_state() -> dict[str, Any]:
    """The global RNG states as plain data (what ``weights_only`` loads): torch's
    as its byte tensor, numpy's legacy MT19937 state as a dict of a list and
    numbers, Python's ``random.getstate()`` (a tuple of ints) as it is."""
    name, key, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"bit_generator": str(name), "key": [int(k) for k in key], "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    """Restore ``_rng_state``'s states; numpy's may also be the tuple that
    ``np.random.get_state()`` returns (checkpoints written before the dict)."""
    torch.set_rng_state(state["torch"])
    npy = state["numpy"]
    if isinstance(npy, dict):
        npy = (npy["bit_generator"], np.asarray(npy["key"], dtype=np.uint32), npy["pos"], npy["has_gauss"],
               npy["cached_gaussian"])
    np.random.set_state(npy)
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def device_name(device: torch.device) -> str:
    """``cuda: NVIDIA H100 ...`` or ``cpu`` (for the provenance record)."""
    return f"cuda: {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "cpu"


class CsvLog:
    """The per-iteration CSV log. Rows are appended at each flush; the file is
    rewritten (atomically) only when a new column appears or on resume, when
    rows after the checkpoint are dropped (they are recomputed, identically)."""

    def __init__(self, path: Path, resume_at: int):
        self.path, self.rows, self.fields, self.written = path, [], [], 0
        if resume_at and path.is_file():
            with open(path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f)
                             if r.get("iteration", "").isdigit() and int(r["iteration"]) <= resume_at]
        self._rewrite()

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)

    def flush(self) -> None:
        new = self.rows[self.written:]
        if any(k not in self.fields for r in new for k in r):
            self._rewrite()
        elif new:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.fields).writerows(new)
            self.written = len(self.rows)

    def _rewrite(self) -> None:
        for r in self.rows:
            self.fields += [k for k in r if k not in self.fields]
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields)
            w.writeheader()
            w.writerows(self.rows)
        self.written = len(self.rows)


# keys that may change between an interrupted run and its resumption
RESUME_FREE_KEYS = {"num_workers", "device", "threads", "log_every", "tune_allocator", "val_every",
                    "ckpt_every", "snapshots"}
# eval keys that do not change training (inference numerics and batching only)
EVAL_RESUME_FREE_KEYS = {"precision", "window_batch"}
# keys added after runs were written, with what those runs trained with: a
# checkpoint without the key resumes under that value instead of counting as changed
# (train.data_seed: null, the older runs' behaviour, needs no entry)
ADDED_KEYS = {("train", "unlabeled_views"): "float"}


def _resume_conflict(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """The first setting that differs between a checkpoint's config and ``new``
    (precisions compare by what they run on ``new``'s device)."""
    old = copy.deepcopy(old)
    config.migrate(old)
    for (section, key), value in ADDED_KEYS.items():
        old.setdefault(section, {}).setdefault(key, value)
    for section in ("dataset", "model", "method", "train", "eval"):
        for key in sorted(set(old.get(section, {})) | set(new.get(section, {}))):
            if section == "train" and key in RESUME_FREE_KEYS or section == "eval" and key in EVAL_RESUME_FREE_KEYS:
                continue
            a, b = old.get(section, {}).get(key), new.get(section, {}).get(key)
            if section == "train" and key == "precision" and a is not None and b is not None:
                device = pick_device(new["train"]["device"])
                a, b = pick_precision(a, device).name, pick_precision(b, device).name
            if a != b:
                return f"{section}.{key}: {a!r} in the checkpoint, {b!r} now"
    return None


FAIL_ONCE_ENV = "CROSSMATCH_FAIL_ONCE"


def fail_once(marker: str | Path) -> Callable[[str, int], None]:
    """The fault-injection hook (module docstring): fail the first job that
    checkpoints while no file is at ``marker``."""
    def hook(exp: str, iteration: int) -> None:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # one job fails, even in parallel
        except FileExistsError:
            return
        os.write(fd, f"{exp} {iteration}\n".encode())
        os.close(fd)
        raise SystemExit(f"{FAIL_ONCE_ENV}: injected failure of {exp} after the checkpoint at iteration "
                         f"{iteration} (test hook)")
    return hook


HOLD_ENV = "CROSSMATCH_TEST_HOLD"


def hold_at_checkpoint(folder: str | Path) -> Callable[[str, int], None]:
    """The hold hook (module docstring): the N-th experiment to reach a checkpoint
    (N in ``folder/hold``) waits there, its state saved, until ``folder/release`` exists."""
    folder = Path(folder)

    def hook(exp: str, iteration: int) -> None:
        try:   # count each experiment once, even across processes
            os.close(os.open(folder / f"seen-{exp.replace('/', '_')}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        if len(list(folder.glob("seen-*"))) != int((folder / "hold").read_text()):
            return
        write_text(folder / "held", f"{exp} {iteration} {os.getpid()}\n")
        while not (folder / "release").exists():
            time.sleep(0.05)
    return hook


def checkpoint_hooks(env: dict[str, str]) -> Callable[[str, int], None] | None:
    """The test hooks the environment asks for (``FAIL_ONCE_ENV``, ``HOLD_ENV``), as one."""
    hooks = [make(env[key]) for key, make in ((FAIL_ONCE_ENV, fail_once), (HOLD_ENV, hold_at_checkpoint))
             if env.get(key)]
    if not hooks:
        return None

    def both(exp: str, iteration: int) -> None:
        for hook in hooks:
            hook(exp, iteration)
    return both


class Trainer:
    """One experiment's training: ``build`` (device, network, method,
    optimiser, scaler), ``load_checkpoint`` (resume), ``step`` (one
    iteration), ``validate``, ``save_checkpoint`` and ``fit`` (the loop).
    The data check (split lists, present cases) runs in ``__init__``, before
    any long work (``check_data=False``: no data, for timing ``step`` on
    synthetic batches, as benchmarks/step_benchmark.py does)."""

    def __init__(self, cfg: dict[str, Any], run_dir: str | Path,
                 on_checkpoint: Callable[[str, int], None] | None = None, check_data: bool = True,
                 restart_if_changed: bool = False):
        self.cfg, self.t, self.run_dir, self.run = cfg, cfg["train"], Path(run_dir), Run(run_dir)
        self.restart_if_changed = restart_if_changed
        self.spec, self.exp = get_spec(cfg["dataset"]["name"]), experiment_id(cfg)
        self.method_cls = get_method(cfg["method"]["name"]).load()
        self.splits = splits_for(cfg) if check_data else None
        self.on_checkpoint = on_checkpoint
        self.start, self.best, self.elapsed = 0, (-1.0, -1), 0.0
        self._tic = time.perf_counter()

    # ---------------------------------------------------------------- build and checkpoints

    def build(self) -> None:
        t = self.t
        self.device = pick_device(t["device"])
        if t["tune_allocator"] and self.device.type == "cpu":
            tune_allocator()
        if t["threads"]:
            torch.set_num_threads(t["threads"])
        seed_everything(t["seed"])
        self.model = make_model(self.cfg, self.spec).to(self.device)
        hp = {k: v for k, v in self.cfg["method"].items() if k != "name"}
        self.method = self.method_cls(self.model, self.spec, hp)
        self.method.extra.to(self.device)
        self.stages = self.method.stages(t["iterations"])  # a method's bad stage lengths stop here
        self.optimizer = make_optimizer(self.cfg, self.method.parameters())
        self.precision = pick_precision(t["precision"], self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision.scaler)
        self.gen = torch.Generator()

    def read_checkpoint(self) -> dict[str, Any] | None:
        """``latest.pt`` (on the CPU: RNG states must stay there), refused if it
        holds other settings than this config's; with ``restart_if_changed``
        (the workflow: its experiment file is the truth) the old run is moved
        to ``superseded/`` and training starts afresh."""
        for stale in self.run.checkpoints.glob(".*.tmp"):  # a save interrupted by a kill (io.atomic_path)
            stale.unlink()
        latest = self.run.checkpoint("latest")
        state = load_checkpoint(latest, "cpu", remedy=RESTART) if latest.is_file() else None
        # (an empty folder is no output: Snakemake creates checkpoints/ before the job runs)
        earlier = [p.name for p in (self.run.log, self.run.checkpoints, self.run.root / "eval")
                   if p.is_file() or p.is_dir() and any(f.is_file() for f in p.rglob("*"))]
        if state is None and earlier:   # no run to resume, yet outputs of an earlier one: never count them
            moved = self.run.supersede()
            print(f"{self.exp}: no latest.pt to resume, so training starts afresh; the earlier outputs "
                  f"({', '.join(earlier)}) moved to {moved}", flush=True)
        if state is not None and "config" in state:
            conflict = _resume_conflict(state["config"], self.cfg)
            if conflict and self.restart_if_changed:
                moved = self.run.supersede()
                print(f"{self.exp}: the settings changed ({conflict}); the old run moved to {moved}, "
                      "training afresh", flush=True)
                return None
            if conflict:
                raise ConfigError(f"{self.run_dir} holds a run with other settings ({conflict}); resume it "
                                  "with its own config (see its config.yaml), train into a new --out, or "
                                  f"delete {self.run_dir} to train it afresh with the new settings")
        return state

    def load_checkpoint(self, state: dict[str, Any]) -> None:
        """Restore a ``latest.pt`` state: weights and moments follow the model's device."""
        self.model.load_state_dict(state["model"])
        self.method.extra.load_state_dict(state.get("method", {}))
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:  # empty when the run started without AMP
            self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        self.start, self.best = state["iteration"], tuple(state["best"])
        self.elapsed = state.get("elapsed", 0.0)  # training seconds before the interruption

    def seconds(self) -> float:
        """Training seconds of the run so far, across interruptions."""
        return self.elapsed + time.perf_counter() - self._tic

    def save_checkpoint(self, kind: str, iteration: int, val_dice: float | None = None) -> Path:
        """``latest`` (resumable state), ``best`` or ``final`` (weights)."""
        path = self.run.checkpoint(kind)
        state: dict[str, Any] = {"model": self.model.state_dict(), "iteration": iteration, "experiment": self.exp}
        if kind == "latest":
            state.update(method=self.method.extra.state_dict(), optimizer=self.optimizer.state_dict(),
                         scaler=self.scaler.state_dict(), rng=_rng_state(), best=list(self.best),
                         elapsed=self.seconds(), config=self.cfg)
        elif kind == "best":
            state["val_dice"] = val_dice
        save_checkpoint(path, **state)
        return path

    # ---------------------------------------------------------------- one iteration

    def autocast(self):
        return self.precision.autocast()

    def backward(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            latest = self.run.checkpoint("latest")
            raise TrainingDiverged(
                f"{self.exp}: loss is {loss.item()} at iteration {self._it + 1}; stopped without saving. "
                f"The last good checkpoint is {latest if latest.is_file() else '(none yet)'}. "
                "Lower train.lr or check the data"
                + (" or train in fp32 (train.precision: fp32; bf16 on CPU is unstable at tiny 3D crops, "
                   "see docs/training.md)." if self.precision.name == "bf16" else "."))
        self.scaler.scale(loss).backward()

    def step(self, it: int, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Iteration ``it`` (0-based) on ``batch``: the method's losses and backward,
        the optimiser step; returns the values to log (with the learning rate)."""
        self._it = it
        lr = poly_lr(self.cfg, it)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        self.gen.manual_seed(self.t["seed"] * 1_000_003 + it)
        index, stage = self._stage(it)
        self.optimizer.zero_grad(set_to_none=True)
        ctx = StepContext(iteration=it, gen=self.gen, backward=self.backward, autocast=self.autocast,
                          iterations=self.t["iterations"], stage=stage,
                          pil_views=self.t["unlabeled_views"] == "pil")
        values = self.method.training_step(batch, ctx)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.method.after_step(ctx)
        return {"lr": lr, **values, **({"stage": index + 1} if len(self.stages) > 1 else {})}

    def _stage(self, it: int) -> tuple[int, str]:
        """The stage of iteration ``it``, (index, name); entering one after the
        first calls the method's ``begin_stage`` with the best weights so far."""
        index = max(i for i, (_, first) in enumerate(self.stages) if first <= it)
        name, first = self.stages[index]
        if index and it == first:
            best = self.run.checkpoint("best")
            weights = load_checkpoint(best, self.device, remedy=RETRAIN)["model"] if best.is_file() else None
            tqdm.write(f"{self.exp}: stage {index + 1} ({name}) from iteration {it}"
                       + (f", from the best validation so far (iteration {self.best[1]})" if weights else ""))
            self.method.begin_stage(name, weights)
        return index, name

    def validate(self) -> float:
        return validate(self.model, self.spec, self.cfg, self.splits.val, self.device)

    # ---------------------------------------------------------------- the loop

    def fit(self, stop_after: int | None = None) -> Path:
        """Train (or resume) to the end; returns ``final.pt``. ``stop_after``
        ends after that many iterations of this call (to test resuming),
        returning ``latest.pt``, without writing ``final.pt``."""
        t, run, exp = self.t, self.run, self.exp
        state = self.read_checkpoint()
        self.build()
        write_yaml(run.config, {"experiment": exp, **self.cfg, "notes": self.splits.notes,
                                "train_precision": f"{self.precision.name} on {self.device.type}",
                                "provenance": provenance.record(device=device_name(self.device))})
        if state is not None:
            self.load_checkpoint(state)
            if self.start < t["iterations"]:
                print(f"{exp}: resuming from iteration {self.start} ({run.checkpoint('latest')})", flush=True)
        if self.start >= t["iterations"] and run.checkpoint("final").is_file():
            return run.checkpoint("final")
        log = CsvLog(run.log, self.start)
        data = IterationBatches(self.splits.labeled,
                                self.splits.unlabeled if self.method_cls.info.uses_unlabeled else None,
                                t["batch_size"], tuple(t["crop"]), self.spec.n_classes,
                                t["seed"] if t["data_seed"] is None else t["data_seed"], t["interpolation"],
                                quantize=self.spec.intensity_range if t["unlabeled_views"] == "pil" else None)
        stop = t["iterations"] if stop_after is None else min(t["iterations"], self.start + stop_after)
        loader = iteration_loader(data, self.start, stop, t["num_workers"], pin_memory=self.device.type == "cuda")

        self.method.train()
        bar = tqdm(total=t["iterations"], initial=self.start, desc=exp, unit="it", dynamic_ncols=True)
        self._tic = time.perf_counter()
        try:  # close the bar on an error too, so the error message gets its own line
            for it, batch in zip(range(self.start, stop), loader):
                values = self.step(it, batch)
                done = it + 1
                row = {"iteration": done, **values, "seconds": self.seconds()}
                if t["val_every"] and (done % t["val_every"] == 0 or done == t["iterations"]):
                    row["val_dice"] = score = self.validate()
                    if t.get("snapshots"):  # for the protocol analysis, which selection never reads
                        save_checkpoint(run.snapshot(done), model=self.model.state_dict(), iteration=done,
                                        experiment=exp, val_dice=score)
                    if score > self.best[0]:
                        self.best = (score, done)
                        self.save_checkpoint("best", done, val_dice=score)
                    self.method.train()
                log.add(row)
                bar.set_postfix(loss=f"{values['loss']:.3f}", best=f"{self.best[0]:.3f}", refresh=False)
                bar.update()
                if done % t["log_every"] == 0:
                    log.flush()
                if done % t["ckpt_every"] == 0 or done == stop:
                    log.flush()
                    self.save_checkpoint("latest", done)
                    if self.on_checkpoint:
                        self.on_checkpoint(exp, done)
        finally:
            bar.close()
        log.flush()
        if stop < t["iterations"]:
            return run.checkpoint("latest")
        if not t["val_every"]:  # no validation: the final weights are the selection
            self.save_checkpoint("best", stop, val_dice=math.nan)
        return self.save_checkpoint("final", stop)


def train(cfg: dict[str, Any], run_dir: str | Path, stop_after: int | None = None,
          on_checkpoint: Callable[[str, int], None] | None = None, restart_if_changed: bool = False) -> Path:
    """Train the experiment ``cfg`` into ``run_dir`` (``Trainer.fit``, or the method's
    own runner: the authors' code); returns ``final.pt``."""
    runner = get_method(cfg["method"]["name"]).runner
    if runner:
        if stop_after is not None:
            raise ConfigError(f"--stop-after: {cfg['method']['name']} runs other code, which cannot stop and "
                              "resume within a run")
        return importlib.import_module(runner).train(cfg, run_dir, restart_if_changed=restart_if_changed)
    return Trainer(cfg, run_dir, on_checkpoint, restart_if_changed=restart_if_changed).fit(stop_after)


def validate(model: torch.nn.Module, spec: DatasetSpec, cfg: dict[str, Any], files: list[Path],
             device: torch.device) -> float:
    """Mean foreground Dice over the validation volumes (never the test set)."""
    n = cfg["eval"]["val_cases"] or len(files)
    stride = cfg["eval"].get("val_stride")
    return mean_dice(model, spec, cfg, files[:n], device, stride)
