"""Shared fixtures: a tiny synthetic preprocessed ACDC-like root (always
available) and the real data folder (tests using it skip when absent)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crossmatch.data.h5 import write_case

REPO = Path(__file__).resolve().parents[1]
SHARED = (REPO / ".." / "shared").resolve()
SHARED_DATA = SHARED / "data"
REFERENCE = SHARED / "reference" / "AiEson-CrossMatch"   # the public CrossMatch code


def phantom_2d(rng: np.random.Generator, n_slices: int = 4, size: int = 48):
    """Cardiac-like rings: LV disc (3), myocardium ring (2), RV blob (1)."""
    yy, xx = np.mgrid[:size, :size]
    image = np.zeros((n_slices, size, size), np.float32)
    label = np.zeros((n_slices, size, size), np.uint8)
    for k in range(n_slices):
        cy, cx = size / 2 + rng.uniform(-3, 3), size / 2 + rng.uniform(-3, 3)
        r = np.hypot(yy - cy, xx - cx)
        label[k][np.hypot(yy - cy, xx - cx - 11) < 6] = 1
        label[k][(r >= 6) & (r < 9)] = 2
        label[k][r < 6] = 3
        image[k] = 0.25 * label[k] + rng.normal(0, 0.05, (size, size))
    return np.clip(image, 0, 1), label


@pytest.fixture
def acdc_root(tmp_path: Path) -> dict:
    """Preprocessed-layout root with 3 train, 1 val, 1 test volumes and list
    files; returns the config ``dataset`` section that uses it."""
    return make_acdc_root(tmp_path)


def make_acdc_root(tmp_path: Path) -> dict:
    """``acdc_root`` under ``tmp_path`` (for fixtures of a wider scope)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "acdc"
    lists = {"labeled": [], "unlabeled": [], "val": [], "test": []}
    for i, role in enumerate(["labeled", "unlabeled", "unlabeled", "val", "test"]):
        case = f"patient{i:03d}_frame01"
        image, label = phantom_2d(rng)
        write_case(root / "volumes" / f"{case}.h5", image, label)
        if role in ("labeled", "unlabeled"):
            for k in range(len(image)):
                write_case(root / "slices" / f"{case}_slice_{k + 1}.h5", image[k], label[k])
                lists[role].append(f"data/slices/{case}_slice_{k + 1}.h5")
        else:
            lists[role].append(f"data/{case}.h5")
    lists["train"] = lists["labeled"] + lists["unlabeled"]
    splits = {}
    for role, entries in lists.items():
        p = root / f"{role}.txt"
        p.write_text("\n".join(entries) + "\n")
        splits[role] = str(p)
    mark_preprocessed(root, "acdc")
    return {"name": "acdc", "root": str(root), "labeled": 3, "splits": splits}


def mark_preprocessed(root: Path, dataset: str) -> None:
    """A hand-made root is complete: the manifest that `crossmatch preprocess` writes last."""
    (root / "manifest.json").write_text(f'{{"dataset": "{dataset}", "note": "written by a test fixture"}}')


def tiny_overrides(dataset: dict, **train) -> dict:
    """A config that trains in seconds on the synthetic root."""
    t = {"iterations": 4, "batch_size": 2, "crop": [32, 32], "val_every": 2, "ckpt_every": 2,
         "num_workers": 0, "lr": 0.01}
    t.update(train)
    return {"dataset": dataset, "train": t}


def train_and_evaluate_cli(cfg: dict, tmp_path: Path) -> Path:
    """``crossmatch train`` then ``crossmatch evaluate`` on ``cfg``, as a user
    runs them; returns the run folder (fails with the command's stderr)."""
    import subprocess
    import sys

    import yaml
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    for args in (["train", "--config", str(tmp_path / "exp.yaml"), "--out", str(run)],
                 ["evaluate", "--run", str(run), "--no-predictions"]):
        res = subprocess.run([sys.executable, "-m", "crossmatch", *args], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-3000:]
    return run


def _needs(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (CI has it; a fresh clone may not)")
    return path


def needs_shared_data(sub: str) -> Path:
    return _needs(SHARED_DATA / sub, "real data")


def needs_reference(sub: str) -> Path:
    return _needs(REFERENCE / sub, "reference code")


@pytest.fixture
def la_root(tmp_path: Path) -> dict:
    """A tiny 3D root (atrium-like ellipsoid blobs, 2 labeled, 2 unlabeled,
    1 val, 1 test); returns the config ``dataset`` section that uses it."""
    rng = np.random.default_rng(0)
    root = tmp_path / "la"
    zz, yy, xx = np.mgrid[:40, :36, :28]
    lists: dict[str, list[str]] = {"labeled": [], "unlabeled": [], "val": [], "test": []}
    for i, role in enumerate(["labeled", "labeled", "unlabeled", "unlabeled", "val", "test"]):
        case = f"CASE{i}"
        c = rng.uniform(12, 20, 3)
        label = (((zz - c[0]) / 9) ** 2 + ((yy - c[1]) / 7) ** 2 + ((xx - c[2]) / 6) ** 2 < 1).astype(np.uint8)
        image = label + rng.normal(0, 0.3, label.shape)
        write_case(root / "volumes" / f"{case}.h5", image, label, spacing=(0.625,) * 3)
        lists[role].append(case)
    splits = {}
    for role, entries in lists.items():
        (root / f"{role}.list").write_text("\n".join(entries) + "\n")
        splits[role] = str(root / f"{role}.list")
    mark_preprocessed(root, "la")
    return {"name": "la", "root": str(root), "labeled": 4, "splits": splits}


@pytest.fixture(scope="session")
def roots(tmp_path_factory):
    """The real ACDC and LA (present subset) preprocessed once per session
    through the CLI; the real-data tests of every method share them."""
    import subprocess
    import sys
    needs_shared_data("ACDC")
    needs_shared_data("LA")
    out = tmp_path_factory.mktemp("data")
    for args in (["--dataset", "acdc", "--raw", str(SHARED_DATA / "ACDC"), "--out", str(out / "acdc")],
                 ["--dataset", "la", "--raw", str(SHARED_DATA / "LA"), "--out", str(out / "la"),
                  "--missing-cases", "subset"]):
        res = subprocess.run([sys.executable, "-m", "crossmatch", "preprocess", *args],
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-3000:]
    return out


def pytest_collection_modifyitems(config, items):
    """Real-data tests read and preprocess ../shared/data: slow, out of the quick tier."""
    for item in items:
        if item.get_closest_marker("realdata"):
            item.add_marker(pytest.mark.slow)
