"""crossmatch.report: tables (md/tex/csv) and figures from a tiny fake grid whose
run folders are written in the formats of crossmatch.train / crossmatch.evaluate."""
from __future__ import annotations

import csv
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from conftest import mark_preprocessed
from crossmatch.data.h5 import write_case
from crossmatch.errors import DataError
from crossmatch.layout import Run
from crossmatch.report import ablation_figure, main, qualitative, training_curves, write_table

CASES = [f"patient{i:03d}_frame01" for i in range(5)]
# test mean Dice of each run (fraction): (method, labeled) -> per seed
DICE = {("supervised", "1"): (0.50, 0.60), ("supervised", "3"): (0.70, 0.74),
        ("crossmatch", "1"): (0.55, 0.65), ("crossmatch", "3"): (0.80, 0.90),
        ("fully_supervised", "all"): (0.95, 0.97), ("crossmatch_t0.8", "3"): (0.78, 0.82)}
REPORTED = """method,dataset,labeled,dice,jaccard,hd95,asd,units,source,ckpt_rule,select_split,eval_split,eval_n,postproc
crossmatch,acdc,3,80.00,70.00,2.00,0.50,voxel,Test README,best,val,test,5 volumes,none
crossmatch,acdc,1,75.0,,1.8,,mm,Other paper,unknown,unknown,unknown,,unknown
bcp,acdc,3,87.59,78.67,1.90,0.67,voxel,BCP paper,best,val,test,,none
"""


def _stats(x: float) -> dict[str, Any]:
    return {"mean": x, "std": 0.1, "n": len(CASES)}


def _metrics(dice: float) -> dict[str, float | None]:
    """Metric values of a run with mean Dice ``dice`` (distances shrink as Dice grows)."""
    return {"dice": dice, "jaccard": dice / (2 - dice), "hd95_vox": 10 * (1 - dice),
            "asd_vox": 2 * (1 - dice), "hd95_mm": None, "asd_mm": None}


def write_run(results: Path, rid: str, dice: float, root: Path, rng: np.random.Generator) -> None:
    """A finished, evaluated run: log.csv and eval/{best,final}/ as the pipeline writes them."""
    run = results / "runs" / rid
    run.mkdir(parents=True)
    with open(run / "log.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["iteration", "lr", "sup", "loss", "mask_ratio", "seconds", "val_dice"])
        w.writeheader()
        for it in range(1, 41):
            w.writerow({"iteration": it, "lr": 0.01, "sup": 1 / it, "loss": 1 / it + rng.uniform(0, 0.1),
                        "mask_ratio": 0.5, "seconds": it * 0.1,
                        "val_dice": dice * it / 40 if it % 10 == 0 else ""})
    m = _metrics(dice)
    for ckpt in ("best", "final"):
        out = run / "eval" / ckpt
        out.mkdir(parents=True)
        summary = {
            "per_class": {str(c): {k: _stats(v) if v is not None else {"mean": None, "std": None, "n": 0}
                                   for k, v in m.items()} for c in (1, 2, 3)},
            "mean": {k: _stats(v) if v is not None else {"mean": None, "std": None, "n": 0} for k, v in m.items()},
            "n_cases": len(CASES), "n_empty_pred": 0, "n_empty_gt": 0, "experiment": rid, "checkpoint": ckpt,
            "iteration": 40, "val_dice": dice, "selection": "best validation mean Dice", "split": "test",
            "n_test_cases": len(CASES), "class_names": ["RV", "Myo", "LV"], "spacing_known": False,
        }
        (out / "summary.json").write_text(json.dumps(summary))
        with open(out / "metrics_per_case.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["case", "class_name", "class", "dice", "jaccard", "hd95_vox", "asd_vox", "hd95_mm",
                        "asd_mm", "empty_pred", "empty_gt"])
            for i, case in enumerate(CASES):
                for c, name in enumerate(["RV", "Myo", "LV"], 1):
                    d = dice + 0.02 * (i - 2)
                    w.writerow([case, name, c, d, d / (2 - d), 1.0, 0.5, "nan", "nan", False, False])
        for case in CASES:
            with h5py.File(root / "volumes" / f"{case}.h5", "r") as f:
                label = f["label"][()]
            pred = np.where(rng.random(label.shape) < 0.1, 0, label).astype(np.uint8)
            (out / "predictions").mkdir(exist_ok=True)
            with h5py.File(out / "predictions" / f"{case}.h5", "w") as f:
                f.create_dataset("pred", data=pred)


@pytest.fixture
def grid(tmp_path: Path) -> dict[str, Any]:
    return make_grid(tmp_path)


def make_grid(tmp_path: Path) -> dict[str, Any]:
    """A grid.json-shaped dict: comparison_acdc (2 methods x labeled 1, 3 + upper bound)
    and ablation_tau (2 variants), 2 seeds, synthetic acdc, with every run written."""
    rng = np.random.default_rng(0)
    root, results = tmp_path / "data" / "acdc", tmp_path / "results"
    yy, xx = np.mgrid[:24, :24]
    for i, case in enumerate(CASES):
        label = np.zeros((3, 24, 24), np.uint8)
        for k in range(3):
            r = np.hypot(yy - 12, xx - 12)
            label[k][r < 3 + k + i % 2] = 3
            label[k][(r >= 3 + k + i % 2) & (r < 6 + k)] = 2
            label[k][np.hypot(yy - 12, xx - 20) < 2] = 1
        write_case(root / "volumes" / f"{case}.h5", 0.3 * label + rng.normal(0, 0.05, label.shape), label)
    mark_preprocessed(root, "acdc")
    reported = tmp_path / "reported.csv"
    reported.write_text(REPORTED)
    experiments: dict[str, Any] = {}

    def cell(method: str, labeled: str, settings: str = "default") -> list[str]:
        ids = []
        for seed in (0, 1):
            name = method.split("_t")[0]
            rid = f"acdc/{name}/l{labeled}/{settings}/s{seed}"
            write_run(results, rid, DICE[(method, labeled)][seed], root, rng)
            experiments[rid] = {"dataset": "acdc", "method": name, "labeled": labeled, "seed": seed,
                                "config": {"dataset": {"name": "acdc", "root": str(root)}}}
            ids.append(rid)
        return ids

    comparison = {"name": "comparison_acdc", "kind": "comparison", "dataset": "acdc", "labeled": ["1", "3"],
                  "rows": [{"label": m, "method": m, "cells": {n: cell(m, n) for n in ("1", "3")}}
                           for m in ("supervised", "crossmatch")]
                  + [{"label": "fully_supervised", "method": "fully_supervised",
                      "cells": {"all": cell("fully_supervised", "all")}}]}
    ablation = {"name": "ablation_tau", "kind": "ablation", "dataset": "acdc", "labeled": ["3"],
                "title": "Confidence threshold τ", "plot": "curve", "xlabel": "τ",
                "rows": [{"label": "0.80", "x": 0.8, "cells": {"3": cell("crossmatch_t0.8", "3", "tau0.8")}},
                         {"label": "0.95", "x": 0.95, "cells": {"3": comparison["rows"][1]["cells"]["3"]}}]}
    return {"results": str(results), "seeds": [0, 1], "synthetic": {"acdc": True}, "reported": str(reported),
            "experiments": experiments, "tables": [comparison, ablation]}


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _html_cells(text: str) -> dict[str, Any]:
    """Caption, body rows (cell texts) and bold texts of a one-table HTML page."""
    from html.parser import HTMLParser

    out: dict[str, Any] = {"caption": "", "rows": [], "bold": []}
    where: list[str] = []

    class P(HTMLParser):
        def handle_starttag(self, tag, attrs):
            where.append(tag)
            if tag == "tr" and "tbody" in where:
                out["rows"].append([])
            if tag == "td" and "tbody" in where:
                out["rows"][-1].append("")

        def handle_endtag(self, tag):
            where.pop()

        def handle_data(self, data):
            if "caption" in where:
                out["caption"] += data
            elif "td" in where and "tbody" in where:
                out["rows"][-1][-1] += data
                if "b" in where:
                    out["bold"].append(data)

    P().feed(text)
    return out


def test_comparison_table(grid: dict[str, Any], tmp_path: Path) -> None:
    prefix = tmp_path / "out" / "comparison_acdc"
    write_table(grid, "comparison_acdc", prefix)
    md, tex = Path(f"{prefix}.md").read_text(), Path(f"{prefix}.tex").read_text()
    rows = _csv(Path(f"{prefix}.csv"))
    # (2 methods x 2 labeled + upper bound x 1) x 4 metrics (no mm: the data has no spacing)
    assert len(rows) == 20
    cm = {(r["row"], r["labeled"], r["metric"]): r for r in rows}
    r = cm[("crossmatch", "3", "dice")]
    assert math.isclose(float(r["mean"]), 85.0) and math.isclose(float(r["std"]), math.sqrt(50))
    assert r["n_seeds"] == "2"
    assert math.isclose(float(cm[("supervised", "3", "hd95_vox")]["mean"]), 2.8)
    # bold: crossmatch is the best non-upper-bound row (higher Dice, lower distances)
    assert "**85.00 ± 7.07**" in md and "**1.50 ± 0.71**" in md
    assert "72.00 ± 2.83 |" in md and "**72.00" not in md
    assert "96.00 ± 1.41" in md and "**96.00" not in md        # upper bound never bold
    assert r"$\mathbf{85.00 \pm 7.07}$" in tex
    # reported row beneath ours; synthetic data: shown, never compared (no Delta)
    assert r["reported"] == "80.0" and r["diff"] == "" and r["note"] == "not comparable"
    assert r["reported_source"] == "Test README"
    assert "80.00 [best(val)@test] (not comparable)" in md and "| ↳ crossmatch reported [1,2] |" in md
    assert "Δ +" not in md and "not compared with ours: synthetic phantom data" in md
    assert md.index("| crossmatch |") < md.index("↳ crossmatch reported")
    assert "[1] Test README (protocol: best(val)@test; 5 volumes)" in md and "[2] Other paper (protocol: unknown" in md
    hd = cm[("crossmatch", "1", "hd95_vox")]
    assert hd["reported_units"] == "mm" and hd["diff"] == "" and "units differ" in hd["note"]
    assert "bcp" not in md                                      # only methods of the grid
    # caption: protocol and the synthetic warning
    for text in (md, tex):
        assert "SYNTHETIC PHANTOM DATA" in text and "validation split only" in text
        assert "n = 2 seeds" in text and "5 cases" in text
    # LaTeX: booktabs, group headers, balanced braces
    for cmd in (r"\toprule", r"\midrule", r"\bottomrule", r"\multicolumn{4}{c}{3 labeled}", r"\caption{"):
        assert cmd in tex
    bare = re.sub(r"\\[{}]", "", tex)
    assert bare.count("{") == bare.count("}")
    assert "fully\\_supervised" in tex and "_supervised" not in tex.replace("\\_", "")
    # HTML (the Snakemake report's view): the same cells, parsed as a browser would
    page = _html_cells(Path(f"{prefix}.html").read_text())
    assert page["caption"].startswith("Table comparison_acdc.") and "SYNTHETIC PHANTOM DATA" in page["caption"]
    body = {r[0]: r[1:] for r in page["rows"]}
    dice3 = 4  # column groups 1 and 3 labeled, 4 metrics each
    assert body["crossmatch"][dice3] == "85.00 ± 7.07" and "85.00 ± 7.07" in page["bold"]
    assert body["↳ crossmatch reported [1,2]"][dice3] == "80.00 [best(val)@test] (not comparable)"
    assert "96.00 ± 1.41" not in page["bold"]


@pytest.mark.parametrize("paper_schedule", [True, False])
def test_comparison_delta_only_on_real_data_and_the_papers_schedule(grid, tmp_path, paper_schedule):
    grid = {**grid, "synthetic": {"acdc": False}, "paper_schedule": paper_schedule}
    for rid in grid["experiments"]:
        grid["experiments"][rid]["config"]["train"] = {"iterations": 40, "batch_size": 4, "crop": [24, 24]}
    prefix = tmp_path / "comparison_acdc"
    write_table(grid, "comparison_acdc", prefix)
    md = Path(f"{prefix}.md").read_text()
    r = {(r["row"], r["labeled"], r["metric"]): r for r in _csv(Path(f"{prefix}.csv"))}[("crossmatch", "3", "dice")]
    if paper_schedule:  # Delta = ours - reported where units match
        assert math.isclose(float(r["diff"]), 5.0) and "80.00 [best(val)@test] (Δ +5.00)" in md
        assert "reproduction_acdc" in md
    else:
        assert r["diff"] == "" and "80.00 [best(val)@test] (not comparable)" in md
        assert "our schedule is not the paper's (40 iterations, batch 4 at 24x24)" in md


def test_ablation_table_and_figure(grid: dict[str, Any], tmp_path: Path) -> None:
    t = write_table(grid, "ablation_tau", tmp_path / "ablation_tau", checkpoint="final")
    assert [r.label for r in t.rows] == ["0.80", "0.95"] and not any(r.reported for r in t.rows)
    assert (0, "3", "dice") not in t.bold and (1, "3", "dice") in t.bold
    assert "$\\tau$" in (tmp_path / "ablation_tau.tex").read_text()
    prefix = tmp_path / "fig" / "ablation_tau"
    ablation_figure(grid, "ablation_tau", prefix)
    assert (tmp_path / "fig" / "ablation_tau.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "fig" / "ablation_tau.pdf").read_bytes()[:4] == b"%PDF"
    caption = (tmp_path / "fig" / "ablation_tau.txt").read_text()
    assert caption.count("\n") == 1 and "SYNTHETIC" in caption


def test_qualitative_and_curves(grid: dict[str, Any], tmp_path: Path) -> None:
    cases = qualitative(grid, "acdc", tmp_path / "qual", n_cases=3)
    assert cases == [CASES[0], CASES[2], CASES[4]]  # quantiles 1/6, 1/2, 5/6 of the Dice ranking
    training_curves(grid, "acdc", tmp_path / "curves")
    for name in ("qual", "curves"):
        png = (tmp_path / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
        assert (tmp_path / f"{name}.pdf").stat().st_size > 0
        assert "SYNTHETIC" in (tmp_path / f"{name}.txt").read_text()


def test_a_partial_dataset_is_stated_in_every_caption(grid: dict[str, Any], tmp_path: Path) -> None:
    write_table(grid, "comparison_acdc", tmp_path / "full")
    assert "PARTIAL DATA" not in (tmp_path / "full.md").read_text()
    for e in grid["experiments"].values():
        e["config"]["dataset"]["missing_cases"] = "subset"
    write_table(grid, "comparison_acdc", tmp_path / "t")
    for ext, key in (("md", "missing_cases"), ("html", "missing_cases"), ("tex", r"missing\_cases")):
        assert f"PARTIAL DATA: ACDC ran with dataset.{key}: subset" in (tmp_path / f"t.{ext}").read_text(), ext


def test_a_table_refuses_runs_scored_on_different_test_sets(grid: dict[str, Any], tmp_path: Path) -> None:
    """One run evaluated on fewer cases (e.g. `crossmatch evaluate --limit 1`):
    the table names it and the fix, instead of setting unequal means side by side."""
    rid = "acdc/crossmatch/l3/default/s1"
    path = Path(grid["results"]) / "runs" / rid / "eval" / "best" / "summary.json"
    s = json.loads(path.read_text())
    path.write_text(json.dumps({**s, "n_test_cases": 1}))
    with pytest.raises(DataError, match=rf"table comparison_acdc: its runs were scored on different test sets "
                                        rf"\(1 cases for {rid}, \d+ for others\).*without --limit"):
        write_table(grid, "comparison_acdc", tmp_path / "t")
    assert not (tmp_path / "t.md").exists()


def test_missing_summary_names_run(grid: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rid = "acdc/crossmatch/l3/default/s1"
    (Path(grid["results"]) / "runs" / rid / "eval" / "best" / "summary.json").unlink()
    with pytest.raises(DataError, match=rf"run {rid}:.*crossmatch evaluate --run .*{rid} --checkpoint best"):
        write_table(grid, "comparison_acdc", tmp_path / "t")
    assert not (tmp_path / "t.md").exists()
    gpath = tmp_path / "grid.json"
    gpath.write_text(json.dumps(grid))
    assert main(["table", "--grid", str(gpath), "--name", "comparison_acdc", "--out", str(tmp_path / "t")]) == 1
    assert rid in capsys.readouterr().err
    assert main(["table", "--grid", str(gpath), "--name", "comparison_acdc", "--out", str(tmp_path / "t"),
                 "--checkpoint", "final"]) == 0
    assert (tmp_path / "t.csv").is_file()


def test_report_reads_only_the_runs_it_is_given(grid: dict[str, Any], tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    """`--runs` (what a workflow rule passes: its inputs): the table reads those
    summaries, wherever they are, and refuses a table run that is not among them."""
    gpath = tmp_path / "grid.json"
    gpath.write_text(json.dumps(grid))
    ids = [i for row in grid["tables"][0]["rows"] for c in row["cells"].values() for i in c]
    runs = Path(grid["results"]) / "runs"
    moved = tmp_path / "elsewhere" / "runs"
    shutil.move(runs, moved)              # the given paths are read, not the grid's layout
    given = [str(Run(moved / i).summary(c)) for i in ids for c in ("best", "final")]
    out = tmp_path / "t"
    assert main(["table", "--grid", str(gpath), "--name", "comparison_acdc", "--out", str(out),
                 "--runs", *given]) == 0, capsys.readouterr().err
    write_table(grid | {"results": str(moved.parent)}, "comparison_acdc", tmp_path / "u")   # by hand
    assert out.with_suffix(".md").read_text() == (tmp_path / "u.md").read_text()
    missing = ids[3]
    partial = [g for g in given if f"/{missing}/" not in g]
    assert main(["table", "--grid", str(gpath), "--name", "comparison_acdc", "--out", str(out),
                 "--runs", *partial]) == 1
    assert f"run {missing} is in the table but not among the runs given to the report" in capsys.readouterr().err


def test_comparison_sets_a_reported_dice_beside_ours_under_its_protocol(grid, tmp_path):
    """With the runs' protocol analysis, a reported Dice is compared with ours
    under its own protocol (here final@val, as the CrossMatch README), not with
    this table's checkpoint; its other metrics, scored under another protocol
    than this table's, get no difference."""
    from crossmatch.layout import Run
    reported = tmp_path / "reported_protocol.csv"
    reported.write_text("method,dataset,labeled,dice,jaccard,hd95,asd,units,source,ckpt_rule,select_split,"
                        "eval_split,eval_n,postproc\n"
                        "crossmatch,acdc,3,80.00,70.00,,,voxel,Test README,final,none,val,20 volumes,none\n")
    grid = {**grid, "synthetic": {"acdc": False}, "paper_schedule": True, "reported": str(reported)}
    for rid, e in grid["experiments"].items():
        e["config"]["train"] = {"iterations": 40, "batch_size": 4, "crop": [24, 24]}
        path = Run(Path(grid["results"]) / "runs" / rid).protocols / "summary.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        val = {"final": 0.75 + 0.01 * e["seed"], "best_val": 0.6, "valtest": 0.7, "best_test": 0.9}
        path.write_text(json.dumps({"protocols": {p: {"test_dice": 0.5, "val_dice": d} for p, d in val.items()},
                                    "n_val_cases": 20, "n_test_cases": 40}))
    prefix = tmp_path / "comparison_acdc"
    write_table(grid, "comparison_acdc", prefix)
    md = Path(f"{prefix}.md").read_text()
    rows = {(r["row"], r["labeled"], r["metric"]): r for r in _csv(Path(f"{prefix}.csv"))}
    r = rows[("crossmatch", "3", "dice")]
    assert r["reported_protocol"] == "final@val" and math.isclose(float(r["ours_under_protocol"]), 75.5)
    assert math.isclose(float(r["diff"]), -4.5)                  # 75.5 (final, on val) - 80, not 85 (best, test) - 80
    assert "80.00 [final@val; ours under it 75.50] (Δ −4.50)" in md
    j = rows[("crossmatch", "3", "jaccard")]                      # other metrics: only under this table's protocol
    assert j["reported_protocol"] == "final@val" and j["diff"] == "" and "other protocol" in j["note"]
