"""SimCVD: signed distance maps, EMA teacher, InfoNCE, resume, config checks,
and a short real-data run on LA through the command line."""
import contextlib
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.spatial import cKDTree

from crossmatch import config
from crossmatch.data.specs import get_spec
from crossmatch.errors import ConfigError
from crossmatch.methods.base import StepContext
from crossmatch.methods.mean_teacher import ema_decay
from crossmatch.methods.simcvd import SimCVD, info_nce
from crossmatch.models import build_model
from crossmatch.sdm import signed_distance_map
from crossmatch.train import train

from conftest import tiny_overrides


def test_sdm_of_a_sphere_is_the_normalised_exact_distance():
    grid = np.indices((33, 33, 33)).reshape(3, -1).T
    mask = (np.linalg.norm(grid - 16, axis=1) <= 9).reshape(33, 33, 33)
    sdm = signed_distance_map(np.stack([mask, np.zeros_like(mask)]).astype(np.uint8))
    s = sdm[0]
    # boundary: object voxels with a background face neighbour
    pad = np.pad(mask, 1)
    bg_neighbour = np.zeros_like(mask)
    for axis in range(3):
        for shift in (-1, 1):
            bg_neighbour |= ~np.roll(pad, shift, axis)[1:-1, 1:-1, 1:-1]
    boundary = mask & bg_neighbour
    assert (s[boundary] == 0).all()
    assert (s[mask & ~boundary] < 0).all() and (s[~mask] > 0).all()
    assert np.abs(s).max() <= 1 and s.min() == -1 and s.max() == 1
    # exact Euclidean distances (brute force nearest neighbours), up to each side's maximum
    flat_mask = mask.ravel()
    out_d = cKDTree(grid[flat_mask]).query(grid[~flat_mask])[0]
    in_d = cKDTree(grid[~flat_mask]).query(grid[flat_mask])[0]
    np.testing.assert_allclose(s.ravel()[~flat_mask], out_d / out_d.max(), atol=1e-6)
    interior = ~boundary.ravel()[flat_mask]
    np.testing.assert_allclose(s.ravel()[flat_mask][interior], -in_d[interior] / in_d.max(), atol=1e-6)
    # the zero level is the sphere: |SDM| is small within a voxel of radius 9
    r = np.linalg.norm(grid - 16, axis=1).reshape(mask.shape)
    assert np.abs(s[(r > 8) & (r < 10)]).max() <= 1.5 / in_d.max()
    assert (sdm[1] == 1).all()  # no object: everything is far outside


def _method(seed=0):
    torch.manual_seed(seed)
    model = build_model(3, 1, 2)
    method = SimCVD(model, get_spec("la"), SimCVD.hyperparameters("la", {"n_voxels": 64}))
    method.train()
    return method


def _batch():
    g = torch.Generator().manual_seed(0)
    y = torch.zeros(1, 16, 16, 16, dtype=torch.long)
    y[:, 4:12, 3:10, 5:13] = 1
    return {"x": torch.randn(1, 1, 16, 16, 16, generator=g) + y[:, None], "y": y,
            "u": torch.randn(1, 1, 16, 16, 16, generator=g), "u_mix": torch.zeros(1, 1, 16, 16, 16)}


def test_teacher_is_the_ema_of_the_student_and_not_optimised():
    method = _method()
    teacher = list(method.extra["teacher"].parameters())
    student = list(method._student().parameters())
    assert len(teacher) == len(student)
    assert all(torch.equal(t, s) for t, s in zip(teacher, student))  # starts as a copy
    assert not any(t.requires_grad for t in teacher)
    optimised = {id(p) for p in method.parameters()}
    assert not optimised & {id(t) for t in teacher}
    assert {id(p) for p in method.extra["sdm"].parameters()} <= optimised
    assert {id(p) for p in method.extra["proj"].parameters()} <= optimised

    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    for iteration in (0, 5000):  # decay 1 - 1/2 after the first step, the 0.999 ceiling later
        before = [t.clone() for t in teacher]
        ctx = StepContext(iteration, torch.Generator().manual_seed(1),
                          lambda loss: loss.backward(), contextlib.nullcontext)
        opt.zero_grad()
        logs = method.training_step(_batch(), ctx)
        assert np.isfinite(logs["loss"]) and {"sup", "sdm", "contrast", "pd", "cons"} <= set(logs)
        opt.step()
        method.after_step(ctx)
        a = ema_decay(iteration, 0.999)
        assert a == (0.5 if iteration == 0 else 0.999)
        moved = 0
        for t, b, s in zip(teacher, before, student):
            torch.testing.assert_close(t, a * b + (1 - a) * s, rtol=0, atol=1e-6)
            moved += not torch.equal(t, b)
        assert moved > 0


def test_info_nce_is_lower_for_identical_views_than_for_shuffled_ones():
    g = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(256, 32, generator=g), dim=1)
    view = torch.nn.functional.normalize(z + 0.1 * torch.randn(256, 32, generator=g), dim=1)
    shuffled = view[torch.randperm(256, generator=g)]
    assert info_nce(z, z, 0.5) < info_nce(z, view, 0.5) < info_nce(z, shuffled, 0.5)


@pytest.mark.slow
def test_killed_and_resumed_run_equals_uninterrupted(la_root, tmp_path):
    raw = tiny_overrides(la_root, iterations=5, ckpt_every=2, val_every=0, crop=[32, 16, 16], lr=0.001)
    raw["method"] = {"name": "simcvd", "n_voxels": 128, "ramp_length": 4}
    cfg = config.resolve(raw)
    train(cfg, tmp_path / "full")
    train(cfg, tmp_path / "cut", stop_after=3)   # killed after iteration 3; checkpoint at 2
    (tmp_path / "cut" / "checkpoints" / "latest.pt").unlink()
    train(cfg, tmp_path / "cut", stop_after=2)   # from scratch to checkpoint 2
    train(cfg, tmp_path / "cut")                  # resume 2 -> 5
    a, b = (torch.load(tmp_path / r / "checkpoints" / "latest.pt", weights_only=False)
            for r in ("full", "cut"))
    assert a["iteration"] == b["iteration"] == 5
    for part in ("model", "method"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    assert {k.split(".")[0] for k in a["method"]} == {"sdm", "proj", "teacher"}
    assert any(k.startswith("teacher.net.") for k in a["method"])
    log_a, log_b = (pd.read_csv(tmp_path / r / "log.csv") for r in ("full", "cut"))
    assert list(log_b["iteration"]) == list(range(1, 6))
    pd.testing.assert_series_equal(log_a["loss"], log_b["loss"])
    pd.testing.assert_series_equal(log_a["contrast"], log_b["contrast"])


@pytest.mark.parametrize("override,message", [
    (["method.name=simcvd"], "method.name: simcvd supports 3D datasets only; acdc is 2D"),
    (["dataset.name=la", "method.name=simcvd", "method.temperature=0"], "method.temperature must be > 0"),
    (["dataset.name=la", "method.name=simcvd", "method.boundary_fraction=1.5"], "method.boundary_fraction"),
    (["dataset.name=la", "method.name=simcvd", "method.n_voxels=1"], "method.n_voxels must be >= 2"),
    (["dataset.name=la", "method.name=simcvd", "method.ema_decay=1.0"], "method.ema_decay must be in"),
    (["dataset.name=la", "method.name=simcvd", "method.lambda=-1"], "method.lambda must be >= 0"),
])
def test_bad_simcvd_config_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        config.load(None, override)


def test_simcvd_config_defaults_and_id():
    cfg = config.load(None, ["dataset.name=la", "method.name=simcvd", "method.lambda=0.3"])
    m = cfg["method"]
    assert (m["alpha"], m["beta"], m["gamma"], m["temperature"], m["ema_decay"]) == (0.1, 0.1, 0.1, 0.5, 0.999)
    assert config.experiment_id(cfg) == "la/simcvd/l8/lambda0.3/s0"


def _cli(*args: str) -> str:
    res = subprocess.run([sys.executable, "-m", "crossmatch", *args], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


@pytest.mark.realdata
def test_la_short_simcvd_run_writes_metrics(roots, tmp_path):
    root, run = roots / "la", tmp_path / "run"
    _cli("train", "--out", str(run), "--set", "dataset.name=la", "--set", f"dataset.root={root}",
         "--set", "dataset.labeled=4", "--set", "dataset.missing_cases=subset", "--set", "method.name=simcvd",
         "--set", "train.iterations=2", "--set", "train.crop=[32,32,32]", "--set", "train.val_every=2",
         "--set", "eval.val_cases=1", "--set", "eval.stride=[32,32,32]", "--set", "eval.val_stride=[32,32,32]")
    log = pd.read_csv(run / "log.csv")
    assert len(log) == 2 and log[["loss", "sdm", "contrast", "pd", "cons"]].notna().all().all()
    _cli("evaluate", "--run", str(run), "--limit", "1", "--checkpoint", "final")
    rows = pd.read_csv(run / "eval" / "limited" / "final" / "metrics_per_case.csv")
    assert len(rows) == 1 and rows.loc[0, "class_name"] == "LA" and rows["dice"].between(0, 1).all()
    s = json.loads((run / "eval" / "limited" / "final" / "summary.json").read_text())
    assert s["experiment"].startswith("la/simcvd/l4/")
