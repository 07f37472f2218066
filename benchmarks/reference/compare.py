"""Ours against the reference code at the same budget: per method and
checkpoint, the mean Dice over seeds on each side, the pooled standard
deviation, the difference and whether it is within one pooled std (the
acceptance of the fidelity issue). Reads ``summarise_runs.py`` JSONs.

  python benchmarks/reference/compare.py benchmarks/results/acdc_l3_cpu_bilinear.json \
      benchmarks/results/acdc_l3_cpu_reference.json [--out benchmarks/results/acdc_l3_cpu_parity.json]

Each side may be several summaries joined with commas (seeds run at different
times); a (method, checkpoint, seed) given twice on one side is an error. A
run trained with its own ``train.data_seed`` counts as a run of its own
("<seed>/data<k>"): its data stream is not that of the run of its seed.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from crossmatch.provenance import record


def run_key(row: dict) -> int | str:
    """A run's name on its side: its seed, with its data seed where it set one."""
    return row["seed"] if row.get("data_seed") is None else f"{row['seed']}/data{row['data_seed']}"


def dice_by_seed(paths: str) -> dict[tuple[str, str], dict[int | str, float]]:
    out: dict[tuple[str, str], dict[int | str, float]] = {}
    for path in paths.split(","):
        for r in json.loads(Path(path).read_text())["runs"]:
            seeds = out.setdefault((r["method"], r["checkpoint"]), {})
            if (key := run_key(r)) in seeds:
                raise SystemExit(f"{path}: {r['method']}/{r['checkpoint']} seed {key} given twice")
            seeds[key] = r["dice"]
    return out


def pooled_std(a: list[float], b: list[float]) -> float | None:
    """sqrt of the two samples' pooled variance (None with one seed on each side)."""
    dof = (len(a) - 1) + (len(b) - 1)
    if dof < 1:
        return None
    ss = sum((x - statistics.mean(a)) ** 2 for x in a) + sum((x - statistics.mean(b)) ** 2 for x in b)
    return math.sqrt(ss / dof)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ours", help="summaries_runs.py JSON(s) of our runs, comma-separated")
    p.add_argument("reference", help="the same for the reference code's runs")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    ours, ref = dice_by_seed(a.ours), dice_by_seed(a.reference)
    rows = []
    print("| method | checkpoint | ours (seeds) | reference (seeds) | difference | pooled std | within 1 std |")
    print("|---|---|---|---|---|---|---|")
    for key in sorted(set(ours) & set(ref)):
        x, y = list(ours[key].values()), list(ref[key].values())
        sd = pooled_std(x, y)
        diff = statistics.mean(x) - statistics.mean(y)
        within = None if sd is None else abs(diff) <= sd
        rows.append({"method": key[0], "checkpoint": key[1], "ours": ours[key], "reference": ref[key],
                     "ours_mean": statistics.mean(x), "reference_mean": statistics.mean(y),
                     "difference": diff, "pooled_std": sd, "within_one_pooled_std": within})
        fmt = lambda d: f"{100 * statistics.mean(d.values()):.1f} ({', '.join(f'{100 * v:.1f}' for v in d.values())})"  # noqa: E731
        print(f"| {key[0]} | {key[1]} | {fmt(ours[key])} | {fmt(ref[key])} | {100 * diff:+.1f} | "
              f"{'-' if sd is None else f'{100 * sd:.1f}'} | {'-' if within is None else within} |")
    if a.out:
        a.out.write_text(json.dumps({"ours": a.ours.split(","), "reference": a.reference.split(","), "rows": rows,
                                         "provenance": record()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
