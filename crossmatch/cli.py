"""Command line: ``crossmatch check-data | preprocess | splits | phantom | train | evaluate | protocols | report | config``.

Each sub-command is one call into the package; Snakemake rules call these
and nothing else. Errors meant for the user (bad data, bad config, a
diverged loss) are printed without a traceback and exit with status 2.
"""
from __future__ import annotations

import argparse
import errno
import os
import shlex
import sys

from .errors import CrossMatchError
from .runlock import hold

EPILOG_CONFIG = ("Config keys and defaults: `crossmatch config` (or docs/configuration.md). "
                 "Override any key with --set section.key=value, e.g. --set train.iterations=1500.")


def _check_data(a: argparse.Namespace) -> None:
    from .data.download import ensure_dataset
    r = ensure_dataset(a.dataset, a.raw, a.manifest, download=a.download, base_url=a.url,
                       stamp=a.stamp, allow_missing=a.allow_missing, allow_local=a.allow_local)
    print(f"{a.dataset}: {len(r.ok)} files verified, {len(r.missing)} missing under {a.raw}")


def _preprocess(a: argparse.Namespace) -> None:
    from . import config
    from .data.preprocess import preprocess
    d = config.load(a.config, a.set)["dataset"] if a.config or a.set else {}
    dataset = a.dataset or d.get("name")
    raw, out = a.raw or d.get("raw"), a.out or d.get("root")
    missing = a.missing_cases or d.get("missing_cases", config.default("dataset", "missing_cases"))
    split_dir = a.split_dir if a.split_dir is not None else d.get("split_dir")
    if not (dataset and raw and out):
        raise SystemExit("crossmatch preprocess: give --config, or --dataset, --raw and --out")
    m = preprocess(dataset, raw, out, missing, split_dir or None)
    print(f"{dataset}: {m['n_present']} of {m['n_listed']} listed cases written to {out}")


def _train(a: argparse.Namespace) -> None:
    from . import config
    from .train import checkpoint_hooks, train
    cfg = config.load(a.config, a.set)
    if a.print_config:
        import yaml
        print(yaml.safe_dump(cfg, sort_keys=False))
        return
    # the job's log opens with what it ran: the command and the config it read
    sets = "".join(f" --set {shlex.quote(x)}" for x in a.set)
    print(f"crossmatch train{f' --config {a.config}' if a.config else ''}{sets} --out {a.out}\n"
          f"experiment {config.experiment_id(cfg)}; resolved config -> {a.out}/config.yaml", flush=True)
    with hold(a.out, "train"):   # test-only hooks from the environment (crossmatch.train)
        path = train(cfg, a.out, stop_after=a.stop_after, on_checkpoint=checkpoint_hooks(dict(os.environ)),
                     restart_if_changed=a.restart_if_changed)
    print(f"checkpoint: {path}")


def _evaluate(a: argparse.Namespace) -> None:
    from .evaluate import evaluate_run
    from .layout import EVAL_CHECKPOINTS, Run
    if a.threads:
        import torch
        torch.set_num_threads(a.threads)
    for ckpt in (EVAL_CHECKPOINTS if a.checkpoint == "both" else (a.checkpoint,)):
        with hold(a.run, "evaluate"):
            s = evaluate_run(a.run, ckpt, a.device, save_predictions=not a.no_predictions, limit=a.limit)
        per = ", ".join(f"{n} {100 * s['per_class'][str(i + 1)]['dice']['mean']:.1f}"
                        for i, n in enumerate(s["class_names"]))
        timing = (f"; training {s['train_seconds'] / 60:.1f} min, {s['seconds_per_iteration']:.3f} s/it"
                  if "train_seconds" in s else "")
        print(f"{ckpt} (iteration {s['iteration']}): mean Dice {100 * s['mean']['dice']['mean']:.2f} "
              f"[{per}] on {s['n_test_cases']} test cases{timing} -> {Run(a.run).eval_dir(ckpt, bool(a.limit))}/"
              + (" (a limited evaluation: no table counts it)" if a.limit else ""))


def _protocols(a: argparse.Namespace) -> None:
    from .protocols import score_run
    if a.threads:
        import torch
        torch.set_num_threads(a.threads)
    with hold(a.run, "protocols"):
        s = score_run(a.run, a.device)
    parts = ", ".join(f"{name} {100 * p['test_dice']:.2f} (it {p['iteration']})" for name, p in s["protocols"].items())
    print(f"test mean Dice by protocol: {parts}; best_test - best_val "
          f"{100 * s['gap_best_test_minus_best_val']:+.2f} -> {a.run}/eval/protocols/")


def _splits(a: argparse.Namespace) -> None:
    from .data.preprocess import write_split_lists
    from .data.specs import get_spec
    out = a.out or get_spec(a.dataset).split_dir
    lists = write_split_lists(a.dataset, a.raw, out)
    print(f"{a.dataset}: {len(lists)} split lists written to {out}: "
          + ", ".join(f"{k} ({len(v)})" for k, v in lists.items()))


def _phantom(a: argparse.Namespace) -> None:
    from .data.phantoms import write_phantom
    summary = write_phantom(a.dataset, a.out, n_cases=a.cases, size=tuple(a.size) if a.size else None,
                            seed=a.seed)
    print(f"{a.dataset} phantom -> {a.out}/raw and {a.out}/splits: {summary}")


def _report(a: argparse.Namespace) -> None:
    from .report import run
    run(a)


def _config(a: argparse.Namespace) -> None:
    from .config import describe
    print(describe())


def build_parser() -> argparse.ArgumentParser:
    from .data.specs import DATASETS
    from .data.splits import MISSING_POLICIES
    p = argparse.ArgumentParser(prog="crossmatch", description="crossmatch-repro: data checks, preprocessing, "
                                "training, evaluation and reports of the CrossMatch reproduction (one sub-command "
                                "each; `crossmatch <command> --help` for its options)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("check-data", help="verify raw files against a manifest (optionally download)",
                       description="Check every file of a manifest (tab-separated relative path, "
                                   "size, sha256; config/manifests/) under --raw: size first, "
                                   "sha256 when the size matches. With --download --url, fetch "
                                   "missing or corrupt files (resumable, verified before use).")
    s.add_argument("--dataset", required=True, help="dataset name for messages and hints, e.g. acdc, la")
    s.add_argument("--raw", required=True, help="raw data folder the manifest paths are relative to")
    s.add_argument("--manifest", required=True, help="manifest TSV, e.g. config/manifests/la_uamt_h5.tsv")
    s.add_argument("--download", action="store_true", help="download missing or corrupt files from --url")
    s.add_argument("--url", help="base URL; a file is fetched from <url>/<relative path, percent-encoded>")
    s.add_argument("--allow-local", action="store_true",
                   help="accept a --url on this machine (file:// or http://localhost); otherwise https only")
    s.add_argument("--allow-missing", action="store_true",
                   help="absent files only warn (a subset copy); corrupt files still fail")
    s.add_argument("--stamp", help="write a JSON stamp (counts, manifest sha256) on success")
    s.set_defaults(func=_check_data)

    s = sub.add_parser("preprocess", help="validate raw data and write the preprocessed root",
                       description="Read the raw dataset, validate every case (readable, label range), "
                                   "write volumes/, slices/ (2D) and manifest.json.")
    s.add_argument("--config", help="experiment YAML: uses dataset.name, dataset.raw, dataset.root "
                   "and dataset.missing_cases (flags below override it)")
    s.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config key (repeatable)")
    s.add_argument("--dataset", choices=sorted(DATASETS))
    s.add_argument("--raw", help="raw data folder (acdc: SSL4MIS h5 volumes; "
                   "la: <CASE>/mri_norm2.h5; pancreas: images/PANCREAS_XXXX.nii.gz + "
                   "labels/labelXXXX.nii.gz; isic: ISIC2018_Task1-2_Training_Input/ + "
                   "ISIC2018_Task1_Training_GroundTruth/)")
    s.add_argument("--out", help="preprocessed root, e.g. results/data/acdc")
    s.add_argument("--missing-cases", choices=MISSING_POLICIES,
                   help="cases named in the split lists but absent: fail (default) or skip them")
    s.add_argument("--split-dir", help="folder of split lists laid out as crossmatch/splits/<dataset> "
                   "(default: the shipped standard lists)")
    s.set_defaults(func=_preprocess)

    s = sub.add_parser("splits", help="generate the split lists of pancreas or isic (once)",
                       description="Write the split lists of a dataset without community lists "
                                   "from its recorded seed: pancreas from its 82 case ids, isic "
                                   "from the 2594 image ids under --raw. The default --out is the "
                                   "shipped folder crossmatch/splits/<dataset>.")
    s.add_argument("--dataset", required=True, choices=("isic", "pancreas"))
    s.add_argument("--raw", help="raw data folder (isic: the ids are read from it)")
    s.add_argument("--out", help="output folder (default: crossmatch/splits/<dataset>)")
    s.set_defaults(func=_splits)

    s = sub.add_parser("phantom", help="write a small synthetic dataset in a real dataset's raw layout",
                       description="Write a synthetic stand-in (acdc: 2D cardiac-like; la: 3D "
                                   "atrium-like; pancreas: 3D CT-like NIfTI; isic: RGB "
                                   "dermoscopy-like JPEG/PNG) to OUT/raw in the dataset's raw format, with split "
                                   "lists in OUT/splits; feed it to `crossmatch preprocess "
                                   "--raw OUT/raw --split-dir OUT/splits`.")
    s.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--cases", type=int, default=None, help="number of cases (patients for acdc)")
    s.add_argument("--size", type=int, nargs="+", default=None, help="image size (2 or 3 numbers)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_phantom)

    s = sub.add_parser("train", help="train one experiment (resumes automatically)",
                       description="Train one experiment into --out. Re-running the same command "
                                   "resumes from the last checkpoint.", epilog=EPILOG_CONFIG)
    s.add_argument("--config", help="experiment YAML (sections dataset, model, method, train, eval)")
    s.add_argument("--out", required=False, help="run directory, e.g. results/runs/<experiment id>")
    s.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config key (repeatable)")
    s.add_argument("--stop-after", type=int, default=None,
                   help="stop after N iterations of this call (simulates an interruption)")
    s.add_argument("--restart-if-changed", action="store_true",
                   help="if --out holds a run with other settings, move it to --out/superseded/ and train "
                        "afresh (default: refuse; the workflow passes this flag)")
    s.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    s.set_defaults(func=_train)

    s = sub.add_parser("evaluate", help="evaluate a run on the test split",
                       description="Evaluate the final and/or best-on-validation checkpoint of a run "
                                   "on the test split; writes eval/<checkpoint>/metrics_per_case.csv, "
                                   "summary.json and predictions/.")
    s.add_argument("--run", required=True, help="run directory written by `crossmatch train`")
    s.add_argument("--checkpoint", default="both", choices=("final", "best", "both"))
    s.add_argument("--device", default="auto")
    s.add_argument("--no-predictions", action="store_true", help="do not save predicted label maps")
    s.add_argument("--limit", type=int, default=0, help="evaluate the first N test cases only, into eval/limited/ (no table counts it; 0: all)")
    s.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    s.set_defaults(func=_evaluate)

    s = sub.add_parser("protocols", help="score every snapshot of a run under the papers' protocols",
                       description="After training: score every validation-point snapshot of a run on its "
                                   "validation and test cases and pick each protocol's checkpoint (final, "
                                   "best_val, valtest, best_test); writes eval/protocols/curve.csv and "
                                   "summary.json, read by the report only (selection never reads them).")
    s.add_argument("--run", required=True, help="run directory written by `crossmatch train`")
    s.add_argument("--device", default="auto")
    s.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    s.set_defaults(func=_protocols)

    s = sub.add_parser("report", help="paper tables and figures from evaluated runs (grid.json)",
                       description="Tables (Markdown, LaTeX, CSV) and figures (PNG, PDF, caption "
                                   "TXT) of the workflow's grid.json.")
    from .report import configure_parser
    configure_parser(s)
    s.set_defaults(func=_report)

    s = sub.add_parser("config", help="print every config key with its default")
    s.set_defaults(func=_config)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train" and not args.out and not args.print_config:
        build_parser().error("train: --out is required")
    try:
        args.func(args)
    except CrossMatchError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: crossmatch {args.command} stopped; run it again to go on (training resumes "
              "from its last checkpoint; outputs are only ever replaced whole)", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: disk full writing {e.filename or 'a file'}: free space there and run again "
              "(training resumes from its last checkpoint)", file=sys.stderr)
        return 2
    return 0


def _one_line(e: CrossMatchError) -> str:
    """The message of ``e``; raised inside a data-loader worker, torch re-raises it
    with the worker's traceback in the message: keep only the original message."""
    text = str(e)
    tag = f"{type(e).__module__}.{type(e).__qualname__}: "
    return text.rsplit(tag, 1)[-1].strip() if "Original Traceback" in text and tag in text else text


if __name__ == "__main__":
    sys.exit(main())
