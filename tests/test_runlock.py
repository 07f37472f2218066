"""One writer per run folder: a second train, evaluate or protocols on a run
being written stops with one line naming the holder, and writes nothing."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, tiny_overrides
from crossmatch.errors import ConfigError
from crossmatch.runlock import RunBusy, hold


def crossmatch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crossmatch", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_a_second_writer_stops_with_one_line_naming_the_holder(acdc_root, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump(tiny_overrides(acdc_root, iterations=2, val_every=0)))
    with hold(run, "train"):   # this process is the writer, as a training job would be
        for args in (["train", "--config", str(cfg), "--out", str(run)],
                     ["evaluate", "--run", str(run)], ["protocols", "--run", str(run)]):
            r = crossmatch(*args)
            assert r.returncode == 2, r.stderr
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and "is being written by crossmatch train (pid" in lines[0], r.stderr
            assert str(run) in lines[0] and "one writer per run folder" in lines[0]
        # the refused commands wrote nothing into the run
        assert not [p for p in run.iterdir() if not p.name.endswith(".lock")]
        with pytest.raises(RunBusy):   # the lock is per open file, so even a second hold here is refused
            with hold(run, "evaluate"):
                pass
    # released when its holder is done: the run trains
    r = crossmatch("train", "--config", str(cfg), "--out", str(run))
    assert r.returncode == 0, r.stderr[-2000:]
    assert (run / "checkpoints" / "final.pt").is_file()


def test_out_naming_a_file_is_refused_and_evaluating_nothing_creates_nothing(tmp_path: Path) -> None:
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a run folder"):
        with hold(afile, "train"):
            pass
    with hold(tmp_path / "absent", "evaluate"):
        pass
    assert not (tmp_path / "absent").exists()


def test_evaluate_and_protocols_share_a_run_but_not_their_own_part(tmp_path: Path) -> None:
    """The workflow runs a run's evaluation and protocol analysis side by side:
    they write apart; a second evaluation of the run, or a training, waits its turn."""
    run = tmp_path / "run"
    run.mkdir()
    with hold(run, "evaluate"), hold(run, "protocols"):
        with pytest.raises(RunBusy, match="is being written by crossmatch evaluate"):
            with hold(run, "evaluate"):
                pass
        with pytest.raises(RunBusy, match="is being written by crossmatch"):
            with hold(run, "train"):
                pass
    with hold(run, "train"):   # both released
        pass
