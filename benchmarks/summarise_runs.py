"""Collect ``<runs>/<method>/s<seed>/eval/<checkpoint>/summary.json`` into one
JSON file and print a Markdown table (Dice in %, mean over the test cases;
per method also mean ± std over seeds).

  python benchmarks/summarise_runs.py results/runs/acdc_l3_cpu --out benchmarks/results/acdc_l3_cpu.json
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

import yaml

from crossmatch.provenance import record


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def median_step_seconds(log_csv: Path) -> float | None:
    """Median time of one iteration from the run's log (cumulative ``seconds``):
    unlike the mean (``seconds_per_iteration``) it leaves out validation and
    checkpoint iterations, and short stretches when another job shared the CPU."""
    if not log_csv.is_file():
        return None
    with log_csv.open() as f:
        seconds = [float(r["seconds"]) for r in csv.DictReader(f)]
    steps = [b - a for a, b in zip(seconds, seconds[1:])]
    return statistics.median(steps) if steps else None


def data_seed(run: Path) -> int | None:
    """The run's ``train.data_seed`` when it set one (its data stream then is not
    its seed's: a run of its own, also beside another run of the same seed)."""
    cfg = run / "config.yaml"
    if not cfg.is_file():
        return None
    return ((yaml.safe_load(cfg.read_text()) or {}).get("train") or {}).get("data_seed")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    rows = []
    for path in sorted(a.runs.glob("*/s*/eval/*/summary.json")):
        s = json.loads(path.read_text())
        method, seed, ckpt = path.parts[-5], int(path.parts[-4][1:]), path.parts[-2]
        per = {n: s["per_class"][str(i + 1)]["dice"]["mean"] for i, n in enumerate(s["class_names"])}
        rows.append({"method": method, "seed": seed, "checkpoint": ckpt, "iteration": s["iteration"],
                     "dice": s["mean"]["dice"]["mean"], "per_class_dice": per,
                     "hd95_vox": s["mean"]["hd95_vox"]["mean"], "asd_vox": s["mean"]["asd_vox"]["mean"],
                     "train_minutes": s.get("train_seconds", 0) / 60,
                     "seconds_per_iteration": s.get("seconds_per_iteration"),
                     "median_step_seconds": median_step_seconds(path.parents[2] / "log.csv"),
                     "n_test_cases": s["n_test_cases"],
                     **({} if (ds := data_seed(path.parents[2])) is None else {"data_seed": ds})})
    if not rows:
        raise SystemExit(f"no evaluated runs under {a.runs}")
    names = list(rows[0]["per_class_dice"])
    print("| method | seed | checkpoint | mean Dice | " + " | ".join(names) +
          " | HD95 (vox) | s/iteration | median step (s) | training (min) |")
    print("|---" * (9 + len(names)) + "|")
    for r in rows:
        seed = r["seed"] if "data_seed" not in r else f"{r['seed']} (data {r['data_seed']})"
        print(f"| {r['method']} | {seed} | {r['checkpoint']} (it {r['iteration']}) | {pct(r['dice'])} | "
              + " | ".join(pct(r["per_class_dice"][n]) for n in names)
              + f" | {r['hd95_vox']:.1f} | {r['seconds_per_iteration']:.2f} | "
              + ("-" if r["median_step_seconds"] is None else f"{r['median_step_seconds']:.2f}")
              + f" | {r['train_minutes']:.1f} |")
    summary = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        for ckpt in ("final", "best"):
            d = [r["dice"] for r in rows if r["method"] == method and r["checkpoint"] == ckpt]
            if d:
                summary[f"{method}/{ckpt}"] = {"seeds": len(d), "mean": statistics.mean(d),
                                               "std": statistics.stdev(d) if len(d) > 1 else 0.0}
    print()
    for k, v in summary.items():
        print(f"- {k}: mean Dice {pct(v['mean'])} ± {pct(v['std'])} over {v['seeds']} seed(s)")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"runs": rows, "over_seeds": summary, "provenance": record()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
