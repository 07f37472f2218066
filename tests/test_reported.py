"""The reported values' protocols (crossmatch.report.reported): parsing, ours read
under each combination of checkpoint rule, selection split and scoring split,
the verdicts, and the shipped audited table."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from crossmatch.errors import DataError
from crossmatch.report.reported import COLUMNS, Protocol, origin_known, our_score, protocol_of, verdict

ROOT = Path(__file__).resolve().parents[1]
# one run's protocol summary: validation and test Dice of each protocol's checkpoint
SUMMARY = {
    "protocols": {"final": {"iteration": 300, "val_dice": 0.60, "test_dice": 0.50},
                  "best_val": {"iteration": 200, "val_dice": 0.70, "test_dice": 0.55},
                  "valtest": {"iteration": 100, "val_dice": 0.65, "test_dice": 0.62},
                  "best_test": {"iteration": 100, "val_dice": 0.65, "test_dice": 0.62}},
    "n_val_cases": 20, "n_test_cases": 40,
    "curve": {"iteration": [100, 200, 300], "val_dice": [0.65, 0.70, 0.60], "test_dice": [0.62, 0.55, 0.50]},
}


@pytest.mark.parametrize("rule, select, split, expected", [
    ("final", "none", "val", 0.60),                          # the CrossMatch ACDC README: latest.pth on val
    ("final", "none", "test", 0.50),                         # its LA numbers, CAML
    ("final", "none", "valtest", (20 * 0.60 + 40 * 0.50) / 60),
    ("best", "val", "test", 0.55),                           # ours, BCP, SS-Net (ACDC)
    ("best", "val", "val", 0.70),
    ("best", "valtest", "valtest", (20 * 0.65 + 40 * 0.62) / 60),  # UniMatch's valtest.txt
    ("best", "valtest", "test", 0.62),
    ("best", "test", "test", 0.62),                          # SS-Net (LA)
    ("fixed_iter:200", "none", "test", 0.55),                # DMD's 6000 iterations
    ("fixed_iter:250", "none", "test", None),                # no snapshot there
    ("unknown", "unknown", "test", None),
    ("best", "unknown", "test", None),
    ("final", "none", "unknown", None),
])
def test_ours_under_each_protocol(rule, select, split, expected):
    got = our_score(SUMMARY, Protocol(rule, select, split))
    assert got == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize("rule, select, split, label, optimistic", [
    ("final", "none", "val", "final@val", False),
    ("best", "val", "test", "best(val)@test", False),
    ("best", "val", "val", "best(val)@val", True),
    ("best", "valtest", "valtest", "best(valtest)@valtest", True),
    ("best", "valtest", "test", "best(valtest)@test", True),
    ("best", "test", "test", "best(test)@test", True),
    ("best", "test", "val", "best(test)@val", False),
    ("fixed_iter:6000", "none", "test", "iter 6000@test", False),
    ("unknown", "unknown", "unknown", "unknown", False),
])
def test_labels_and_selection_on_the_scored_split(rule, select, split, label, optimistic):
    p = Protocol(rule, select, split)
    assert p.label() == label and p.selects_on_scored_split is optimistic
    assert ("selected on the scored split" in p.describe()) is optimistic


def test_verdicts():
    known = Protocol("final", "none", "val", "20 volumes", "none")
    assert verdict(known, 0.4, 1.0) == "reproduced"
    assert verdict(known, -1.5, 1.0) == "not reproduced"
    assert verdict(known, None, 1.0) == "not run here"
    assert verdict(known, 0.0, 1.0, "synthetic phantom data") == "not comparable: synthetic phantom data"
    assert verdict(Protocol("unknown", "unknown", "test"), 0.0, 1.0) == "not comparable: protocol not stated"
    assert verdict(Protocol("best", "test", "test", postproc="lcc"), 0.0, 1.0) == \
        "not comparable: post-processing lcc (ours: none)"


@pytest.mark.parametrize("column, value", [("ckpt_rule", "latest"), ("ckpt_rule", "fixed_iter:x"),
                                           ("select_split", "train"), ("eval_split", "valid"),
                                           ("postproc", "crf")])
def test_a_bad_protocol_value_is_named(column, value):
    row = {"method": "m", "dataset": "acdc", "labeled": "3", "ckpt_rule": "best", "select_split": "val",
           "eval_split": "test", "postproc": "none", column: value}
    with pytest.raises(DataError, match=f"m/acdc/3: {column} '{value}' is not one of"):
        protocol_of(row, "r.csv")


def test_origin():
    assert origin_known({"value_origin": "own_readme", "verified_by": "code+issue"})
    assert origin_known({"value_origin": "own_paper", "verified_by": "none"})      # its own paper, unchecked
    assert not origin_known({"value_origin": "quoted_in:X README (re-run of unknown origin)", "verified_by": "none"})
    assert not origin_known({"value_origin": "rerun_by:X", "verified_by": "none"})
    assert not origin_known({"value_origin": "quoted_in:X (origin unknown)", "verified_by": "paper_pdf"})
    assert origin_known({"value_origin": "quoted_in:X (equal to Y's table)", "verified_by": "paper_pdf"})


def test_the_shipped_table_is_audited():
    """Every row of config/reported_results.csv parses, carries its evidence, and
    CrossMatch's ACDC numbers are the final weights scored on the 20 validation volumes."""
    with open(ROOT / "config" / "reported_results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == COLUMNS
    for r in rows:
        p = protocol_of(r)
        assert r["value_origin"] and r["verified_by"]
        assert r["evidence"] or r["verified_by"] == "none"
        assert p.known == (r["ckpt_rule"] != "unknown" and r["eval_split"] != "unknown"
                           and (r["ckpt_rule"] != "best" or r["select_split"] != "unknown"))
    (cm,) = [r for r in rows if (r["method"], r["dataset"], r["labeled"]) == ("crossmatch", "acdc", "3")]
    assert (cm["dice"], protocol_of(cm).label(), cm["eval_n"]) == ("88.27", "final@val", "20 volumes (10 patients)")
    (la,) = [r for r in rows if (r["method"], r["dataset"], r["labeled"]) == ("crossmatch", "la", "8")]
    assert protocol_of(la).label() == "final@test"
