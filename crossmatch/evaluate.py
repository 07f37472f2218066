"""Evaluation of a trained run on the test split (docs/training.md, "Evaluation protocol").

``evaluate_run(run_dir, "final" | "best")`` writes, under
``run_dir/eval/<checkpoint>/``: ``metrics_per_case.csv`` (one row per case
and class), ``summary.json`` (mean/std per class and over classes, counts of
empty masks, the checkpoint's iteration and validation score) and
``predictions/<case>.h5`` (``pred`` uint8). The test split is read here and
nowhere else; validation (model selection) uses ``mean_dice`` on the
validation split.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import yaml
from tqdm import tqdm

from .checkpoints import REWRITE_FINAL, RETRAIN, load_checkpoint
from .data.h5 import read_case
from .data.specs import DatasetSpec, get_spec
from .data.splits import case_id
from .factories import Precision, make_model, pick_device, pick_precision, splits_for
from .errors import DataError
from .inference import predict_slices_2d, sliding_window_3d
from .io import atomic_dir, atomic_path, write_json
from .layout import EVAL_CHECKPOINTS, PER_CASE, PREDICTIONS, SUMMARY, Run
from .metrics import EMPTY_POLICY, METRIC_KEYS, case_metrics, dice, summarise


def eval_precision(cfg: dict[str, Any], device: torch.device) -> Precision:
    """What inference computes in: ``eval.precision`` (``train``: the run's
    ``train.precision``) on ``device``. Run configs written before the key
    existed were evaluated in fp32."""
    name = cfg["eval"].get("precision", "fp32")
    if name == "train":
        name = cfg["train"].get("precision", "fp32")
    return pick_precision(name, device)


def predict_volume(model: torch.nn.Module, image: np.ndarray, spec: DatasetSpec, cfg: dict[str, Any],
                   device: torch.device, stride: list[int] | None = None) -> np.ndarray:
    """Label map of one case, shaped as its label: 2D slice by slice at the
    training size (a single RGB image H x W x 3 is one slice), 3D by sliding
    window (patch = training crop, stride = ``stride`` or the configured test
    stride, ``eval.window_batch`` windows per pass), softmax averaged over
    overlaps; forward passes under ``eval_precision``."""
    crop = tuple(cfg["train"]["crop"])
    autocast = eval_precision(cfg, device).autocast
    if spec.dim == 2:
        # run configs written before eval.interpolation existed were evaluated linearly
        pred = predict_slices_2d(model, image, crop, spec.n_classes, device,
                                 interpolation=cfg["eval"].get("interpolation", "linear"), autocast=autocast)
        # channels (a trailing axis) are not part of the label's shape
        return pred.reshape(image.shape[:-1] if spec.in_channels > 1 else image.shape)
    return sliding_window_3d(model, image, crop, tuple(stride or cfg["eval"]["stride"]),
                             spec.n_classes, device, batch_size=cfg["eval"].get("window_batch", 1),
                             autocast=autocast)


def mean_dice(model: torch.nn.Module, spec: DatasetSpec, cfg: dict[str, Any], files: list[Path],
              device: torch.device, stride: list[int] | None = None) -> float:
    """Mean over cases of the mean foreground Dice (the validation score)."""
    scores = []
    for path in files:
        image, label, _ = read_case(path, spec.n_classes)
        pred = predict_volume(model, image, spec, cfg, device, stride)
        scores.append(np.mean([dice(pred == c, label == c) for c in range(1, spec.n_classes)]))
    return float(np.mean(scores))


def load_run(run_dir: str | Path) -> dict[str, Any]:
    path = Run(run_dir).config
    if not path.is_file():
        raise DataError(f"{path} not found: is {run_dir} a training run directory?")
    return yaml.safe_load(path.read_text())


def evaluate_run(run_dir: str | Path, checkpoint: str = "final", device: str = "auto",
                 save_predictions: bool = True, limit: int = 0) -> dict[str, Any]:
    """Evaluate ``checkpoints/<checkpoint>.pt`` of ``run_dir`` on the test split."""
    if checkpoint not in EVAL_CHECKPOINTS:  # before the model is built (layout.Run checks it too)
        raise ValueError(f"checkpoint must be one of {EVAL_CHECKPOINTS}, got {checkpoint!r}")
    run = Run(run_dir)
    cfg = load_run(run_dir)
    ckpt_path = run.checkpoint(checkpoint)
    if not ckpt_path.is_file():
        raise DataError(f"{ckpt_path} not found: the training run is not finished "
                        "(re-run `crossmatch train` with the same arguments to resume it)")
    spec = get_spec(cfg["dataset"]["name"])
    splits = splits_for(cfg)
    files = splits.test[:limit] if limit else splits.test
    dev = pick_device(device)
    model = make_model(cfg, spec).to(dev)
    state = load_checkpoint(ckpt_path, dev, remedy=REWRITE_FINAL if checkpoint == "final" else RETRAIN)
    if state.get("experiment") and cfg.get("experiment") and state["experiment"] != cfg["experiment"]:
        raise DataError(f"{ckpt_path} holds the weights of {state['experiment']}, not of this run "
                        f"({cfg['experiment']}, {run.config}): the folder mixes two runs; train it again "
                        "into a fresh --out")
    model.load_state_dict(state["model"])
    dest = run.eval_dir(checkpoint, limited=bool(limit))
    with atomic_dir(dest) as stage:   # replaced as a whole: never old and new files mixed
        summary = _score(model, files, spec, cfg, dev, stage, checkpoint, save_predictions)
        _describe(summary, cfg, state, checkpoint, files, spec, dev, run, limit)
        write_json(stage / SUMMARY, summary)
    return summary


def _score(model: torch.nn.Module, files: list[Path], spec: DatasetSpec, cfg: dict[str, Any],
           dev: torch.device, stage: Path, checkpoint: str, save_predictions: bool) -> dict[str, Any]:
    """Predict and score every test case into ``stage``; the summary of the metrics."""
    rows: list[dict[str, Any]] = []
    for path in tqdm(files, desc=f"evaluate {checkpoint}", unit="case"):
        image, label, spacing = read_case(path, spec.n_classes)
        pred = predict_volume(model, image, spec, cfg, dev)
        case = case_id(path.name)
        for r in case_metrics(pred, label, spec.n_classes, spacing or spec.spacing):
            rows.append({"case": case, "class_name": spec.class_names[r["class"] - 1], **r})
        if save_predictions:
            with atomic_path(stage / PREDICTIONS / f"{case}.h5") as tmp, h5py.File(tmp, "w") as f:
                f.create_dataset("pred", data=pred, compression="gzip", compression_opts=1)
    with open(stage / PER_CASE, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return summarise(rows)


def _describe(summary: dict[str, Any], cfg: dict[str, Any], state: dict[str, Any], checkpoint: str,
              files: list[Path], spec: DatasetSpec, dev: torch.device, run: Run, limit: int) -> None:
    """What the summary's numbers are: the run, checkpoint, selection, split, units."""
    val = state.get("val_dice")
    summary.update({
        "experiment": cfg.get("experiment"), "checkpoint": checkpoint,
        "iteration": state.get("iteration"),
        "val_dice": None if val is None or (isinstance(val, float) and math.isnan(val)) else val,
        "selection": ("last iteration" if checkpoint == "final" else "best validation mean Dice"
                      if cfg["train"]["val_every"] else "final weights (validation disabled)"),
        "split": "test", "n_test_cases": len(files), "class_names": list(spec.class_names),
        "eval_precision": f"{eval_precision(cfg, dev).name} on {dev.type}",
        "units": {"dice": "fraction", "jaccard": "fraction", "hd95_vox": "voxel", "asd_vox": "voxel",
                  "hd95_mm": "mm", "asd_mm": "mm"},
        "spacing_known": spec.spacing is not None, "empty_policy": EMPTY_POLICY,
        "metrics": list(METRIC_KEYS),
        **({"limited": f"the first {limit} test cases only (crossmatch evaluate --limit): not counted "
                       "by any table"} if limit else {}),
    })
    if run.log.is_file():
        with open(run.log, newline="") as f:
            last = list(csv.DictReader(f))[-1]
        summary["train_seconds"] = float(last["seconds"])
        summary["seconds_per_iteration"] = float(last["seconds"]) / int(last["iteration"])
