"""The papers' model-selection protocols, side by side, as an analysis after training.

Papers in this field report different checkpoints: the last one, the best on
a validation split (ours), the best on validation + test volumes (ACDC's
``valtest.txt``: UniMatch and the CrossMatch ACDC code), or the best on the
test set itself (the LA reference code, BCP), which is optimistic by
construction. To say how much of a reported number is its protocol, every
run keeps the weights of each validation point (``train.snapshots``) and
``score_run`` scores each snapshot, after training, on every validation and
test case with the test-time evaluator.

Selection never reads a test score: the trainer has chosen ``best.pt`` (on
the validation split) before this module runs, this module only reads that
choice, and it writes under ``eval/protocols/`` only, which the report
alone reads (tests/test_protocols.py checks ``best.pt`` and its evaluation
are unchanged by it).

Outputs (``crossmatch.layout.Run.protocols``): ``curve.csv`` (iteration,
split, case, Dice per foreground class and their mean) and ``summary.json``
(per protocol: its iteration, test Dice mean and per case).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .checkpoints import load_checkpoint
from .data.h5 import read_case
from .data.specs import get_spec
from .data.splits import case_id
from .errors import DataError
from .evaluate import load_run, predict_volume
from .factories import make_model, pick_device, splits_for
from .io import atomic_path, write_json
from .layout import SUMMARY, Run
from .metrics import dice

# name -> what it selects; the order is the tables'
PROTOCOLS = {
    "final": "the last iteration",
    "best_val": "the best validation mean Dice, chosen during training on the validation split only (ours)",
    "valtest": "the best mean Dice over validation + test cases (ACDC's valtest.txt: UniMatch, CrossMatch-ACDC)",
    "best_test": "the best test mean Dice during training (the LA reference code, BCP): optimistic by construction",
}
CURVE = "curve.csv"


def _snapshot_rows(model: torch.nn.Module, it: int, files: dict[str, list[Path]], spec, cfg, dev) -> list[dict]:
    rows = []
    for split, paths in files.items():
        for path in paths:
            image, label, _ = read_case(path, spec.n_classes)
            pred = predict_volume(model, image, spec, cfg, dev)
            per = [dice(pred == c, label == c) for c in range(1, spec.n_classes)]
            rows.append({"iteration": it, "split": split, "case": case_id(path.name), "dice": float(np.mean(per)),
                         **{f"dice_{n}": v for n, v in zip(spec.class_names, per)}})
    return rows


def read_curve(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as f:
        return [{**r, "iteration": int(r["iteration"]), "dice": float(r["dice"])} for r in csv.DictReader(f)]


def score_run(run_dir: str | Path, device: str = "auto") -> dict[str, Any]:
    """Score every snapshot of a finished run on its validation and test cases
    (``curve.csv``, resumed snapshot by snapshot), then choose each protocol's
    checkpoint (``summary.json``). Returns the summary."""
    run = Run(run_dir)
    cfg = load_run(run_dir)
    best_path = run.checkpoint("best")
    if not run.checkpoint("final").is_file() or not best_path.is_file():
        raise DataError(f"{run.checkpoints}: final.pt and best.pt not found; the run is not finished "
                        "(re-run `crossmatch train` with the same arguments to resume it)")
    iters = run.snapshot_iterations()
    if not iters:
        raise DataError(f"{run.snapshots}: no snapshots; the protocol analysis needs the weights of every "
                        "validation point: train with train.snapshots: true and train.val_every > 0")
    spec, splits = get_spec(cfg["dataset"]["name"]), splits_for(cfg)
    files = {"val": splits.val, "test": splits.test}
    curve_path = run.protocols / CURVE
    rows = read_curve(curve_path) if curve_path.is_file() else []
    done = {r["iteration"] for r in rows}
    dev = pick_device(device)
    model = make_model(cfg, spec).to(dev)
    for it in tqdm([i for i in iters if i not in done], desc="protocols: snapshots", unit="snapshot"):
        state = load_checkpoint(run.snapshot(it), dev)
        if state.get("experiment") not in (None, cfg.get("experiment")):
            raise DataError(f"{run.snapshot(it)} holds the weights of {state['experiment']}, not of this run "
                            f"({cfg.get('experiment')}): the folder mixes two runs; train it again into a "
                            "fresh --out")
        model.load_state_dict(state["model"])
        rows += _snapshot_rows(model, it, files, spec, cfg, dev)
        with atomic_path(curve_path) as tmp, open(tmp, "w", newline="") as f:  # one snapshot at a time
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    best_it = int(load_checkpoint(best_path)["iteration"])
    summary = choose(rows, best_it, cfg["train"]["iterations"])
    summary.update({"experiment": cfg.get("experiment"), "n_val_cases": len(files["val"]),
                    "n_test_cases": len(files["test"]), "snapshots": iters})
    write_json(run.protocols / SUMMARY, summary)
    return summary


def _first_argmax(scores: dict[int, float]) -> int:
    """The earliest iteration with the highest score (the trainer's ``>``)."""
    best = max(scores.values())
    return min(i for i, s in scores.items() if s == best)


def choose(rows: list[dict[str, Any]], best_val_iteration: int, final_iteration: int) -> dict[str, Any]:
    """Each protocol's iteration and its test Dice (mean and per case) from
    ``curve.csv`` rows. ``best_val`` is the trainer's own choice (``best.pt``),
    not recomputed here."""
    by: dict[tuple[int, str], dict[str, float]] = {}
    for r in rows:
        by.setdefault((r["iteration"], r["split"]), {})[r["case"]] = r["dice"]
    iters = sorted({i for i, _ in by})
    test = {i: float(np.mean(list(by[(i, "test")].values()))) for i in iters}
    val = {i: float(np.mean(list(by[(i, "val")].values()))) if (i, "val") in by else math.nan for i in iters}
    valtest = {i: float(np.mean(list(by.get((i, "val"), {}).values()) + list(by[(i, "test")].values())))
               for i in iters}
    chosen = {"final": final_iteration, "best_val": best_val_iteration,
              "valtest": _first_argmax(valtest), "best_test": _first_argmax(test)}
    missing = {k: i for k, i in chosen.items() if i not in test}
    if missing:
        raise DataError(f"no snapshot scored at the iterations {missing}: every validation point, the last "
                        "iteration included, needs one (train.snapshots)")
    out = {name: {"iteration": chosen[name], "test_dice": test[chosen[name]], "val_dice": val[chosen[name]],
                  "test_per_case": by[(chosen[name], "test")], "selects": PROTOCOLS[name]} for name in PROTOCOLS}
    return {"protocols": out, "gap_best_test_minus_best_val": test[chosen["best_test"]] - test[best_val_iteration],
            "curve": {"iteration": iters, "val_dice": [val[i] for i in iters], "test_dice": [test[i] for i in iters]}}
