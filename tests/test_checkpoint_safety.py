"""No code runs from a checkpoint (issue 30): every load is torch's
``weights_only`` (crossmatch.checkpoints.load_checkpoint), a checkpoint that
holds a pickled Python object is refused with one line naming it, before the
object is built; a truncated one stops with one line too; checkpoints hold
plain data only, and a ``latest.pt`` written before that (numpy's RNG state
as an array) still resumes exactly."""
from __future__ import annotations

import pickle
import random
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from crossmatch import config
from crossmatch.checkpoints import load_checkpoint, save_checkpoint
from crossmatch.errors import DataError
from crossmatch.evaluate import evaluate_run
from crossmatch.layout import Run
from crossmatch.protocols import score_run
from crossmatch.train import Trainer, _rng_state, _set_rng_state, train

from conftest import make_acdc_root, tiny_overrides


class Payload:
    """Unpickling this runs code: it creates the file ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def plant(path, marker) -> None:
    """Add a ``Payload`` to the real checkpoint at ``path``."""
    state = torch.load(path, weights_only=True)
    state["note"] = Payload(marker)
    torch.save(state, path)


def truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def cli(*args):
    return subprocess.run([sys.executable, "-m", "crossmatch", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished tiny run (latest, best, final, snapshots), trained once; its raw config."""
    base = tmp_path_factory.mktemp("checkpoints")
    raw = tiny_overrides(make_acdc_root(base), iterations=2, snapshots=True)
    raw["method"] = {"name": "supervised"}
    train(config.resolve(raw), base / "run")
    return raw, base / "run"


@pytest.fixture
def run(finished, tmp_path):
    """A copy of the finished run, to damage: (config, run folder)."""
    raw, src = finished
    shutil.copytree(src, tmp_path / "run")
    return config.resolve(raw), tmp_path / "run"


def test_the_payload_runs_code_under_a_plain_pickle_load(run, tmp_path):
    """The test's payload is real: torch.load(weights_only=False) runs it."""
    _, folder = run
    final = Run(folder).checkpoint("final")
    plant(final, tmp_path / "ran")
    torch.load(final, weights_only=False)
    assert (tmp_path / "ran").is_file()


def test_crossmatch_evaluate_refuses_a_payload_in_one_line(run, tmp_path):
    _, folder = run
    final, marker = Run(folder).checkpoint("final"), tmp_path / "PWNED"
    plant(final, marker)
    res = cli("evaluate", "--run", folder, "--checkpoint", "final", "--no-predictions", "--device", "cpu")
    assert res.returncode == 2
    assert res.stderr.splitlines() == [   # one line, no traceback
        f"error: {final}: refused: it holds pickled Python objects (exec), which could run code when "
                    "loaded (torch.load weights_only); crossmatch never writes them. Only load checkpoints you "
        "trust: delete it and re-run `crossmatch train` with the same arguments, which writes it again"]
    assert not marker.exists()
    assert not Run(folder).summary("final").exists()


@pytest.mark.parametrize("target,call", [
    ("best", lambda cfg, folder: evaluate_run(folder, "best", "cpu", save_predictions=False)),
    ("snapshot", lambda cfg, folder: score_run(folder, "cpu")),
    ("best", lambda cfg, folder: score_run(folder, "cpu")),
    ("latest", lambda cfg, folder: train(cfg, folder)),
], ids=["evaluate-best", "protocols-snapshot", "protocols-best", "train-resume"])
def test_every_load_refuses_a_payload(run, tmp_path, target, call):
    cfg, folder = run
    r = Run(folder)
    path = r.snapshot(2) if target == "snapshot" else r.checkpoint(target)
    marker = tmp_path / "PWNED"
    plant(path, marker)
    with pytest.raises(DataError, match=r"refused: it holds pickled Python objects \(exec\), which could run code") \
            as err:
        call(cfg, folder)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
    assert not marker.exists()


def test_checkpoints_hold_only_what_weights_only_loads(finished):
    _, folder = finished
    files = sorted(Run(folder).checkpoints.rglob("*.pt"))
    assert {p.name for p in files} >= {"latest.pt", "best.pt", "final.pt", "iter_000002.pt"}
    for p in files:
        assert torch.serialization.get_unsafe_globals_in_checkpoint(p) == [], p
        torch.load(p, weights_only=True)   # torch's defaults, no allow-list


def test_rng_states_round_trip_exactly(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()     # numpy keeps a cached Gaussian: has_gauss = 1
    random.gauss(0, 1)              # and Python its gauss_next
    save_checkpoint(tmp_path / "rng.pt", rng=_rng_state())
    draws = lambda: (torch.rand(4), np.random.rand(4), np.random.standard_normal(), random.random(),  # noqa: E731
                     random.gauss(0, 1))
    expected = draws()
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    _set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    got = draws()
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2:] == expected[2:]


def test_a_latest_pt_written_by_the_old_code_still_resumes_exactly(acdc_root, tmp_path):
    raw = tiny_overrides(acdc_root, iterations=4, ckpt_every=2, val_every=0)
    raw["method"] = {"name": "supervised"}
    cfg = config.resolve(raw)
    full = train(cfg, tmp_path / "full")
    cut = tmp_path / "cut"
    train(cfg, cut, stop_after=2)
    latest = Run(cut).checkpoint("latest")
    state = torch.load(latest, weights_only=True)
    n = state["rng"]["numpy"]            # the old code stored np.random.get_state() itself
    old_numpy = (n["bit_generator"], np.array(n["key"], np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    state["rng"]["numpy"] = old_numpy
    torch.save(state, latest)
    assert "numpy.ndarray" in torch.serialization.get_unsafe_globals_in_checkpoint(latest)
    with pytest.raises(pickle.UnpicklingError):      # torch's defaults refuse it; our allow-list takes it
        torch.load(latest, weights_only=True)

    trainer = Trainer(cfg, cut)
    stored = trainer.read_checkpoint()
    trainer.build()
    trainer.load_checkpoint(stored)
    assert trainer.start == 2
    now = np.random.get_state()
    assert now[0] == old_numpy[0] and np.array_equal(now[1], old_numpy[1]) and now[2:] == old_numpy[2:]
    assert random.getstate() == state["rng"]["python"]
    assert torch.equal(torch.get_rng_state(), state["rng"]["torch"])

    resumed = train(cfg, cut)                           # 2 -> 4 from the old-format checkpoint
    a, b = torch.load(full, weights_only=True)["model"], torch.load(resumed, weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_series_equal(pd.read_csv(tmp_path / "full" / "log.csv")["loss"],
                                   pd.read_csv(cut / "log.csv")["loss"])
    assert torch.serialization.get_unsafe_globals_in_checkpoint(latest) == []   # rewritten in the new format


def test_the_allow_list_for_old_checkpoints_admits_no_code(tmp_path):
    """numpy arrays are allowed for old RNG states; a payload beside one, or an
    object array holding one, is still refused."""
    marker = tmp_path / "PWNED"
    torch.save({"rng": {"numpy": np.random.get_state()}, "note": Payload(marker)}, tmp_path / "a.pt")
    objects = np.empty(1, dtype=object)
    objects[0] = Payload(marker)
    torch.save({"rng": {"numpy": objects}}, tmp_path / "b.pt")
    for name, what in (("a.pt", "exec"), ("b.pt", "numpy.dtypes.ObjectDType")):
        with pytest.raises(DataError, match=rf"{name}: refused: it holds pickled Python objects \({what}\)"):
            load_checkpoint(tmp_path / name)
    assert not marker.exists()


def test_a_truncated_latest_pt_stops_crossmatch_train_in_one_line(run, tmp_path, finished):
    raw, _ = finished
    _, folder = run
    latest = Run(folder).checkpoint("latest")
    truncate(latest)
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(raw))
    res = cli("train", "--config", tmp_path / "exp.yaml", "--out", folder)
    assert res.returncode == 2
    assert res.stderr.splitlines() == [   # one line, no traceback
        f"error: {latest}: cannot be read, it is truncated or corrupt (PytorchStreamReader failed reading zip "
        "archive: failed finding central directory); delete it and re-run `crossmatch train` with the same "
        "arguments: the run trains afresh from iteration 0"]


@pytest.mark.parametrize("damage", ["half", "empty"])
def test_truncated_checkpoints_stop_evaluate_and_protocols_in_one_line(run, damage):
    cfg, folder = run
    r = Run(folder)
    for path in (r.checkpoint("final"), r.snapshot(2)):
        if damage == "half":
            truncate(path)
        else:
            path.write_bytes(b"")
    with pytest.raises(DataError, match=r"final.pt: cannot be read, it is truncated or corrupt .*; delete it and "
                                        r"re-run `crossmatch train` with the same arguments, which writes it again"):
        evaluate_run(folder, "final", "cpu", save_predictions=False)
    with pytest.raises(DataError, match=r"iter_000002.pt: cannot be read, it is truncated or corrupt") as err:
        score_run(folder, "cpu")
    assert "\n" not in str(err.value)
    r.checkpoint("final").unlink()      # the way out the message gives: train writes it again
    train(cfg, folder)
    assert evaluate_run(folder, "final", "cpu", save_predictions=False)["iteration"] == 2


def test_the_authors_snapshots_load_as_weights_only(acdc_root, tmp_path):
    """crossmatch_authors: the shim's snapshots ({model, iteration}) load under
    weights_only and become our checkpoints; one with a payload is refused."""
    from crossmatch.authors.run import _convert
    from crossmatch.data.specs import get_spec
    from crossmatch.factories import make_model
    cfg = config.resolve({"dataset": acdc_root, "method": {"name": "crossmatch_authors", "commit": "d00de40"},
                          "train": {"iterations": 2, "batch_size": 2, "crop": [32, 32], "val_every": 2,
                                    "ckpt_every": 2, "num_workers": 0}})
    raw_dir = tmp_path / "snapshots"
    raw_dir.mkdir()
    weights = {f"module.{k}": v for k, v in make_model(cfg, get_spec("acdc")).state_dict().items()}
    torch.save({"model": weights, "iteration": 2}, raw_dir / "iter_00002.pt")   # as crossmatch/authors/shim.py
    (raw_dir / "steps.csv").write_text("iteration,lr,seconds\n1,0.01,1.0\n2,0.01,2.0\n")
    run = Run(tmp_path / "run")
    final = _convert(cfg, run, raw_dir)
    for p in (final, run.checkpoint("best"), run.snapshot(2)):
        assert torch.serialization.get_unsafe_globals_in_checkpoint(p) == [], p

    run.snapshot(2).unlink()
    marker = tmp_path / "PWNED"
    plant(raw_dir / "iter_00002.pt", marker)
    with pytest.raises(DataError, match=rf"iter_00002.pt: refused: .* delete {raw_dir} and re-run"):
        _convert(cfg, run, raw_dir)
    assert not marker.exists()
