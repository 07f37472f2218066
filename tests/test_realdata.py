"""Short runs on the real data through the command line, as a user runs them.
Skipped where ../shared/data is absent (CI always has it)."""
import json
import subprocess
import sys

import pandas as pd
import pytest


pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def cli(*args: str) -> str:
    res = subprocess.run([sys.executable, "-m", "crossmatch", *args], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


@pytest.mark.parametrize("method", ["crossmatch", "supervised"])
def test_acdc_short_run_writes_metrics(roots, tmp_path, method):
    run = tmp_path / "run"
    cli("train", "--out", str(run), "--set", f"dataset.root={roots / 'acdc'}", "--set", "dataset.labeled=3",
        "--set", f"method.name={method}", "--set", "train.iterations=6", "--set", "train.batch_size=2",
        "--set", "train.crop=[64,64]", "--set", "train.val_every=3", "--set", "eval.val_cases=2")
    out = cli("evaluate", "--run", str(run), "--limit", "3")
    assert "final (iteration 6)" in out and "best (iteration" in out
    rows = pd.read_csv(run / "eval" / "limited" / "final" / "metrics_per_case.csv")
    assert len(rows) == 9 and rows["dice"].between(0, 1).all()
    s = json.loads((run / "eval" / "limited" / "best" / "summary.json").read_text())
    assert s["n_test_cases"] == 3 and s["selection"] == "best validation mean Dice"
    assert s["mean"]["hd95_vox"]["mean"] > 0 and s["mean"]["hd95_mm"]["mean"] is None  # no spacing in SSL4MIS h5


def test_la_short_run_on_present_subset_writes_metrics(roots, tmp_path):
    run = tmp_path / "run"
    common = ["--set", "dataset.name=la", "--set", f"dataset.root={roots / 'la'}", "--set", "dataset.labeled=4",
              "--set", "train.iterations=2", "--set", "train.crop=[32,32,32]",
              "--set", "train.val_every=2", "--set", "eval.val_cases=1",
              "--set", "eval.stride=[32,32,32]", "--set", "eval.val_stride=[32,32,32]"]
    # without the subset option the run stops before training, saying what to do
    res = subprocess.run([sys.executable, "-m", "crossmatch", "train", "--out", str(run), *common],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "--missing-cases subset" in res.stderr
    cli("train", "--out", str(run), *common, "--set", "dataset.missing_cases=subset")
    cli("evaluate", "--run", str(run), "--limit", "1", "--checkpoint", "final")
    rows = pd.read_csv(run / "eval" / "limited" / "final" / "metrics_per_case.csv")
    assert len(rows) == 1 and rows.loc[0, "class_name"] == "LA"
    s = json.loads((run / "eval" / "limited" / "final" / "summary.json").read_text())
    assert s["mean"]["hd95_mm"]["mean"] is not None  # LA spacing 0.625 mm is known
