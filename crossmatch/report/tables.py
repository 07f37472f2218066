"""Result tables: one model (``build_table``) rendered as Markdown, LaTeX, HTML
(the Snakemake report shows it) and tidy CSV.

Layout (both table kinds): one row per method (comparison) or variant
(ablation); one column group per labeled count (comparison tables add an
``all`` group for the fully supervised upper bound); in each group Dice (%),
Jaccard (%), 95HD and ASD in voxels, plus 95HD and ASD in mm when every run
of the table has them (its data carries voxel spacing).

A cell is the mean +- sample std (ddof=1) over seeds of each run's mean over
test cases and foreground classes. Bold: the best mean of a column among the
rows that are not a fully supervised upper bound (``labels_all``), when at
least two such rows have a value. A comparison row whose (method, dataset,
labeled) appears in the reported-results CSV gets a row beneath it with the
reported value and Delta = ours - reported; distances are compared only when
the reported units match the column's (otherwise the cell says so).
"""
from __future__ import annotations

import csv
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io import write_text
from . import collect, reported
from .collect import METRICS_MM, METRICS_VOX, Metric, Stat

Cell = tuple[str, str]  # (labeled, metric key)


@dataclass
class Reported:
    value: float
    units: str
    source: str
    diff: float | None          # ours - reported; None when not comparable
    note: str = ""              # why no difference is given
    protocol: str = ""          # the reported value's selection protocol (reported_results.csv)
    ours_under_protocol: float | None = None   # our Dice (%) under that protocol (crossmatch.protocols)


@dataclass
class Row:
    label: str
    method: str
    upper_bound: bool
    stats: dict[Cell, Stat]
    reported: dict[Cell, Reported] = field(default_factory=dict)
    reported_sources: list[str] = field(default_factory=list)


@dataclass
class Table:
    name: str
    kind: str
    dataset: str
    checkpoint: str
    title: str
    row_header: str
    groups: list[str]
    metrics: tuple[Metric, ...]
    rows: list[Row]
    bold: set[tuple[int, str, str]]
    caption: str
    notes: list[str]

    @property
    def columns(self) -> list[Cell]:
        return [(g, m.key) for g in self.groups for m in self.metrics]


def _fmt(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "–"
    return f"{x:+.2f}".replace("-", "−") if signed else f"{x:.2f}"


def _group_label(labeled: str) -> str:
    return "all labeled (upper bound)" if labeled == "all" else f"{labeled} labeled"


def _reported_for(reported_rows: list[dict[str, Any]], method: str, dataset: str, groups: list[str],
                  metrics: tuple[Metric, ...], stats: dict[Cell, Stat], checkpoint: str, not_comparable: str = "",
                  under: dict[str, list[dict[str, Any]]] | None = None,
                  where: str = "reported results") -> tuple[dict[Cell, Reported], list[str]]:
    """The reported values of (method, dataset, labeled), placed in the column of
    matching units, each with its protocol (``report.reported``). A Dice gets
    Δ against ours read under its own protocol, from ``under`` (labeled -> the
    cell's protocol summaries); the other metrics only where the reported
    protocol is this table's own (best(val)@test or final@test). Otherwise, and
    where ``not_comparable`` says why, no difference is given, and the cell says why."""
    table_protocol = "best(val)@test" if checkpoint == "best" else "final@test"
    out: dict[Cell, Reported] = {}
    sources: list[str] = []
    for r in reported_rows:
        if r["method"] != method or r["dataset"] != dataset or r["labeled"] not in groups:
            continue
        proto = reported.protocol_of(r, where)
        note = f"{r['source']} (protocol: {proto.describe()})"
        if note not in sources:
            sources.append(note)
        units = r.get("units", "") or "voxel"
        summaries = (under or {}).get(r["labeled"]) or []
        for key in ("dice", "jaccard", "hd95", "asd"):
            if not r.get(key):
                continue
            value = float(r[key])
            cands = [m for m in metrics if m.reported_key == key]
            match = next((m for m in cands if m.unit in ("%", units)), None)
            if match is None:  # no column in the reported units: show it, do not compare
                out[(r["labeled"], cands[0].key)] = Reported(
                    value, units, r["source"], None, f"units differ: {units} vs {cands[0].unit}, not compared",
                    proto.label())
                continue
            ours = own = None
            why = ""
            if key == "dice" and summaries:
                scores = [reported.our_score(s, proto) for s in summaries]
                if None not in scores:
                    ours = own = 100 * sum(scores) / len(scores)
            elif proto.label() == table_protocol and proto.postproc == "none":
                ours = stats.get((r["labeled"], match.key), Stat(None, None, 0)).mean
            if not proto.known:
                why = "protocol not stated"
            elif proto.postproc != "none":
                why = f"post-processing {proto.postproc}"
            elif ours is None:
                why = "no value of ours under it" if key == "dice" else f"other protocol than {table_protocol}"
            elif not_comparable:
                why = "not comparable"
            out[(r["labeled"], match.key)] = Reported(
                value, units if match.unit != "%" else "%", r["source"],
                None if why else ours - value, why, proto.label(), own)
    return out, sources


def _bold(rows: list[Row], columns: list[Cell], metrics: tuple[Metric, ...]) -> set[tuple[int, str, str]]:
    better = {m.key: m.higher_better for m in metrics}
    out: set[tuple[int, str, str]] = set()
    for g, key in columns:
        vals = [(i, r.stats[(g, key)].mean) for i, r in enumerate(rows)
                if not r.upper_bound and (g, key) in r.stats and r.stats[(g, key)].mean is not None]
        if len(vals) < 2:
            continue
        best = (max if better[key] else min)(v for _, v in vals)
        out |= {(i, g, key) for i, v in vals if v == best}
    return out


def build_table(grid: dict[str, Any], name: str, checkpoint: str = "best") -> Table:
    """Collect every run of table ``name`` (``eval/<checkpoint>/summary.json``) into a Table."""
    spec = collect.find_table(grid, name)
    dataset, kind = spec["dataset"], spec["kind"]
    groups = list(spec["labeled"])
    for row in spec["rows"]:
        groups += [g for g in row["cells"] if g not in groups]
    summaries = {rid: collect.load_summary(grid, rid, checkpoint)
                 for row in spec["rows"] for ids in row["cells"].values() for rid in ids}
    collect.same_cases(summaries, f"table {name}")
    has_mm = all(collect.summary_mean(s, "hd95_mm") is not None for s in summaries.values())
    metrics = METRICS_VOX + (METRICS_MM if has_mm else ())
    reported_rows = collect.load_reported(grid) if kind == "comparison" else []
    from .evidence import not_comparable, protocol_summaries
    reason = not_comparable(grid, dataset) if reported_rows else ""

    rows: list[Row] = []
    for row in spec["rows"]:
        stats = {(g, m.key): collect.aggregate([collect.summary_mean(summaries[rid], m.key) for rid in ids],
                                               m.scale)
                 for g, ids in row["cells"].items() for m in metrics}
        method = row.get("method", "")
        under = protocol_summaries(grid, row) if method and reported_rows else {}
        rep, sources = (_reported_for(reported_rows, method, dataset, groups, metrics, stats, checkpoint, reason,
                                      under, str(grid.get("reported")))
                        if method else ({}, []))
        rows.append(Row(str(row["label"]), method, collect.is_upper_bound(row), stats, rep, sources))

    columns = [(g, m.key) for g in groups for m in metrics]
    title = (f"Comparison on {dataset.upper()}" if kind == "comparison"
             else f"Ablation: {spec.get('title', name)} ({dataset.upper()})")
    caption = _caption(grid, spec, title, checkpoint, summaries, has_mm, any(r.reported for r in rows), reason)
    notes = list(dict.fromkeys(s for r in rows for s in r.reported_sources))
    return Table(name, kind, dataset, checkpoint, title,
                 "Method" if kind == "comparison" else str(spec.get("xlabel") or "Variant"),
                 groups, metrics, rows, _bold(rows, columns, metrics), caption, notes)


def _units(dataset: str) -> str:
    """Distances are in pixels on single 2D images (ISIC), in voxels on volumes."""
    from ..data.specs import get_spec
    return "pixels" if get_spec(dataset).single_images else "voxels"


def _partial_data(grid: dict[str, Any], spec: dict[str, Any]) -> str:
    """The caption's statement of an opted-in partial dataset, or ''."""
    ids = [rid for row in spec["rows"] for c in row["cells"].values() for rid in c]
    if not any(grid["experiments"][rid]["config"]["dataset"].get("missing_cases") == "subset" for rid in ids):
        return ""
    return (f"PARTIAL DATA: {spec['dataset'].upper()} ran with dataset.missing_cases: subset, on the cases "
            "present; listed cases absent from the data were dropped (each run's config.yaml notes say how "
            "many), so these numbers are not the standard split's.")


def _caption(grid: dict[str, Any], spec: dict[str, Any], title: str, checkpoint: str,
             summaries: dict[str, dict[str, Any]], has_mm: bool, any_reported: bool, not_comparable: str = "") -> str:
    seeds = sorted({len(ids) for row in spec["rows"] for ids in row["cells"].values()})
    n_seeds = f"n = {seeds[0]}" if len(seeds) == 1 else f"n = {seeds[0]}–{seeds[-1]}"
    n_test = sorted({int(s.get("n_test_cases") or s.get("n_cases") or 0) for s in summaries.values()})
    selection = ("best: the iteration with the highest validation mean Dice, selected on the "
                 "validation split only (the test split is never used for selection)"
                 if checkpoint == "best" else "final: the weights after the last training iteration")
    one = seeds[-1] == 1
    cells = (f"Cells: the value of n = 1 seed ({', '.join(map(str, grid.get('seeds', [])))}; no std) of "
             if one else
             f"Cells: mean ± sample std (ddof=1) over {n_seeds} seeds"
             f" ({', '.join(map(str, grid.get('seeds', [])))}) of ")
    if checkpoint == "best" and any("disabled" in str(s.get("selection", "")) for s in summaries.values()):
        selection += "; runs trained without validation use their final weights"
    parts = [
        f"{title}, test split ({', '.join(map(str, n_test))} cases).",
        *([partial] if (partial := _partial_data(grid, spec)) else []),
        f"Checkpoint {selection}.",
        cells + "each run's mean over test cases and foreground classes.",
        f"Dice and Jaccard in %; 95HD and ASD in {_units(spec['dataset'])}"
        + (" and in mm." if has_mm else " (mm not shown: not every run's data carries voxel spacing)."),
        "Bold: best per column" + (", excluding the fully supervised upper bound."
                                   if any(collect.is_upper_bound(r) for r in spec["rows"]) else "."),
    ]
    if any_reported and not_comparable:
        parts.append(f"Rows 'reported' give published values (sources and their protocols below the table), "
                     f"not compared with ours: {not_comparable}; see reproduction_{spec['dataset']}.")
    elif any_reported:
        parts.append("Rows 'reported' give published values (sources and their protocols below the table) with "
                     "Δ = ours − reported under this table's checkpoint; distances are compared only where the "
                     f"units match. Ours under each value's own protocol: reproduction_{spec['dataset']}.")
    if collect.is_synthetic(grid, spec["dataset"]):
        parts.append("SYNTHETIC PHANTOM DATA — not comparable to the paper.")
    return " ".join(parts)


# ---------------------------------------------------------------- rendering

def _cell_text(t: Table, i: int, cell: Cell, bold: tuple[str, str], pm: str) -> str:
    s = t.rows[i].stats.get(cell)
    if s is None or s.mean is None:
        return "–"
    text = _fmt(s.mean) + (f"{pm}{_fmt(s.std)}" if s.std is not None else "")
    return f"{bold[0]}{text}{bold[1]}" if (i, *cell) in t.bold else text


def _reported_text(rep: Reported | None, delta: str) -> str:
    if rep is None:
        return ""
    unit = f" {rep.units}" if rep.units == "mm" else ""
    own = f"; ours under it {_fmt(rep.ours_under_protocol)}" if rep.ours_under_protocol is not None else ""
    proto = f" [{rep.protocol}{own}]" if rep.protocol else ""
    if rep.diff is None:
        return f"{_fmt(rep.value)}{unit}{proto} ({rep.note})"
    return f"{_fmt(rep.value)}{proto} ({delta} {_fmt(rep.diff, signed=True)})"


def to_markdown(t: Table) -> str:
    arrow = {True: "↑", False: "↓"}
    head = [t.row_header] + [f"{_group_label(g)}: {m.label} {arrow[m.higher_better]}"
                             for g in t.groups for m in t.metrics]
    lines = [f"**Table {t.name}.** {t.caption}", "", "| " + " | ".join(head) + " |",
             "|" + "|".join([":---"] + ["---:"] * len(t.columns)) + "|"]
    for i, r in enumerate(t.rows):
        cells = [_cell_text(t, i, c, ("**", "**"), " ± ") for c in t.columns]
        lines.append("| " + " | ".join([_md_escape(r.label)] + cells) + " |")
        if r.reported:
            cells = [_md_escape(_reported_text(r.reported.get(c), "Δ")) for c in t.columns]
            lines.append("| " + " | ".join([_md_escape(_reported_label(t, r))] + cells) + " |")
    if t.notes:
        lines += [""] + [f"[{j}] {_md_escape(n)}  " for j, n in enumerate(t.notes, 1)]
    return "\n".join(lines) + "\n"


def _reported_label(t: Table, r: Row) -> str:
    refs = ",".join(str(t.notes.index(s) + 1) for s in r.reported_sources)
    return f"↳ {r.label} reported [{refs}]"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                "τ": r"$\tau$", "η": r"$\eta$", "λ": r"$\lambda$", "α": r"$\alpha$", "Δ": r"$\Delta$",
                "±": r"$\pm$", "−": r"$-$", "—": "---", "–": "--", "↑": r"$\uparrow$",
                "↓": r"$\downarrow$", "↳": r"$\hookrightarrow$"}


def tex_escape(text: str) -> str:
    """Escape LaTeX special characters and map the few Unicode symbols the tables use."""
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(t: Table) -> str:
    k = len(t.metrics)
    arrow = {True: r"$\uparrow$", False: r"$\downarrow$"}
    groups = " & ".join(rf"\multicolumn{{{k}}}{{c}}{{{tex_escape(_group_label(g))}}}" for g in t.groups)
    rules = "".join(rf"\cmidrule(lr){{{2 + j * k}-{1 + (j + 1) * k}}}" for j in range(len(t.groups)))
    metric_head = " & ".join(f"{tex_escape(m.label)} {arrow[m.higher_better]}" for _ in t.groups for m in t.metrics)
    lines = [
        "% requires \\usepackage{booktabs} (and graphicx for \\resizebox)",
        r"\begin{table*}[t]",
        r"\centering",
        rf"\caption{{{tex_escape(t.caption)}}}",
        rf"\label{{tab:{t.name.replace('_', '-')}}}",
        r"\resizebox{\textwidth}{!}{%",
        rf"\begin{{tabular}}{{l{'c' * len(t.columns)}}}",
        r"\toprule",
        rf" & {groups} \\",
        rules,
        rf"{tex_escape(t.row_header)} & {metric_head} \\",
        r"\midrule",
    ]
    for i, r in enumerate(t.rows):
        if r.upper_bound and i and not t.rows[i - 1].upper_bound:
            lines.append(r"\midrule")
        cells = [_cell_text(t, i, c, (r"\mathbf{", "}"), r" \pm ") for c in t.columns]
        cells = [f"${c}$" if c != "–" else "--" for c in cells]
        lines.append(" & ".join([tex_escape(r.label)] + cells) + r" \\")
        if r.reported:
            cells = [tex_escape(_reported_text(r.reported.get(c), "Δ")) for c in t.columns]
            lines.append(" & ".join([rf"\quad\textit{{{tex_escape(_reported_label(t, r))}}}"] + cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}"]
    if t.notes:
        lines.append(r"\par\smallskip\footnotesize Reported: "
                     + "; ".join(f"[{j}] {tex_escape(n)}" for j, n in enumerate(t.notes, 1)) + ".")
    lines.append(r"\end{table*}")
    return "\n".join(lines) + "\n"


_HTML_STYLE = ("body{font-family:sans-serif;font-size:13px;margin:12px}table{border-collapse:collapse}"
               "th,td{border-bottom:1px solid #ddd;padding:3px 8px;text-align:right;white-space:nowrap}"
               "th:first-child,td:first-child{text-align:left}th[colspan]{text-align:center}"
               "th.t,td.t{text-align:left;white-space:normal;max-width:40em}"
               "tr.reported td{color:#555;font-style:italic;white-space:normal}"
               "caption{caption-side:top;text-align:left;max-width:70em;padding-bottom:8px}")


def to_html(t: Table) -> str:
    """A self-contained page (the report's table view): caption, a header row per
    column group and metric, bold as in the other renderings, reported rows in italics."""
    esc = html.escape
    arrow = {True: "↑", False: "↓"}
    k = len(t.metrics)
    groups = "".join(f'<th colspan="{k}">{esc(_group_label(g))}</th>' for g in t.groups)
    metrics = "".join(f"<th>{esc(m.label)} {arrow[m.higher_better]}</th>" for _ in t.groups for m in t.metrics)
    rows = []
    for i, r in enumerate(t.rows):
        cells = "".join(f"<td>{_cell_text(t, i, c, ('<b>', '</b>'), ' ± ')}</td>" for c in t.columns)
        rows.append(f"<tr><td>{esc(r.label)}</td>{cells}</tr>")
        if r.reported:
            cells = "".join(f"<td>{esc(_reported_text(r.reported.get(c), 'Δ'))}</td>" for c in t.columns)
            rows.append(f'<tr class="reported"><td>{esc(_reported_label(t, r))}</td>{cells}</tr>')
    notes = "".join(f"<li>[{j}] {esc(n)}</li>" for j, n in enumerate(t.notes, 1))
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{esc(t.name)}</title>'
            f"<style>{_HTML_STYLE}</style></head><body>\n<table>\n"
            f"<caption><b>Table {esc(t.name)}.</b> {esc(t.caption)}</caption>\n"
            f"<thead><tr><th></th>{groups}</tr><tr><th>{esc(t.row_header)}</th>{metrics}</tr></thead>\n"
            f"<tbody>\n" + "\n".join(rows) + "\n</tbody></table>\n"
            + (f'<ul style="list-style:none;padding:0">{notes}</ul>\n' if notes else "") + "</body></html>\n")


CSV_FIELDS = ("table", "dataset", "checkpoint", "row", "method", "labeled", "metric", "unit", "mean", "std",
              "n_seeds", "reported", "reported_units", "reported_source", "reported_protocol",
              "ours_under_protocol", "diff", "note")


def to_csv(t: Table) -> str:
    """Tidy: one line per (table, row, labeled, metric) the table has a cell for."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    units = {m.key: m.unit for m in t.metrics}
    for r in t.rows:
        for (g, key), s in r.stats.items():
            rep = r.reported.get((g, key))
            w.writerow({"table": t.name, "dataset": t.dataset, "checkpoint": t.checkpoint, "row": r.label,
                        "method": r.method, "labeled": g, "metric": key, "unit": units[key],
                        "mean": "" if s.mean is None else repr(s.mean),
                        "std": "" if s.std is None else repr(s.std), "n_seeds": s.n,
                        "reported": "" if rep is None else repr(rep.value),
                        "reported_units": "" if rep is None else rep.units,
                        "reported_source": "" if rep is None else rep.source,
                        "reported_protocol": "" if rep is None else rep.protocol,
                        "ours_under_protocol": "" if rep is None or rep.ours_under_protocol is None
                        else repr(rep.ours_under_protocol),
                        "diff": "" if rep is None or rep.diff is None else repr(rep.diff),
                        "note": "" if rep is None else rep.note})
    return buf.getvalue()


def write_table(grid: dict[str, Any], name: str, out_prefix: str | Path, checkpoint: str = "best") -> Table:
    """Write ``<prefix>.md``, ``.tex``, ``.html`` and ``.csv`` (each atomically)."""
    t = build_table(grid, name, checkpoint)
    prefix = str(out_prefix)
    for suffix, render in ((".md", to_markdown), (".tex", to_latex), (".html", to_html), (".csv", to_csv)):
        write_text(prefix + suffix, render(t))
    return t
