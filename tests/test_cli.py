import subprocess
import sys

import pytest

from crossmatch.cli import main


@pytest.mark.parametrize("verb", ["preprocess", "train", "evaluate", "config"])
def test_every_command_has_help(verb):
    out = subprocess.run([sys.executable, "-m", "crossmatch", verb, "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "usage: crossmatch" in out


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
