"""The authors' own code as an implementation in the grid (method
crossmatch_authors, crossmatch/authors/): its pinned files, its config checks,
and a few of its training steps through the workflow on a CPU, scored by our
evaluator and protocol analysis. Skips where ../shared/reference is absent."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from crossmatch import config
from crossmatch.authors import COMMITS
from crossmatch.authors.code import STAMP, obtain
from crossmatch.errors import ConfigError, DataError
from conftest import REPO, SHARED, SHARED_DATA, _needs

CHECKOUTS = {"d00de40": SHARED / "reference" / "AiEson-CrossMatch-d00de40",
             "59772e0": SHARED / "reference" / "AiEson-CrossMatch"}


def checkout(commit: str) -> Path:
    return _needs(CHECKOUTS[commit], f"the authors' code at {commit}")


@pytest.mark.parametrize("commit", sorted(COMMITS))
def test_a_local_checkout_is_verified_file_by_file(tmp_path, commit):
    code = obtain(commit, tmp_path / "code", checkout(commit))
    stamp = json.loads((code / STAMP).read_text())
    assert stamp["commit"] == COMMITS[commit] and stamp["files"] == 34
    assert (code / "ACDC" / "train_cross_match.py").read_bytes() == \
        (CHECKOUTS[commit] / "ACDC" / "train_cross_match.py").read_bytes()


def test_a_checkout_of_another_commit_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"is not AiEson/CrossMatch at 59772e0: 4 file\(s\) missing or different "
                                        r"\(ACDC/test.py, ACDC/train_cross_match.py"):
        obtain("59772e0", tmp_path / "code", checkout("d00de40"))
    with pytest.raises(ConfigError, match="method.code: .* is not a folder"):
        obtain("59772e0", tmp_path / "code2", tmp_path / "nowhere")


def test_without_a_checkout_the_pinned_files_are_downloaded_and_checked(tmp_path, monkeypatch):
    """The download path (raw files at the pinned commit), served here from a
    folder; a served file that differs from the manifest is refused."""
    served = tmp_path / "served"
    obtain("d00de40", served, checkout("d00de40"))
    monkeypatch.setattr("crossmatch.authors.code.raw_url", lambda commit: served.as_uri())
    import functools

    from crossmatch.data.download import download
    monkeypatch.setattr("crossmatch.authors.code.download", functools.partial(download, allow_local=True))
    obtain("d00de40", tmp_path / "code")
    assert (tmp_path / "code" / "ACDC" / "model" / "unet.py").is_file()
    (served / "ACDC" / "model" / "unet.py").write_text("# not the authors' file\n")
    with pytest.raises(DataError, match="could not fetch 1 file"):
        obtain("d00de40", tmp_path / "code3")


def _cfg(**train) -> dict:
    return {"dataset": {"name": "acdc"}, "method": {"name": "crossmatch_authors", "commit": "d00de40"},
            "train": {"iterations": 20, "crop": [64, 64], **train}}


def test_config_of_the_authors_code():
    cfg = config.resolve(_cfg())
    assert config.experiment_id(cfg) == "acdc/crossmatch_authors/l3/commitd00de40/s0"
    cfg = config.resolve({**_cfg(), "method": {"name": "crossmatch_authors", "code": "/some/checkout"}})
    assert config.experiment_id(cfg) == "acdc/crossmatch_authors/l3/commitd00de40/s0"   # where it is read from: not spelled
    with pytest.raises(ConfigError, match="method.commit must be one of"):
        config.resolve({**_cfg(), "method": {"name": "crossmatch_authors", "commit": "main"}})
    with pytest.raises(ConfigError, match="supports 2D datasets only"):
        config.resolve({"dataset": {"name": "la"}, "method": {"name": "crossmatch_authors"}})
    from crossmatch.authors.run import check
    with pytest.raises(ConfigError, match="train.optimizer: the authors' script fixes it to 'sgd'"):
        check(config.resolve(_cfg(optimizer="adamw")))
    with pytest.raises(ConfigError, match="train.crop: the authors' code takes one square crop_size"):
        check(config.resolve(_cfg(crop=[64, 48])))


@pytest.mark.slow
@pytest.mark.realdata
def test_the_authors_code_runs_through_the_workflow_and_is_scored_by_ours(tmp_path):
    """A few steps of the authors' ACDC script at the paper's commit, run by the
    workflow on a CPU (device shim), mapped onto our network and scored by our
    evaluator and protocol analysis; the reproduction table sets it beside
    CrossMatch's reported 88.27 under that value's protocol, final@val."""
    for commit in COMMITS:
        checkout(commit)
    _needs(SHARED_DATA / "ACDC", "real data")
    (tmp_path / "config").symlink_to(REPO / "config")
    cfg = {"results": "results/authors", "seeds": [0], "reported": "config/reported_results.csv",
           "data_root": str(SHARED_DATA),
           "authors_code": {c: str(p) for c, p in CHECKOUTS.items()},
           "datasets": {"acdc": {
               "source": "raw", "raw": "{data_root}/ACDC", "manifest": "config/manifests/acdc_ssl4mis_h5.tsv",
               "labeled": [3], "methods": ["crossmatch_authors"],
               "experiment": {"train": {"iterations": 4, "batch_size": 2, "crop": [64, 64], "val_every": 2,
                                        "ckpt_every": 2, "num_workers": 0},
                              "eval": {"val_cases": 2}},
               "resources": {"gpu": 0, "mem_mb": 4000, "runtime": 30, "threads": 2}}},
           "comparison": {"methods": ["crossmatch_authors"]}}
    (tmp_path / "authors.yaml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow/Snakefile"),
                        "--cores", "2", "--configfile", "authors.yaml", "--", "all_tables"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = tmp_path / "results/authors/runs/acdc/crossmatch_authors/l3/commitd00de40/s0"
    conf = yaml.safe_load((run / "config.yaml").read_text())
    assert "d00de406ecccc18b00fc0154f4b9a55467279585 ACDC/train_cross_match.py" in " ".join(conf["notes"])
    assert conf["provenance"]["device"] == "cpu" and conf["train_precision"] == "fp32 on cpu"
    with open(run / "log.csv", newline="") as f:
        assert [int(row["iteration"]) for row in csv.DictReader(f)] == [2, 4]
    best = json.loads((run / "eval/best/summary.json").read_text())
    assert best["n_test_cases"] == 40 and 0 <= best["mean"]["dice"]["mean"] <= 1
    protocols = json.loads((run / "eval/protocols/summary.json").read_text())
    assert protocols["snapshots"] == [2, 4] and protocols["n_val_cases"] == 20
    with open(tmp_path / "results/authors/tables/reproduction_acdc.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["method"] == "crossmatch" and row["labeled"] == "3"]
    assert [(row["implementation"], row["protocol"]) for row in rows] == \
        [("ours", "final@val"), ("authors' code @d00de40", "final@val")]
    assert float(rows[1]["ours_mean"]) == pytest.approx(100 * protocols["protocols"]["final"]["val_dice"])
    assert rows[1]["ours_n_cases"] == "20" and rows[1]["verdict"].startswith("not comparable: our schedule")
