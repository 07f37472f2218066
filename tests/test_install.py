"""The package as a user installs it, not as the checkout runs it: a wheel
built from the checkout, installed on its own (no editable link back to the
checkout), runs phantom -> preprocess -> train from an unrelated working
directory. Guards the package data (the shipped split lists) and any path
that leans on the checkout's layout."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel's files installed into a folder of their own (--target)."""
    tmp = tmp_path_factory.mktemp("wheel")
    try:  # build with the installed setuptools when it can make wheels itself (>= 70.1)
        import setuptools
        own = tuple(int(x) for x in setuptools.__version__.split(".")[:2]) >= (70, 1)
    except (ImportError, ValueError):
        own = False
    isolation = ["--no-build-isolation"] if own else []
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", *isolation, "-w", str(tmp / "dist"),
         str(REPO)], cwd=tmp)
    (wheel,) = (tmp / "dist").glob("crossmatch_repro-*.whl")
    run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(tmp / "site"),
         str(wheel)], cwd=tmp)
    return tmp / "site"


def test_wheel_ships_the_split_lists(installed: Path) -> None:
    shipped = {p.relative_to(REPO / "crossmatch").as_posix() for p in (REPO / "crossmatch/splits").rglob("*")
               if p.is_file()}
    wheel = {p.relative_to(installed / "crossmatch").as_posix() for p in (installed / "crossmatch/splits").rglob("*")
             if p.is_file()}
    assert shipped and wheel == shipped


def test_installed_package_trains_from_another_directory(installed: Path, tmp_path: Path) -> None:
    # the installed copy, not the checkout: PYTHONPATH comes before the editable install
    env = {**os.environ, "PYTHONPATH": str(installed)}
    py = [sys.executable, "-m", "crossmatch"]
    where = run([sys.executable, "-c", "import crossmatch; print(crossmatch.__file__)"], tmp_path, env)
    assert Path(where.stdout.strip()).is_relative_to(installed), where.stdout
    run([*py, "phantom", "--dataset", "acdc", "--out", "ph", "--cases", "6"], tmp_path, env)
    # the phantom's own split lists (written beside it) ...
    sets = ["--set", "dataset.root=data", "--set", "dataset.labeled=1", "--set", "train.iterations=2",
            "--set", "train.batch_size=2", "--set", "train.crop=[32,32]", "--set", "train.val_every=0",
            "--set", "train.num_workers=0"]
    run([*py, "preprocess", "--dataset", "acdc", "--raw", "ph/raw", "--out", "data", "--split-dir", "ph/splits"],
        tmp_path, env)
    r = run([*py, "train", *sets, "--set", "dataset.split_dir=ph/splits", "--out", "run"], tmp_path, env)
    assert (tmp_path / "run/checkpoints/final.pt").is_file(), r.stdout[-1000:]
    # ... and the standard lists shipped in the wheel (ACDC: 100 patients x 2 frames), read
    # from the installed package: 12 of their 200 volumes are the phantom's
    r = subprocess.run([*py, "train", *sets, "--out", "run2"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600, env=env)
    assert r.returncode == 2 and "188 of 200 cases named in the split lists are missing" in r.stderr, \
        r.stderr[-2000:]
