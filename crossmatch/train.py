"""The one trainer every method shares.

It owns the optimiser and poly schedule, AMP, deterministic seeding, the
progress bar, the CSV log, validation with best-on-validation selection,
checkpoints and resume. It writes ``config.yaml``, ``log.csv`` and
``checkpoints/{latest,best,final}.pt`` of the run folder (``crossmatch.layout``).

A re-run of the same command resumes from ``latest.pt``; batch ``t`` and its
augmentations are a function of (seed, t), and the RNG states are restored,
so the resumed run ends with the same weights as an uninterrupted one.

Test hook (fault injection, never set in normal use): with the environment
variable ``CROSSMATCH_FAIL_ONCE=<marker path>`` set and no file at that path,
the trainer creates the marker right after its first ``latest.pt`` and exits
with status 1, as a crashed job would; once the marker exists the variable
has no effect, so a retried or re-run job resumes and completes
(tests/test_faults.py uses it to check Snakemake's ``retries``).
"""
from __future__ import annotations

import contextlib
import csv
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .config import experiment_id
from .layout import Run
from .data.batches import IterationBatches, iteration_loader
from .data.specs import DatasetSpec, get_spec
from .data.splits import Splits, resolve_splits
from .errors import ConfigError, TrainingDiverged
from .evaluate import mean_dice
from .io import atomic_path, write_yaml
from .methods import get_method
from .methods.base import StepContext
from .models import build_model
from .runtime import tune_allocator


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name} requested but CUDA is not available; use auto or cpu")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_model(cfg: dict[str, Any], spec: DatasetSpec) -> torch.nn.Module:
    model = build_model(spec.dim, spec.in_channels, spec.n_classes, **cfg["model"])
    if spec.dim == 2:
        # NHWC convolutions are ~20 % faster with oneDNN on CPU and fine on CUDA
        model = model.to(memory_format=torch.channels_last)
    return model


def make_optimizer(cfg: dict[str, Any], params) -> torch.optim.Optimizer:
    t = cfg["train"]
    if t["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=t["lr"], momentum=t["momentum"], weight_decay=t["weight_decay"],
                               nesterov=t["nesterov"])
    return torch.optim.AdamW(params, lr=t["lr"], weight_decay=t["weight_decay"])


def poly_lr(cfg: dict[str, Any], it: int) -> float:
    t = cfg["train"]
    return t["lr"] * (1 - it / t["poly_iterations"]) ** t["poly_power"]


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, **state: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


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
                    "ckpt_every"}


def _resume_conflict(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """The first setting that differs between a checkpoint's config and ``new``."""
    for section in ("dataset", "model", "method", "train", "eval"):
        for key in sorted(set(old.get(section, {})) | set(new.get(section, {}))):
            if section == "train" and key in RESUME_FREE_KEYS:
                continue
            a, b = old.get(section, {}).get(key), new.get(section, {}).get(key)
            if a != b:
                return f"{section}.{key}: {a!r} in the checkpoint, {b!r} now"
    return None


FAIL_ONCE_ENV = "CROSSMATCH_FAIL_ONCE"


def _fail_once(exp: str, iteration: int) -> None:
    """The fault-injection test hook (module docstring): fail the first job
    that checkpoints while ``$CROSSMATCH_FAIL_ONCE`` names an absent file."""
    marker = os.environ.get(FAIL_ONCE_ENV)
    if not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # one job fails, even in parallel
    except FileExistsError:
        return
    os.write(fd, f"{exp} {iteration}\n".encode())
    os.close(fd)
    raise SystemExit(f"{FAIL_ONCE_ENV}: injected failure of {exp} after the checkpoint at iteration "
                     f"{iteration} (test hook)")


def splits_for(cfg: dict[str, Any]) -> Splits:
    """The experiment's splits (one place decides them for training and evaluation)."""
    d = cfg["dataset"]
    return resolve_splits(get_spec(d["name"]), d["root"], d["labeled"], d["missing_cases"], d["splits"],
                          d.get("split_dir") or None)


def train(cfg: dict[str, Any], run_dir: str | Path, stop_after: int | None = None) -> Path:
    """Train the experiment ``cfg`` into ``run_dir``; returns ``final.pt``.

    Resumes from ``run_dir/checkpoints/latest.pt`` when it exists.
    ``stop_after`` ends the process after that many iterations of this
    call (used to test resuming) without writing ``final.pt``.
    """
    run_dir = Path(run_dir)
    run = Run(run_dir)
    spec = get_spec(cfg["dataset"]["name"])
    t = cfg["train"]
    exp = experiment_id(cfg)
    # check data before any long work: list files, presence, subset policy
    method_cls = get_method(cfg["method"]["name"]).load()
    splits = splits_for(cfg)
    for stale in run.checkpoints.glob(".*.tmp"):  # a save interrupted by a kill (crossmatch.io.atomic_path)
        stale.unlink()
    latest, final = run.checkpoint("latest"), run.checkpoint("final")
    state = torch.load(latest, map_location="cpu", weights_only=False) if latest.is_file() else None
    if state is not None and "config" in state:
        conflict = _resume_conflict(state["config"], cfg)
        if conflict:
            raise ConfigError(f"{run_dir} holds a run with other settings ({conflict}); resume it with "
                              "its own config (see its config.yaml), train into a new --out, or delete "
                              f"{run_dir} to train it afresh with the new settings")
    write_yaml(run.config, {"experiment": exp, **cfg, "notes": splits.notes})

    device = pick_device(t["device"])
    if t["tune_allocator"] and device.type == "cpu":
        tune_allocator()
    if t["threads"]:
        torch.set_num_threads(t["threads"])
    seed_everything(t["seed"])
    model = make_model(cfg, spec).to(device)
    hp = {k: v for k, v in cfg["method"].items() if k != "name"}
    method = method_cls(model, spec, hp)
    method.extra.to(device)
    optimizer = make_optimizer(cfg, method.parameters())
    use_amp = bool(t["amp"]) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start, best, elapsed = 0, (-1.0, -1), 0.0
    if state is not None:
        # loaded on the CPU: RNG states must stay there; weights and moments follow the model
        model.load_state_dict(state["model"])
        method.extra.load_state_dict(state.get("method", {}))
        optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:  # empty when the run started without AMP
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        start, best = state["iteration"], tuple(state["best"])
        elapsed = state.get("elapsed", 0.0)  # training seconds before the interruption
        if start < t["iterations"]:
            print(f"{exp}: resuming from iteration {start} ({latest})", flush=True)
    if start >= t["iterations"] and final.is_file():
        return final
    log = CsvLog(run.log, start)

    data = IterationBatches(splits.labeled, splits.unlabeled if method_cls.info.uses_unlabeled else None,
                            t["batch_size"], tuple(t["crop"]), spec.n_classes, t["seed"],
                            t["interpolation"])
    stop = t["iterations"] if stop_after is None else min(t["iterations"], start + stop_after)
    loader = iteration_loader(data, start, stop, t["num_workers"])
    gen = torch.Generator()

    def autocast():
        return torch.autocast("cuda", dtype=torch.float16) if use_amp else contextlib.nullcontext()

    it = start

    def backward(loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"{exp}: loss is {loss.item()} at iteration {it + 1}; stopped without saving. "
                f"The last good checkpoint is {latest if latest.is_file() else '(none yet)'}. "
                "Lower train.lr or check the data.")
        scaler.scale(loss).backward()

    def save_latest(iteration: int) -> None:
        save_checkpoint(latest, model=model.state_dict(), method=method.extra.state_dict(),
                        optimizer=optimizer.state_dict(), scaler=scaler.state_dict(), rng=_rng_state(), iteration=iteration,
                        best=list(best), experiment=exp, elapsed=elapsed + time.perf_counter() - tic,
                        config=cfg)

    method.train()
    bar = tqdm(total=t["iterations"], initial=start, desc=exp, unit="it", dynamic_ncols=True)
    tic = time.perf_counter()
    try:  # close the bar on an error too, so the error message gets its own line
        for it, batch in zip(range(start, stop), loader):
            lr = poly_lr(cfg, it)
            for g in optimizer.param_groups:
                g["lr"] = lr
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            gen.manual_seed(t["seed"] * 1_000_003 + it)
            optimizer.zero_grad(set_to_none=True)
            ctx = StepContext(iteration=it, gen=gen, backward=backward, autocast=autocast)
            values = method.training_step(batch, ctx)
            scaler.step(optimizer)
            scaler.update()
            method.after_step(ctx)
            done = it + 1
            row = {"iteration": done, "lr": lr, **values, "seconds": elapsed + time.perf_counter() - tic}
            if t["val_every"] and (done % t["val_every"] == 0 or done == t["iterations"]):
                score = validate(model, spec, cfg, splits.val, device)
                row["val_dice"] = score
                if score > best[0]:
                    best = (score, done)
                    save_checkpoint(run.checkpoint("best"), model=model.state_dict(), iteration=done,
                                    val_dice=score, experiment=exp)
                method.train()
            log.add(row)
            bar.set_postfix(loss=f"{values['loss']:.3f}", best=f"{best[0]:.3f}", refresh=False)
            bar.update()
            if done % t["log_every"] == 0:
                log.flush()
            if done % t["ckpt_every"] == 0 or done == stop:
                log.flush()
                save_latest(done)
                _fail_once(exp, done)
    finally:
        bar.close()
    log.flush()
    if stop < t["iterations"]:
        return latest
    if not t["val_every"]:  # no validation: the final weights are the selection
        save_checkpoint(run.checkpoint("best"), model=model.state_dict(), iteration=stop,
                        val_dice=math.nan, experiment=exp)
    save_checkpoint(final, model=model.state_dict(), iteration=stop, experiment=exp)
    return final


def validate(model: torch.nn.Module, spec: DatasetSpec, cfg: dict[str, Any], files: list[Path],
             device: torch.device) -> float:
    """Mean foreground Dice over the validation volumes (never the test set)."""
    n = cfg["eval"]["val_cases"] or len(files)
    stride = cfg["eval"].get("val_stride")
    return mean_dice(model, spec, cfg, files[:n], device, stride)
