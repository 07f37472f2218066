"""Tables and figures from the experiment grid (``grid.json``) and its run folders.

Python API::

    write_table(grid, "comparison_acdc", "results/tables/comparison_acdc", checkpoint="best")
    ablation_figure(grid, "ablation_tau", "results/figures/ablation_tau")
    training_curves(grid, "acdc", "results/figures/curves_acdc")
    qualitative(grid, "acdc", "results/figures/qualitative_acdc", n_cases=3)

Command line (``main(argv)``, mounted as ``crossmatch report ...``)::

    report table --grid G --name N --out PREFIX [--checkpoint best|final] [--runs SUMMARY ...]
    report figure --grid G --name N --out PREFIX [--checkpoint best|final]
    report curves --grid G --dataset D --out PREFIX
    report qualitative --grid G --dataset D --out PREFIX [--cases 3] [--checkpoint best|final]
    report evidence --grid G --dataset D --out RESULTS [--runs PROTOCOL_SUMMARY ...]
    report archive RESULTS DEST [--config CONFIG]   (a workflow's light outputs, committed)
    report rebuild [DEST ...]                       (their tables again; default: every evidence/*/)

``evidence`` writes ``RESULTS/tables/{protocols,paired,reproduction}_D.{md,html,csv}``
and ``RESULTS/figures/protocol_curves_D.{png,pdf,txt}`` (``crossmatch.report.evidence``).
Tables write ``PREFIX.md``, ``.tex``, ``.html``, ``.csv``; figures write
``PREFIX.png`` (150 dpi), ``PREFIX.pdf`` and a one-line caption ``PREFIX.txt``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from .tables import build_table, write_table

__all__ = ["ablation_figure", "build_table", "configure_parser", "main", "qualitative", "run",
           "training_curves", "write_table"]


def ablation_figure(*args: Any, **kwargs: Any) -> None:
    from .figures import ablation_figure as f  # matplotlib loads only when a figure is drawn
    f(*args, **kwargs)


def training_curves(*args: Any, **kwargs: Any) -> None:
    from .figures import training_curves as f
    f(*args, **kwargs)


def qualitative(*args: Any, **kwargs: Any) -> list[str]:
    from .figures import qualitative as f
    return f(*args, **kwargs)


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the report sub-commands to ``parser`` (e.g. the ``crossmatch report`` sub-parser)."""
    sub = parser.add_subparsers(dest="report_command", required=True,
                                metavar="{table,figure,curves,qualitative,evidence,archive,rebuild}")

    def common(name: str, help_: str, key: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help_, description=help_)
        s.add_argument("--grid", required=True, help="grid.json written by the workflow (crossmatch.grid.expand)")
        if key == "name":
            s.add_argument("--name", required=True, help="table name in the grid, e.g. comparison_acdc, ablation_tau")
        else:
            s.add_argument("--dataset", required=True, help="dataset of a comparison table, e.g. acdc")
        s.add_argument("--out", required=True, help="output prefix; suffixes are added")
        s.add_argument("--runs", nargs="+", metavar="SUMMARY", help="read only these runs: their "
                       "eval/<checkpoint>/summary.json (the workflow passes its rule's inputs); "
                       "default: every run of the table under the grid's results folder")
        return s

    def checkpoint(s: argparse.ArgumentParser) -> None:
        s.add_argument("--checkpoint", default="best", choices=("best", "final"),
                       help="best: selected on the validation split (default); final: last iteration")

    checkpoint(common("table", "write PREFIX.md/.tex/.html/.csv of one grid table", "name"))
    checkpoint(common("figure", "plot an ablation table: PREFIX.png/.pdf/.txt", "name"))
    common("curves", "training loss and validation Dice vs iteration: PREFIX.png/.pdf/.txt", "dataset")
    s = common("qualitative", "image, ground truth and predictions overlays: PREFIX.png/.pdf/.txt", "dataset")
    s.add_argument("--cases", type=int, default=3, help="number of test cases (rows)")
    checkpoint(s)
    s = common("evidence", "protocol-gap, paired-statistics and reproduction tables and the protocol-curve "
                           "figure of a dataset, from its runs' eval/protocols/summary.json", "dataset")
    s.add_argument("--bootstrap", type=int, default=10000, help="bootstrap draws of the paired CIs")
    s = sub.add_parser("archive", help="copy a finished workflow's light outputs (no checkpoints) with their "
                                       "provenance, to commit them", description="crossmatch.report.archive")
    s.add_argument("results", help="the workflow's results folder, e.g. results/acdc_cpu_fidelity")
    s.add_argument("dest", help="where the archive goes, e.g. evidence/acdc_cpu_fidelity")
    s.add_argument("--config", default="", help="the workflow config it ran (recorded)")
    s = sub.add_parser("rebuild", help="rebuild every table of committed archives from their files alone "
                                       "(no training)", description="crossmatch.report.archive")
    s.add_argument("dest", nargs="*", help="archives (default: every evidence/*/ of this checkout)")
    return parser


def run(args: argparse.Namespace) -> None:
    """Execute parsed report arguments."""
    if args.report_command in ("archive", "rebuild"):
        from . import archive
        if args.report_command == "archive":
            dest = archive.collect(args.results, args.dest, args.config)
            print(f"{args.results} -> {dest} (light outputs and provenance.json)")
        for dest in ([args.dest] if args.report_command == "archive" else args.dest or archive.archives()):
            tables = archive.rebuild(dest)
            print(f"{dest}: {len(tables)} tables rebuilt -> {dest}/tables")
        return
    from ..grid import load_grid
    grid = load_grid(args.grid)
    if args.runs:
        from .collect import with_runs
        grid = with_runs(grid, args.runs)
    cmd = args.report_command
    if cmd == "table":
        write_table(grid, args.name, args.out, checkpoint=args.checkpoint)
    elif cmd == "figure":
        ablation_figure(grid, args.name, args.out, checkpoint=args.checkpoint)
    elif cmd == "evidence":
        from .evidence import write_evidence
        write_evidence(grid, args.dataset, args.out, n_boot=args.bootstrap)
    elif cmd == "curves":
        training_curves(grid, args.dataset, args.out)
    else:
        qualitative(grid, args.dataset, args.out, n_cases=args.cases, checkpoint=args.checkpoint)


def main(argv: Sequence[str] | None = None) -> int:
    """``crossmatch report ...``: returns 0, or prints a CrossMatchError and returns 1."""
    from ..errors import CrossMatchError
    parser = configure_parser(argparse.ArgumentParser(prog="crossmatch report", description=__doc__.split("\n")[0]))
    args = parser.parse_args(argv)
    try:
        run(args)
    except CrossMatchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


cli_main = main
