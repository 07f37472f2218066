"""Where things live: the one definition of a run folder's layout and of the
workflow's results tree. Training, evaluation, the report and the Snakemake
rules ask here instead of spelling paths (no torch: the workflow imports it).

A run folder (``<results>/runs/<experiment id>/``)::

  experiment.yaml          the resolved config the workflow's train job reads
  config.yaml              what the trainer resolved (with the experiment id and notes)
  log.csv                  one row per iteration: lr, every loss term, mask ratio, val score
  checkpoints/latest.pt    resumable state (weights, method extras, optimiser, scaler, RNG, iteration)
  checkpoints/best.pt      weights with the best validation Dice so far
  checkpoints/final.pt     weights after the last iteration (written last: the run is done)
  eval/<checkpoint>/       summary.json, metrics_per_case.csv, predictions/<case>.h5 (replaced whole)
  eval/limited/<checkpoint>/  the same for `crossmatch evaluate --limit N` (part of the test split)
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

EVAL_CHECKPOINTS = ("final", "best")   # what `crossmatch evaluate` scores on the test split
SUMMARY, PER_CASE, PREDICTIONS = "summary.json", "metrics_per_case.csv", "predictions"   # in eval/<checkpoint>/


def run_dir(results: str | Path, exp: str) -> Path:
    """The run folder of experiment ``exp`` under the workflow's results folder."""
    return Path(results) / "runs" / exp


@dataclass(frozen=True)
class Run:
    """The paths of one run folder."""
    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    @property
    def experiment(self) -> Path:
        return self.root / "experiment.yaml"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def log(self) -> Path:
        return self.root / "log.csv"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, name: str) -> Path:
        """``latest``, ``best`` or ``final``."""
        return self.checkpoints / f"{name}.pt"

    @property
    def snapshots(self) -> Path:
        return self.checkpoints / "snapshots"

    def snapshot(self, iteration: int) -> Path:
        return self.snapshots / f"iter_{iteration:06d}.pt"

    def snapshot_iterations(self) -> list[int]:
        """The iterations that have a snapshot, ascending."""
        return sorted(int(p.stem[5:]) for p in self.snapshots.glob("iter_*.pt")) if self.snapshots.is_dir() else []

    @property
    def protocols(self) -> Path:
        return self.root / "eval" / "protocols"

    def supersede(self) -> Path:
        """Move the trained state (checkpoints, log, evaluations) to
        ``superseded/<UTC time>/``, leaving the folder empty for a fresh run."""
        dest = self.root / "superseded" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dest.mkdir(parents=True, exist_ok=True)
        for path in (self.checkpoints, self.log, self.config, self.root / "eval"):
            if path.exists():
                path.rename(dest / path.name)
        return dest

    def eval_dir(self, checkpoint: str, limited: bool = False) -> Path:
        """``eval/<checkpoint>``; an evaluation on part of the test split
        (``--limit``) goes to ``eval/limited/<checkpoint>``, never counted."""
        if checkpoint not in EVAL_CHECKPOINTS:
            raise ValueError(f"checkpoint must be one of {EVAL_CHECKPOINTS}, got {checkpoint!r}")
        return self.root / "eval" / ("limited" if limited else "") / checkpoint

    def summary(self, checkpoint: str) -> Path:
        return self.eval_dir(checkpoint) / SUMMARY

    def per_case(self, checkpoint: str) -> Path:
        return self.eval_dir(checkpoint) / PER_CASE

    def prediction(self, checkpoint: str, case: str) -> Path:
        return self.eval_dir(checkpoint) / PREDICTIONS / f"{case}.h5"

    @classmethod
    def of_summary(cls, path: str | Path) -> tuple["Run", str]:
        """The run and checkpoint (or ``protocols``) a ``summary.json`` path belongs to."""
        path = Path(path)
        run, checkpoint = cls(path.parents[2]), path.parent.name
        if checkpoint == "protocols" and run.protocols / SUMMARY == path:
            return run, checkpoint
        if checkpoint not in EVAL_CHECKPOINTS or run.summary(checkpoint) != path:
            raise ValueError(f"{path} is not a run's eval/<checkpoint>/summary.json")
        return run, checkpoint
