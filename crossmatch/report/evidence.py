"""Evidence per dataset, from the runs' protocol analysis (``crossmatch.protocols``):

* ``protocols_<dataset>``: test Dice of every comparison row under each
  protocol (final, best_val, valtest, best_test), mean ± std over seeds,
  and the gap best_test − best_val, paired by seed;
* ``paired_<dataset>``: every method but the supervised baseline against it
  and against CrossMatch (``crossmatch.stats.paired``) under best_val and final:
  Δ [95 % CI], Wilcoxon p, n, and each method's seed spread;
* ``reproduction_<dataset>``: every reported value of the dataset beside ours
  under the reported value's own protocol, Δ and a verdict (reproduced when
  |Δ| <= the grid's ``reproduction_tolerance``; not comparable, with no Δ,
  when the data are synthetic or our schedule is not the paper's);
* ``protocol_curves_<dataset>`` (figure): validation and test Dice over the
  iterations, each protocol's checkpoint marked.

Tables are written as ``.md``, ``.html`` and tidy ``.csv``.
"""
from __future__ import annotations

import csv
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import stats
from ..errors import DataError
from ..io import write_text
from ..protocols import PROTOCOLS, SUMMARY
from . import collect, reported

BASELINES = ("supervised", "crossmatch")
PAIRED_PROTOCOLS = ("best_val", "final")


@dataclass
class TextTable:
    name: str
    caption: str
    header: list[str]
    rows: list[list[str]]
    records: list[dict[str, Any]] = field(default_factory=list)   # the tidy CSV
    fields: list[str] = field(default_factory=list)   # its columns, also when it has no rows


# ------------------------------------------------------------------ reading

def load_protocols(grid: dict[str, Any], rid: str) -> dict[str, Any]:
    path = collect.run_files(grid, rid).protocols / SUMMARY
    hint = (f"; produce it with `crossmatch protocols --run {collect.run_dir(grid, rid)}` "
            "(or the workflow: `snakemake --cores 2 all_tables`)")
    if not path.is_file():
        raise DataError(f"run {rid}: {path} not found{hint}")
    return collect._read_json(path, f"run {rid}:", hint)


def protocol_summaries(grid: dict[str, Any], row: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """labeled -> the protocol summaries of a comparison row's runs, for the cells
    whose every run has its protocol analysis (the workflow's table rule depends
    on it; a table made by hand without it simply lacks these values)."""
    out = {}
    for labeled, ids in row["cells"].items():
        paths = [collect.run_files(grid, rid).protocols / SUMMARY for rid in ids]
        if ids and all(p.is_file() for p in paths):
            out[labeled] = [collect._read_json(p, "protocol summary") for p in paths]
    return out


@dataclass
class Cell:
    """One comparison row at one labeled count: its runs' protocol summaries by seed."""
    label: str
    method: str
    labeled: str
    upper_bound: bool
    by_seed: dict[int, dict[str, Any]]

    def scores(self, protocol: str) -> stats.Scores:
        return {s: p["protocols"][protocol]["test_per_case"] for s, p in self.by_seed.items()}

    def means(self, protocol: str) -> list[float]:
        return [p["protocols"][protocol]["test_dice"] for p in self.by_seed.values()]


def cells(grid: dict[str, Any], dataset: str) -> list[Cell]:
    spec = collect.comparison_table(grid, dataset)
    out = []
    for row in spec["rows"]:
        for labeled, ids in row["cells"].items():
            by_seed = {int(grid["experiments"][rid]["seed"]): load_protocols(grid, rid) for rid in ids}
            out.append(Cell(str(row["label"]), row.get("method", ""), labeled, collect.is_upper_bound(row),
                            by_seed))
    return out


def _pm(values: list[float], scale: float = 100.0, signed: bool = False) -> str:
    if not values:
        return "–"
    a = np.asarray(values) * scale
    fmt = "{:+.2f}" if signed else "{:.2f}"
    text = fmt.format(a.mean()).replace("-", "−")
    return text + (f" ± {a.std(ddof=1):.2f}" if a.size > 1 else "")


def _seeds_text(grid: dict[str, Any], cs: list[Cell]) -> str:
    n = sorted({len(c.by_seed) for c in cs})
    n_test = sorted({int(p.get("n_test_cases", 0)) for c in cs for p in c.by_seed.values()})
    return (f"n = {'–'.join(map(str, (n[0], n[-1]) if n[0] != n[-1] else (n[0],)))} seed{'s' * (n[-1] > 1)} "
            f"({', '.join(map(str, grid.get('seeds', [])))}), {', '.join(map(str, n_test))} test cases")


def _synthetic_note(grid: dict[str, Any], dataset: str) -> str:
    return " SYNTHETIC PHANTOM DATA — not comparable to the paper." if collect.is_synthetic(grid, dataset) else ""


# ------------------------------------------------------------------ tables

def protocol_table(grid: dict[str, Any], dataset: str) -> TextTable:
    cs = cells(grid, dataset)
    header = ["Method", "labeled", *(f"{p} Dice (%)" for p in PROTOCOLS), "best_test − best_val"]
    rows, records = [], []
    for c in cs:
        gaps = [p["protocols"]["best_test"]["test_dice"] - p["protocols"]["best_val"]["test_dice"]
                for p in c.by_seed.values()]
        rows.append([c.label, c.labeled, *(_pm(c.means(p)) for p in PROTOCOLS), _pm(gaps, signed=True)])
        for p in PROTOCOLS:
            for seed, s in c.by_seed.items():
                records.append({"table": f"protocols_{dataset}", "row": c.label, "method": c.method,
                                "labeled": c.labeled, "protocol": p, "seed": seed,
                                "iteration": s["protocols"][p]["iteration"],
                                "test_dice": repr(s["protocols"][p]["test_dice"])})
    caption = (f"Protocols side by side on {dataset.upper()}: test mean Dice (%) of the checkpoint each "
               f"protocol selects, mean ± std over seeds ({_seeds_text(grid, cs)}). "
               + " ".join(f"{p}: {d}." for p, d in PROTOCOLS.items())
               + " valtest and best_test read the test split: they are shown to measure other papers' "
               "protocols and never select our checkpoint (best_val). The last column: best_test − best_val "
               "per seed (how much selecting on the test set inflates the score)."
               + _synthetic_note(grid, dataset))
    return TextTable(f"protocols_{dataset}", caption, header, rows, records)


def paired_table(grid: dict[str, Any], dataset: str, n_boot: int = 10000) -> TextTable:
    cs = [c for c in cells(grid, dataset) if not c.upper_bound]
    header = ["protocol", "labeled", "method", "vs", "Δ Dice (points) [95 % CI]", "Wilcoxon p", "n seeds × cases",
              "seed std (min–max) of method"]
    rows, records = [], []
    for protocol in PAIRED_PROTOCOLS:
        for c in cs:
            std, lo, hi = stats.seed_spread(c.scores(protocol))
            spread = f"{'–' if std is None else f'{100 * std:.2f}'} ({100 * lo:.2f}–{100 * hi:.2f})"
            for base in BASELINES:
                ref = next((b for b in cs if b.method == base and b.labeled == c.labeled), None)
                if ref is None or ref is c or c.method == "supervised":  # the baseline itself: no row
                    continue
                r = stats.paired(c.scores(protocol), ref.scores(protocol), n_boot=n_boot)
                mark = " ★" if r.significant else ""
                delta = (f"{100 * r.mean:+.2f} [{100 * r.ci[0]:+.2f}, {100 * r.ci[1]:+.2f}]{mark}"
                         .replace("-", "−"))
                p = "–" if r.p_wilcoxon is None else f"{r.p_wilcoxon:.3g}"
                rows.append([protocol, c.labeled, c.label, ref.label, delta, p, f"{r.n_seeds} × {r.n_cases}",
                             spread])
                records.append({"table": f"paired_{dataset}", "protocol": protocol, "labeled": c.labeled,
                                "method": c.method, "vs": ref.method, "mean_diff": repr(r.mean),
                                "ci_low": repr(r.ci[0]), "ci_high": repr(r.ci[1]),
                                "significant": r.significant,
                                "p_wilcoxon": "" if r.p_wilcoxon is None else repr(r.p_wilcoxon),
                                "n_seeds": r.n_seeds, "n_cases": r.n_cases,
                                "seed_std": "" if std is None else repr(std), "seed_min": repr(lo),
                                "seed_max": repr(hi)})
    caption = (f"Paired differences on {dataset.upper()} (method − baseline, test mean Dice in points), on the "
               "seeds and test cases both have. 95 % CI: hierarchical bootstrap (seeds resampled, then test "
               f"cases within each seed; {n_boot} draws, percentile interval); ★: the interval excludes 0. "
               "Wilcoxon: two-sided signed-rank test (scipy) on the per-case differences averaged over seeds "
               "(n = cases), for comparison with papers that report it. ★ is the rule: the interval accounts for "
               "seeds and cases, the Wilcoxon test for cases only, so they can disagree (one seed: the interval "
               "covers case noise only; few cases: the test cannot reach p < 0.05, e.g. p ≥ 0.125 at 4). "
               "Seed spread: std (ddof=1) and range of the method's per-seed means. "
               + "; ".join(f"{p}: {PROTOCOLS[p]}" for p in PAIRED_PROTOCOLS) + "."
               + _synthetic_note(grid, dataset))
    return TextTable(f"paired_{dataset}", caption, header, rows, records)


def schedule_text(grid: dict[str, Any], dataset: str) -> str:
    """Which schedule our runs of ``dataset`` ran (from the first experiment of the comparison)."""
    spec = collect.comparison_table(grid, dataset)
    rid = collect.first_cell(spec, spec["rows"][0])[1][0]
    t = grid["experiments"][rid]["config"]["train"]
    crop = "x".join(map(str, t["crop"]))
    return f"{t['iterations']} iterations, batch {t['batch_size']} at {crop}"


def not_comparable(grid: dict[str, Any], dataset: str) -> str:
    """Why our values of ``dataset`` cannot be set against a paper's ('' when they can)."""
    if collect.is_synthetic(grid, dataset):
        return "synthetic phantom data"
    if not grid.get("paper_schedule", False):
        return f"our schedule is not the paper's ({schedule_text(grid, dataset)})"
    return ""


def implementations(grid: dict[str, Any], dataset: str, method: str, labeled: str) -> list[tuple[str, list[str]]]:
    """Who implements ``method`` at (dataset, labeled) in this grid, with the run ids of
    each: ours (the comparison row's cell), then the authors' own code per commit
    (method ``<method>_authors``, every settings folder of the grid: its commits)."""
    out = []
    spec = collect.comparison_table(grid, dataset)
    ours = next((row["cells"].get(labeled) for row in spec["rows"] if row.get("method") == method), None)
    out.append(("ours", list(ours or [])))
    groups: dict[str, list[str]] = {}
    for rid, e in grid["experiments"].items():
        if e["dataset"] == dataset and e["method"] == f"{method}_authors" and str(e["labeled"]) == labeled:
            groups.setdefault(rid.rsplit("/", 1)[0], []).append(rid)
    for folder, ids in sorted(groups.items()):
        settings = folder.split("/")[3]
        commit = grid["experiments"][ids[0]]["config"]["method"].get("commit", "")
        rest = settings.replace(f"commit{commit}", "").strip("-")
        out.append((f"authors' code @{commit}" + (f" ({rest})" if rest else ""), ids))
    return out


def reproduction_table(grid: dict[str, Any], dataset: str) -> TextTable:
    """Every reported Dice of ``dataset`` beside each implementation in the grid,
    read under the reported value's own protocol (``report.reported``)."""
    rows_in = [r for r in collect.load_reported(grid) if r["dataset"] == dataset and r.get("dice")]
    tol = float(grid.get("reproduction_tolerance", 1.0))
    reason = not_comparable(grid, dataset)
    header = ["Method", "labeled", "reported Dice (%)", "its protocol", "implementation", "score under it (%)",
              "Δ", "verdict", "source"]
    fields = ["table", "method", "labeled", "reported", "ckpt_rule", "select_split", "eval_split", "eval_n",
              "postproc", "protocol", "selected_on_scored_split", "origin_known", "implementation", "ours_mean",
              "ours_std", "n_seeds", "ours_n_cases", "diff", "verdict", "source", "evidence"]
    where = str(grid.get("reported") or "reported results")
    summaries: dict[str, dict[str, Any]] = {}
    known, unknown = [], []
    for r in rows_in:
        proto = reported.protocol_of(r, where)
        value = float(r["dice"])
        for impl, ids in implementations(grid, dataset, r["method"], r["labeled"]):
            if not ids and impl != "ours":
                continue
            for rid in ids:
                summaries.setdefault(rid, load_protocols(grid, rid))
            scores = [reported.our_score(summaries[rid], proto) for rid in ids]
            ours = [100 * x for x in scores if x is not None] if scores and None not in scores else []
            diff = float(np.mean(ours)) - value if ours else None
            v = reported.verdict(proto, diff, tol, reason if ids else "")
            shown_diff = diff if diff is not None and v in ("reproduced", "not reproduced") else None
            n_cases = ""
            if ids and proto.known:
                s0 = summaries[ids[0]]
                n_cases = {"val": s0["n_val_cases"], "test": s0["n_test_cases"],
                           "valtest": s0["n_val_cases"] + s0["n_test_cases"]}[proto.eval_split]
            text = (f"{_pm(ours, scale=1.0)} ({n_cases} volumes, {len(ours)} seed{'s' * (len(ours) != 1)})"
                    if ours else ("–" if ids else "not run here"))
            row = [r["method"], r["labeled"], f"{value:.2f}", proto.describe(), impl, text,
                   "–" if shown_diff is None else f"{shown_diff:+.2f}".replace("-", "−"), v, r["source"]]
            rec = {"table": f"reproduction_{dataset}", "method": r["method"], "labeled": r["labeled"],
                   "reported": repr(value), "ckpt_rule": proto.ckpt_rule, "select_split": proto.select_split,
                   "eval_split": proto.eval_split, "eval_n": proto.eval_n, "postproc": proto.postproc,
                   "protocol": proto.label(), "selected_on_scored_split": proto.selects_on_scored_split,
                   "origin_known": reported.origin_known(r), "implementation": impl,
                   "ours_mean": repr(float(np.mean(ours))) if ours else "",
                   "ours_std": repr(float(np.std(ours, ddof=1))) if len(ours) > 1 else "",
                   "n_seeds": len(ours), "ours_n_cases": n_cases,
                   "diff": "" if shown_diff is None else repr(shown_diff), "verdict": v, "source": r["source"],
                   "evidence": r.get("evidence", "")}
            (known if reported.origin_known(r) else unknown).append((row, rec))
    rows = [row for row, _ in known]
    if unknown:
        rows.append(["values of unknown origin (quoted or re-run by others, not verified against a source)",
                     *[""] * (len(header) - 1)])
        rows += [row for row, _ in unknown]
    caption = (f"Reproduction on {dataset.upper()}: every reported Dice of the dataset beside each implementation "
               "of its method in this grid (ours; the authors' own code where it ran), read under the reported "
               "value's own protocol: checkpoint rule @ the split it was scored on (final: the last weights; "
               "best(S): the best score on split S during training; valtest: validation and test cases together), "
               "with its case count and post-processing. A selection made on the scored split is marked: it is "
               f"optimistic. Mean ± std over seeds. Verdict: reproduced when |Δ| <= {tol:g} Dice points "
               "(reproduction_tolerance), not reproduced otherwise; not comparable (no Δ) when the protocol is not "
               "stated, the value was post-processed, or the data or schedule differ from the paper's. Our "
               f"schedule: {schedule_text(grid, dataset)}. Values of unknown origin are listed apart."
               + ("" if rows_in else f" No source in {Path(str(grid.get('reported', 'the reported results'))).name} "
                  f"reports a Dice for {dataset.upper()}.")
               + _synthetic_note(grid, dataset))
    return TextTable(f"reproduction_{dataset}", caption, header, rows,
                     [rec for _, rec in known] + [rec for _, rec in unknown], fields)


# ------------------------------------------------------------------ rendering

NUMBER = re.compile(r"^[\s+\-−–(]*(\d|–$|$)")   # a number, a signed number, or empty ("–")


def text_columns(t: TextTable) -> list[bool]:
    """Which columns hold text (left-aligned) rather than numbers (right-aligned)."""
    return [i < 1 or not all(NUMBER.match(str(r[i])) for r in t.rows) for i in range(len(t.header))]


def to_markdown(t: TextTable) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = [f"**Table {t.name}.** {t.caption}", "", "| " + " | ".join(map(esc, t.header)) + " |",
             "|" + "|".join(":---" if text else "---:" for text in text_columns(t)) + "|"]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in t.rows]
    if not t.rows:
        lines.append("| " + " | ".join(["(none)"] + [""] * (len(t.header) - 1)) + " |")
    return "\n".join(lines) + "\n"


def to_html(t: TextTable) -> str:
    from .tables import _HTML_STYLE
    e = html.escape
    cls = [' class="t"' if text else "" for text in text_columns(t)]
    head = "".join(f"<th{k}>{e(h)}</th>" for k, h in zip(cls, t.header))
    body = "\n".join("<tr>" + "".join(f"<td{k}>{e(c)}</td>" for k, c in zip(cls, r)) + "</tr>" for r in t.rows)
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{e(t.name)}</title>'
            f"<style>{_HTML_STYLE}</style></head><body>\n<table>\n"
            f"<caption><b>Table {e(t.name)}.</b> {e(t.caption)}</caption>\n<thead><tr>{head}</tr></thead>\n"
            f"<tbody>\n{body}\n</tbody></table>\n</body></html>\n")


def to_csv(t: TextTable) -> str:
    buf = io.StringIO()
    fields = list(dict.fromkeys([*t.fields, *(k for r in t.records for k in r)])) or ["table"]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(t.records)
    return buf.getvalue()


def write_evidence(grid: dict[str, Any], dataset: str, out_dir: str | Path, n_boot: int = 10000) -> list[str]:
    """Write the three tables (``<out_dir>/tables/<name>.{md,html,csv}``) and the
    protocol-curve figure (``<out_dir>/figures/protocol_curves_<dataset>.*``);
    returns the table names."""
    out = Path(out_dir)
    names = []
    for t in (protocol_table(grid, dataset), paired_table(grid, dataset, n_boot), reproduction_table(grid, dataset)):
        for suffix, render in ((".md", to_markdown), (".html", to_html), (".csv", to_csv)):
            write_text(out / "tables" / f"{t.name}{suffix}", render(t))
        names.append(t.name)
    from .figures import protocol_curves
    protocol_curves(grid, dataset, out / "figures" / f"protocol_curves_{dataset}")
    return names
