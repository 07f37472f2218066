"""Train one run with the authors' code and leave one of our run folders.

``train(cfg, run_dir)`` is what ``crossmatch train`` calls for method
``crossmatch_authors``. The budget keys of our config map onto the script's
own arguments and config file: ``train.iterations`` (steps, with the poly
rate spanning them), ``train.batch_size``, ``train.crop`` (its square
``crop_size``), ``train.lr``, ``train.seed``, ``dataset.labeled`` (its own
split lists), ``method.tau`` (``conf_thresh``), ``method.eta`` (``--eta``),
``train.num_workers`` (every loader's workers) and ``train.threads``. Its
network is ours with bilinear upsampling (``crossmatch.models.reference``):
each snapshot is mapped onto it, scored on our validation split by our
``validate`` (the authors select on validation + test; we select on
validation only, as for our runs), and written as ``checkpoints/`` of the run
folder, with ``log.csv`` and ``config.yaml``. ``crossmatch evaluate`` and
``crossmatch protocols`` then score it exactly as one of ours.

The script has no resume within an epoch: an interrupted run trains again
from the start (its finished snapshots are converted once).
"""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import yaml

from .. import provenance
from ..checkpoints import load_checkpoint, save_checkpoint
from ..config import experiment_id
from ..data.specs import get_spec
from ..errors import ConfigError, DataError
from ..factories import make_model, pick_device, splits_for
from ..io import atomic_path, write_json, write_yaml
from ..layout import Run
from ..models.reference import load_reference_state
from . import COMMIT_NOTES, COMMITS, REPOSITORY
from .code import obtain
from .shim import Spec

SCRIPT = "train_cross_match.py"
# what the script fixes, which our keys must not contradict (train_cross_match.py, both commits)
FIXED = {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-4, "nesterov": True, "poly_power": 0.9}


def check(cfg: dict[str, Any]) -> None:
    """Every key the authors' code cannot honour stops here, named."""
    t, name = cfg["train"], cfg["dataset"]["name"]
    if name != "acdc":
        raise ConfigError(f"method.name: crossmatch_authors runs the authors' ACDC code only so far; "
                          f"dataset.name is {name}")
    for key, value in FIXED.items():
        if t[key] != value:
            raise ConfigError(f"train.{key}: the authors' script fixes it to {value!r}; got {t[key]!r}")
    if t["poly_iterations"] not in (None, t["iterations"]):
        raise ConfigError("train.poly_iterations: the authors' code spans its poly rate over the whole run")
    if len(t["crop"]) != 2 or t["crop"][0] != t["crop"][1]:
        raise ConfigError(f"train.crop: the authors' code takes one square crop_size; got {t['crop']}")
    if not t["val_every"]:
        raise ConfigError("train.val_every: must be > 0 (every snapshot is a validation point)")
    if cfg["model"]["upsample"] != "bilinear" or cfg["model"]["width"] != 16:
        raise ConfigError("model: the authors' network is ours with upsample: bilinear and width: 16")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_slices(raw: Path, dest: Path, lists: list[Path]) -> Path:
    """The data layout the authors' ACDC loader reads: ``data/slices/<volume>_slice_<k>.h5``
    (slice k of a volume is its index k - 1; the lists count from 1) for every
    name in ``lists``, and ``data/<volume>.h5`` linked to each raw volume (its
    validation files). Files already there are kept; each new one is written
    atomically, so two runs may build it at once."""
    (dest / "data" / "slices").mkdir(parents=True, exist_ok=True)
    volumes = sorted(raw.glob("patient*_frame*.h5"))
    if not volumes:
        raise DataError(f"{raw}: no ACDC volumes (patientXXX_frameYY.h5); set dataset.raw")
    for v in volumes:
        link = dest / "data" / v.name
        if not link.exists():
            try:
                link.symlink_to(v.resolve())
            except FileExistsError:
                pass
    wanted: dict[str, list[int]] = {}
    for lst in lists:
        for name in filter(None, (line.strip() for line in lst.read_text().splitlines())):
            stem = Path(name).stem  # patient001_frame01_slice_3
            vol, _, k = stem.rpartition("_slice_")
            if not name.startswith("data/slices/") or not k.isdigit():
                raise DataError(f"{lst}: unexpected entry {name!r}")
            wanted.setdefault(vol, []).append(int(k))
    for vol, ks in wanted.items():
        todo = [k for k in ks if not (dest / "data" / "slices" / f"{vol}_slice_{k}.h5").is_file()]
        if not todo:
            continue
        src = raw / f"{vol}.h5"
        if not src.is_file():
            raise DataError(f"{src} not found (named by {lists[0].parent}); check dataset.raw")
        with h5py.File(src, "r") as f:
            image, label = f["image"][:], f["label"][:]
        for k in todo:
            if not 1 <= k <= image.shape[0]:
                raise DataError(f"{src}: slice {k} outside 1..{image.shape[0]}")
            with atomic_path(dest / "data" / "slices" / f"{vol}_slice_{k}.h5") as tmp, h5py.File(tmp, "w") as g:
                g.create_dataset("image", data=image[k - 1])
                g.create_dataset("label", data=label[k - 1])
    return dest


def _script_config(code: Path, cfg: dict[str, Any], data_root: Path) -> dict[str, Any]:
    """The script's own config file with our budget keys."""
    ref = yaml.safe_load((code / "ACDC" / "configs" / "acdc.yaml").read_text())
    t = cfg["train"]
    ref.update(crop_size=t["crop"][0], batch_size=t["batch_size"], lr=t["lr"],
               conf_thresh=cfg["method"]["tau"], data_root=str(data_root))
    return ref


def _convert(cfg: dict[str, Any], run: Run, raw_dir: Path) -> Path:
    """The script's snapshots -> our snapshots, best.pt (validation split only), final.pt, log.csv."""
    spec, splits, exp = get_spec("acdc"), splits_for(cfg), experiment_id(cfg)
    device = pick_device(cfg["train"]["device"])
    model = make_model(cfg, spec).to(device)
    from ..train import validate
    with open(raw_dir / "steps.csv", newline="") as f:
        steps = {int(r["iteration"]): r for r in csv.DictReader(f)}
    best, rows = (-1.0, -1), []
    for it in sorted(int(p.stem[5:]) for p in raw_dir.glob("iter_*.pt")):
        ours = run.snapshot(it)
        if ours.is_file():
            state = load_checkpoint(ours, device, remedy="delete it and re-run `crossmatch train` with the same "
                                    "arguments: it is rebuilt from the authors' snapshot")
            model.load_state_dict(state["model"])
            score = state["val_dice"]
        else:
            raw = load_checkpoint(raw_dir / f"iter_{it:05d}.pt", device,
                                  remedy=f"delete {raw_dir} and re-run `crossmatch train` with the same arguments: "
                                         "the authors' script runs again")
            load_reference_state(model, raw["model"])
            score = validate(model, spec, cfg, splits.val, device)
            save_checkpoint(ours, model=model.state_dict(), iteration=it, experiment=exp, val_dice=score)
            print(f"authors' snapshot {it}: validation Dice {score:.4f}", flush=True)
        if score > best[0]:
            best = (score, it)
            save_checkpoint(run.checkpoint("best"), model=model.state_dict(), iteration=it, experiment=exp,
                            val_dice=score)
        rows.append({"iteration": it, "lr": float(steps[it]["lr"]), "seconds": float(steps[it]["seconds"]),
                     "val_dice": score})
    with atomic_path(run.log) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["iteration", "lr", "seconds", "val_dice"])
        w.writeheader()
        w.writerows(rows)
    last = max(int(p.stem[5:]) for p in raw_dir.glob("iter_*.pt"))
    save_checkpoint(run.checkpoint("final"), model=model.state_dict(), iteration=last, experiment=exp)
    return run.checkpoint("final")


def train(cfg: dict[str, Any], run_dir: str | Path, restart_if_changed: bool = False) -> Path:
    check(cfg)
    run, exp, m, t = Run(run_dir), experiment_id(cfg), cfg["method"], cfg["train"]
    if run.checkpoint("final").is_file() and run.config.is_file():
        done = yaml.safe_load(run.config.read_text())
        if {k: done.get(k) for k in ("dataset", "method", "train", "model")} == \
                {k: cfg[k] for k in ("dataset", "method", "train", "model")}:
            return run.checkpoint("final")
        if not restart_if_changed:
            raise ConfigError(f"{run.root} holds a run with other settings; train into a new --out")
        print(f"{exp}: the settings changed; the old run moved to {run.supersede()}", flush=True)
    commit, work = m["commit"], run.root / "authors"
    code = obtain(commit, work / "code", m["code"])
    labeled = str(cfg["dataset"]["labeled"])
    lists = [code / "ACDC" / "splits" / "acdc" / labeled / f"{k}.txt" for k in ("labeled", "unlabeled")]
    if not all(p.is_file() for p in lists):
        raise ConfigError(f"dataset.labeled: the authors' code has no split lists for {labeled} labeled patients")
    data_root = build_slices(Path(cfg["dataset"]["raw"]), Path(cfg["dataset"]["root"]) / "authors_slices", lists)
    write_yaml(work / "acdc.yaml", _script_config(code, cfg, data_root.resolve()))
    device = pick_device(t["device"])
    notes = [*splits_for(cfg).notes,
             f"weights trained by {REPOSITORY}@{COMMITS[commit]} ACDC/{SCRIPT} ({COMMIT_NOTES[commit]}), "
             f"run as published{' through the CPU device shim' if device.type == 'cpu' else ''} "
             "(crossmatch/authors/shim.py); selection on our validation split and evaluation by this package",
             "train.precision, interpolation, unlabeled_views and data_seed do not apply: the script trains "
             "in fp32 with its own data pipeline and one data order for every seed"]
    from ..train import device_name
    write_yaml(run.config, {"experiment": exp, **cfg, "notes": notes, "train_precision": f"fp32 on {device.type}",
                            "provenance": provenance.record(device=device_name(device))})
    raw_dir = work / "snapshots"
    if not (raw_dir / f"iter_{t['iterations']:05d}.pt").is_file():
        for p in raw_dir.glob("*"):  # no resume within the script: start it again
            p.unlink()
        spec = Spec(script=SCRIPT, budget=t["iterations"], snapshot_every=t["val_every"], out=str(raw_dir.resolve()),
                    seed=t["seed"], threads=t["threads"], num_workers=t["num_workers"], cpu=device.type == "cpu",
                    argv=["--config", str((work / "acdc.yaml").resolve()),
                          "--labeled-id-path", f"splits/acdc/{labeled}/labeled.txt",
                          "--unlabeled-id-path", f"splits/acdc/{labeled}/unlabeled.txt",
                          "--save-path", str((work / "save").resolve()), "--eta", str(m["eta"])])
        spec_path = work / "spec.json"
        write_json(spec_path, spec.__dict__)
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0",
               "WORLD_SIZE": "1", "LOCAL_RANK": "0",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[2]),
                                                           os.environ.get("PYTHONPATH")]))}
        if t["threads"]:
            env["OMP_NUM_THREADS"] = str(t["threads"])
        print(f"{exp}: {REPOSITORY}@{commit} ACDC/{SCRIPT}, {t['iterations']} steps on {device.type}", flush=True)
        rc = subprocess.run([sys.executable, "-W", "ignore", "-m", "crossmatch.authors.shim", str(spec_path.resolve())],
                            cwd=code / "ACDC", env=env).returncode
        if rc or not (raw_dir / f"iter_{t['iterations']:05d}.pt").is_file():
            raise DataError(f"{exp}: the authors' script failed (exit status {rc}); its output is above "
                            f"(work folder {work})")
    return _convert(cfg, run, raw_dir)
