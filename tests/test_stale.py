"""Nothing stale is ever counted: evaluations are replaced whole, a limited
evaluation never lands where the tables read, weights of another run are
refused, and a fresh start moves an earlier run's outputs aside."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_overrides
from crossmatch import config
from crossmatch.errors import DataError
from crossmatch.evaluate import evaluate_run
from crossmatch.layout import Run
from crossmatch.train import train


@pytest.fixture
def trained(acdc_root, tmp_path) -> Path:
    cfg = config.resolve(tiny_overrides(acdc_root, iterations=4, val_every=2))
    train(cfg, tmp_path / "run")
    evaluate_run(tmp_path / "run", "final", "cpu")
    return tmp_path / "run"


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_limited_evaluation_goes_apart_and_is_marked(trained: Path) -> None:
    run = Run(trained)
    before = files_of(run.eval_dir("final"))
    s = evaluate_run(trained, "final", "cpu", limit=1)
    assert s["n_test_cases"] == 1 and "not counted" in s["limited"]
    assert json.loads((trained / "eval/limited/final/summary.json").read_text())["n_test_cases"] == 1
    assert files_of(run.eval_dir("final")) == before          # the counted evaluation is untouched


def test_an_interrupted_evaluation_leaves_the_previous_one_whole(trained: Path, monkeypatch) -> None:
    run = Run(trained)
    before = files_of(run.eval_dir("final"))
    import crossmatch.evaluate as ev
    real, calls = ev.case_metrics, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt   # Ctrl-C while the first case is scored
        return real(*a, **k)
    monkeypatch.setattr(ev, "case_metrics", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate_run(trained, "final", "cpu")
    assert files_of(run.eval_dir("final")) == before
    assert not [p for p in (trained / "eval").iterdir() if p.name.startswith(".")]   # no staging left


def test_weights_of_another_run_are_refused(trained: Path, tmp_path: Path) -> None:
    best = Run(trained).checkpoint("best")
    state = torch.load(best, weights_only=True)
    state["experiment"] = "acdc/crossmatch/l3/tau0.95-eta0.3/s1"
    torch.save(state, best)
    with pytest.raises(DataError, match=r"best\.pt holds the weights of acdc/crossmatch/l3/tau0\.95-eta0\.3/s1, "
                                        r"not of this run \(acdc/crossmatch/l3/tau0\.95-eta0\.3/s0"):
        evaluate_run(trained, "best", "cpu")


def test_a_fresh_start_moves_an_earlier_runs_outputs_aside(trained: Path, acdc_root) -> None:
    """latest.pt gone (deleted, or only final/snapshots left): the new run
    starts afresh and the earlier evaluations, log and snapshots move to
    superseded/, so neither a table nor the protocol analysis counts them."""
    run = Run(trained)
    run.checkpoint("latest").unlink()
    old_summary = run.summary("final").read_bytes()
    cfg = config.resolve(tiny_overrides(acdc_root, iterations=2, val_every=2, seed=1))
    train(cfg, trained)
    (moved,) = list((trained / "superseded").iterdir())
    assert (moved / "eval/final/summary.json").read_bytes() == old_summary
    assert (moved / "checkpoints/snapshots").is_dir() and not (trained / "eval").exists()
    assert run.snapshot_iterations() == [2]                 # only the new run's snapshot
    assert torch.load(run.checkpoint("final"), weights_only=True)["experiment"].endswith("/s1")


def test_protocols_refuse_a_snapshot_of_another_run(trained: Path) -> None:
    from crossmatch.protocols import score_run
    snap = Run(trained).snapshot(2)
    state = torch.load(snap, weights_only=True)
    state["experiment"] = "acdc/supervised/l3/default/s0"
    torch.save(state, snap)
    with pytest.raises(DataError, match=r"iter_000002\.pt holds the weights of acdc/supervised/l3/default/s0"):
        score_run(trained, "cpu")


def test_a_first_run_into_prepared_empty_folders_moves_nothing(acdc_root, tmp_path: Path) -> None:
    """Snakemake creates an output's folder (checkpoints/) before the job runs:
    an empty folder is not an earlier run's output."""
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    train(config.resolve(tiny_overrides(acdc_root, iterations=2, val_every=2)), tmp_path / "run")
    assert not (tmp_path / "run" / "superseded").exists()
