import subprocess
import sys

import pytest

from crossmatch.cli import main


@pytest.mark.parametrize("verb", ["preprocess", "train", "evaluate", "config"])
def test_every_command_has_help(verb):
    out = subprocess.run([sys.executable, "-m", "crossmatch", verb, "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "usage: crossmatch" in out


def test_help_is_plain_text():
    """No reStructuredText markup (the module docstrings') in what --help prints."""
    for verb in ([], ["train"], ["evaluate"], ["report"]):
        out = subprocess.run([sys.executable, "-m", "crossmatch", *verb, "--help"],
                             capture_output=True, text=True, check=True).stdout
        assert "``" not in out, verb


def test_user_errors_print_without_traceback(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r"), "--set", "train.nope=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: train.nope: unknown key") and "Traceback" not in err
    assert main(["evaluate", "--run", str(tmp_path / "absent")]) == 2
    assert "config.yaml not found" in capsys.readouterr().err


def test_config_table_lists_every_key(capsys):
    from crossmatch.config import DEFAULTS
    main(["config"])
    out = capsys.readouterr().out
    for section, keys in DEFAULTS.items():
        for key in keys:
            assert f"`{section}.{key}`" in out
    assert "`method.tau` (crossmatch)" in out


def test_configuration_doc_table_is_current():
    """docs/configuration.md's table is `crossmatch config`'s output; regenerate it when keys change."""
    from pathlib import Path

    from crossmatch.config import describe
    doc = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    assert describe() in doc


def test_a_data_error_in_a_loader_worker_is_one_line(acdc_root, tmp_path, capsys):
    """num_workers: 1 (the default) raises inside a worker; the user still gets
    the file and the fix on one line, not the worker's traceback."""
    import numpy as np

    from conftest import tiny_overrides
    from crossmatch.data.h5 import write_case
    bad = sorted((tmp_path / "acdc" / "slices").glob("*.h5"))[0]
    write_case(bad, np.zeros((48, 48), np.float32), np.full((48, 48), 7, np.uint8))
    cfg = tmp_path / "c.yaml"
    import yaml
    cfg.write_text(yaml.safe_dump(tiny_overrides(acdc_root, num_workers=1, val_every=0)))
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: {bad}: label values must be in [0, 3], found [7]"), err
    assert "Traceback" not in err and "Original" not in err


def test_non_integral_labels_are_refused_naming_the_file(tmp_path):
    import h5py
    import numpy as np

    from crossmatch.data.h5 import read_case
    from crossmatch.errors import DataError
    path = tmp_path / "case.h5"
    with h5py.File(path, "w") as f:
        f["image"] = np.zeros((8, 8), np.float32)
        f["label"] = np.full((8, 8), 1.5, np.float32)
    with pytest.raises(DataError, match=rf"{path}: label values must be whole numbers.*\[1.5\]"):
        read_case(path, 4)


def test_ctrl_c_ends_a_command_with_one_line(tmp_path, capsys, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr("crossmatch.evaluate.evaluate_run", interrupted)
    (tmp_path / "run").mkdir()
    assert main(["evaluate", "--run", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("interrupted: crossmatch evaluate stopped")


def test_a_full_disk_names_the_file(tmp_path, capsys, monkeypatch):
    import errno

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "log.csv"))
    monkeypatch.setattr("crossmatch.evaluate.evaluate_run", full)
    (tmp_path / "run").mkdir()
    assert main(["evaluate", "--run", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: disk full writing {tmp_path / 'run' / 'log.csv'}: free space there and run again " \
                  "(training resumes from its last checkpoint)"


def test_a_checkpoint_write_on_a_full_disk_names_the_file(acdc_root, tmp_path, capsys, monkeypatch):
    """torch's writer reports a full disk as "basic_ios::clear: iostream error";
    the user gets the checkpoint's path and the way out, on one line."""
    import collections

    import torch
    import yaml

    from conftest import tiny_overrides

    def full(*a, **k):
        raise RuntimeError("basic_ios::clear: iostream error")
    monkeypatch.setattr(torch, "save", full)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr("crossmatch.checkpoints.shutil.disk_usage", lambda p: usage(10, 10, 0))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_overrides(acdc_root, iterations=2, ckpt_every=2, val_every=0)))
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: disk full writing {tmp_path / 'run' / 'checkpoints'}/"), last
