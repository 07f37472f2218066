"""Synthetic phantoms: real raw format, real preprocessing and splits, determinism, learnability."""
from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from crossmatch import config
from crossmatch.data.h5 import read_case
from crossmatch.data.phantoms import write_phantom
from crossmatch.data.preprocess import SOURCES, preprocess
from crossmatch.data.specs import get_spec
from crossmatch.data.splits import resolve_splits
from crossmatch.evaluate import evaluate_run
from crossmatch.train import train

SMALL = {"acdc": dict(n_cases=6, size=(4, 32, 32)), "la": dict(n_cases=8, size=(24, 24, 16))}
ENTRY = {"acdc": {"train": r"data/slices/patient\d{3}_frame0[12]_slice_\d+\.h5",
                  "val": r"data/patient\d{3}_frame0[12]\.h5"},
         "la": {"train": r"[A-Z0-9]{20}", "val": r"[A-Z0-9]{20}"}}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """Both phantoms at their default sizes, preprocessed by the real pipeline."""
    out = {}
    for name in ("acdc", "la"):
        base = tmp_path_factory.mktemp(name)
        summary = write_phantom(name, base / "ph")
        preprocess(name, base / "ph" / "raw", base / "root", split_dir=base / "ph" / "splits")
        out[name] = (base, summary)
    return out


@pytest.mark.parametrize("name,counts", [("acdc", [1, 3, 7]), ("la", [4, 8])])
def test_phantom_goes_through_preprocess_and_every_written_split(phantoms, name, counts):
    base, summary = phantoms[name]
    spec = get_spec(name)
    assert summary["labeled_counts"] == counts
    assert (base / "root" / "manifest.json").is_file()
    assert json.loads((base / "ph" / "phantom.json").read_text()) == summary
    n_vol = sum(summary["n_cases"][r] for r in ("train", "test")) + (
        summary["n_cases"]["val"] if name == "acdc" else 0)   # la val is part of train
    assert len(list((base / "root" / "volumes").glob("*.h5"))) == n_vol
    per_case = 2 * summary["shape"][0] if name == "acdc" else 1    # slices of both frames
    for n in counts:
        s = resolve_splits(spec, base / "root", n, split_dir=base / "ph" / "splits")
        assert len(s.labeled) == n * per_case and s.unlabeled and s.val and s.test
        for p in (s.labeled[0], s.unlabeled[-1], s.val[0], s.test[-1]):
            _, label, _ = read_case(p, spec.n_classes)
            assert label.max() < spec.n_classes
    full = resolve_splits(spec, base / "root", "all", split_dir=base / "ph" / "splits")
    assert len(full.labeled) == (summary["n_cases"]["train"] - (0 if name == "acdc" else 2)) * (
        summary["shape"][0] if name == "acdc" else 1)


@pytest.mark.parametrize("name", ["acdc", "la"])
def test_lists_use_the_shipped_names_and_entry_formats(phantoms, name):
    base, _ = phantoms[name]
    spec = get_spec(name)
    written = {p.relative_to(base / "ph" / "splits") for p in (base / "ph" / "splits").rglob("*") if p.is_file()}
    shipped = {p.relative_to(spec.split_dir) for p in spec.split_dir.rglob("*") if p.is_file()}
    assert written <= shipped
    for rel in written:
        kind = "val" if rel.name.startswith(("val", "test")) else "train"
        lines = (base / "ph" / "splits" / rel).read_text().splitlines()
        assert lines and all(re.fullmatch(ENTRY[name][kind], x) for x in lines), rel
        shipped_first = (spec.split_dir / rel).read_text().splitlines()[0]
        assert re.fullmatch(ENTRY[name][kind], shipped_first)   # the pattern is the real one


def test_raw_files_read_like_the_real_ones(phantoms):
    acdc, la = phantoms["acdc"][0] / "ph" / "raw", phantoms["la"][0] / "ph" / "raw"
    files = sorted(acdc.glob("patient*_frame0[12].h5"))
    assert len(files) == 24 and SOURCES["acdc"](acdc, "patient001_frame02") == acdc / "patient001_frame02.h5"
    labels = set()
    for p in files[:4]:
        with h5py.File(p, "r") as f:
            assert sorted(f) == ["image", "label"] and f["image"].compression == "gzip"
            im, lb = f["image"][()], f["label"][()]
        assert im.dtype == np.float64 and lb.dtype == np.uint8 and im.ndim == 3 and im.shape == lb.shape
        assert im.min() == 0.0 and im.max() == 1.0
        labels |= set(np.unique(lb).tolist())
    assert labels == {0, 1, 2, 3}
    cases = sorted(p.parent.name for p in la.glob("*/mri_norm2.h5"))
    assert len(cases) == 14 and all(re.fullmatch(r"[A-Z0-9]{20}", c) for c in cases)
    with h5py.File(la / cases[0] / "mri_norm2.h5", "r") as f:
        assert sorted(f) == ["image", "label"] and f["label"].compression == "gzip"
        im, lb = f["image"][()], f["label"][()]
    assert im.dtype == np.float32 and lb.dtype == np.uint8 and im.shape == lb.shape == (48, 48, 40)
    assert abs(float(im.mean())) < 1e-3 and abs(float(im.std()) - 1) < 1e-3
    assert set(np.unique(lb).tolist()) == {0, 1} and 0.02 < lb.mean() < 0.2
    assert im[lb == 1].mean() > im[lb == 0].mean() + 1


@pytest.mark.parametrize("name", ["acdc", "la"])
def test_same_seed_same_bytes_other_seed_differs(tmp_path, name):
    sums = [write_phantom(name, tmp_path / d, seed=s, **SMALL[name]) for d, s in (("a", 0), ("b", 0), ("c", 1))]
    assert sums[0]["cases"] == sums[1]["cases"]
    raw = [tmp_path / d / "raw" for d in "abc"]
    files = sorted(p.relative_to(raw[0]) for p in raw[0].rglob("*.h5"))
    assert files == sorted(p.relative_to(raw[1]) for p in raw[1].rglob("*.h5"))
    for rel in files:
        with h5py.File(raw[0] / rel) as f, h5py.File(raw[1] / rel) as g:
            assert f["image"][()].tobytes() == g["image"][()].tobytes()
            assert f["label"][()].tobytes() == g["label"][()].tobytes()
    for d in (tmp_path / "a" / "splits").rglob("*"):
        if d.is_file():
            assert d.read_bytes() == (tmp_path / "b" / "splits" / d.relative_to(tmp_path / "a" / "splits")).read_bytes()
    with h5py.File(sorted(raw[0].rglob("*.h5"))[0]) as f, h5py.File(sorted(raw[2].rglob("*.h5"))[0]) as g:
        assert not np.array_equal(f["image"][()], g["image"][()])
    if name == "la":                              # case ids are drawn from the seed too
        assert set(sums[0]["cases"]["train"]).isdisjoint(sums[2]["cases"]["train"])
    assert not list(tmp_path.rglob("*.tmp"))      # atomic writes leave no temporaries


def test_too_few_cases_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 4 patients"):
        write_phantom("acdc", tmp_path / "a", n_cases=3)
    with pytest.raises(ValueError, match="no room"):
        write_phantom("la", tmp_path / "l", n_cases=6)
    s = write_phantom("acdc", tmp_path / "hw", n_cases=4, size=(32, 32))   # (H, W): 6 slices
    assert s["shape"] == [6, 32, 32] and s["labeled_counts"] == [1]


def _learn(tmp_path: Path, name: str, phantom: dict, labeled: int, train_cfg: dict, eval_cfg: dict) -> float:
    write_phantom(name, tmp_path / "ph", **phantom)
    preprocess(name, tmp_path / "ph" / "raw", tmp_path / "root", split_dir=tmp_path / "ph" / "splits")
    raw = {"dataset": {"name": name, "root": str(tmp_path / "root"), "labeled": labeled,
                       "split_dir": str(tmp_path / "ph" / "splits")},
           "method": {"name": "supervised"},
           "train": {"optimizer": "adamw", "val_every": 0, "num_workers": 0, "threads": 1,
                     "ckpt_every": train_cfg["iterations"], **train_cfg},
           "eval": eval_cfg}
    threads = torch.get_num_threads()
    try:
        train(config.resolve(raw), tmp_path / "run")         # sets torch to 1 thread
        return evaluate_run(tmp_path / "run", "final", "cpu")["mean"]["dice"]["mean"]
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_2d_phantom_is_learnable(tmp_path):
    # measured 0.82-0.87 over phantom seeds 0-2 (chance, all one class: < 0.1)
    dice = _learn(tmp_path, "acdc", dict(n_cases=6, size=(6, 32, 32)), 3,
                  dict(iterations=100, batch_size=4, crop=[32, 32], lr=2e-3), {})
    assert dice > 0.6


@pytest.mark.slow
def test_3d_phantom_is_learnable(tmp_path):
    # 30 iterations: one training seed is noisy (measured 0.47 / 0.58 / 0.82 over
    # training seeds 0-2, mean 0.62; chance, all foreground: about 0.1), so the mean is tested
    dice = [_learn(tmp_path / f"s{seed}", "la", dict(n_cases=8, size=(40, 40, 32)), 4,
                   dict(iterations=30, batch_size=2, crop=[32, 32, 16], lr=2e-3, seed=seed), {"stride": [16, 16, 16]})
            for seed in range(3)]
    assert np.mean(dice) > 0.5 and min(dice) > 0.3, dice
