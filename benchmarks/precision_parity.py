"""Accuracy parity of two training precisions, paired by seed: the same
config and seed trained once in fp32 and once in bf16 (same data, same
augmentation draws) differ only by the arithmetic. Per method and checkpoint:
the paired Dice differences (bf16 minus fp32), their mean, the seed noise
(pooled std of the two sides over seeds) and whether the mean is within it;
one figure overlays the training loss and validation Dice of every pair.

  R=results/runs
  python benchmarks/precision_parity.py \
      --fp32 $R/acdc_l3_cpu_sup_nearest,$R/acdc_l3_cpu_cm_srctrain_s0,$R/acdc_l3_cpu_cm_srctrain_s1,$R/acdc_l3_cpu_cm_srctrain_s2 \
      --bf16 $R/acdc_l3_cpu_sup_bf16,$R/acdc_l3_cpu_cm_bf16_train_s0,$R/acdc_l3_cpu_cm_bf16_train_s1,$R/acdc_l3_cpu_cm_bf16_train_s2 \
      --out benchmarks/results/acdc_l3_cpu_bf16_parity.json

(the runs: ``compare_cpu.sh`` with ``EXTRA="--set train.precision=bf16"`` for
the bf16 side, one ``RUNS`` folder per seed; docs/training.md.)

Each side is one or more runs folders (``<folder>/<method>/s<seed>/``, as
``compare_cpu.sh`` writes them), comma-separated; only (method, seed) pairs
present on both sides count. The figure goes beside the JSON (``.png``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent / "reference"))
from compare import pooled_std  # noqa: E402
from crossmatch.provenance import record  # noqa: E402

CHECKPOINTS = ("final", "best")


def find_runs(folders: str) -> dict[tuple[str, int], Path]:
    """(method, seed) -> run folder, for every evaluated run under the folders."""
    runs: dict[tuple[str, int], Path] = {}
    for folder in folders.split(","):
        for summary in sorted(Path(folder).glob("*/s*/eval/final/summary.json")):
            run = summary.parents[2]
            key = (run.parent.name, int(run.name[1:]))
            if key in runs:
                raise SystemExit(f"{key[0]} seed {key[1]} found twice: {runs[key]} and {run}")
            runs[key] = run
    return runs


def score(run: Path, checkpoint: str) -> float:
    path = run / "eval" / checkpoint / "summary.json"
    if not path.is_file():
        raise SystemExit(f"{path} missing: evaluate the run (`crossmatch evaluate --run {run}`)")
    return json.loads(path.read_text())["mean"]["dice"]["mean"]


def parity(fp32: dict[tuple[str, int], Path], bf16: dict[tuple[str, int], Path]) -> list[dict]:
    """One row per (method, checkpoint) with paired seeds."""
    rows = []
    pairs = sorted(set(fp32) & set(bf16))
    for method in dict.fromkeys(m for m, _ in pairs):
        seeds = [s for m, s in pairs if m == method]
        for ckpt in CHECKPOINTS:
            a = {s: score(fp32[method, s], ckpt) for s in seeds}
            b = {s: score(bf16[method, s], ckpt) for s in seeds}
            diffs = {s: b[s] - a[s] for s in seeds}
            mean = statistics.mean(diffs.values())
            noise = pooled_std(list(a.values()), list(b.values()))
            rows.append({"method": method, "checkpoint": ckpt, "seeds": seeds, "fp32": a, "bf16": b,
                         "paired_difference": diffs, "mean_paired_difference": mean,
                         "paired_difference_std": statistics.stdev(diffs.values()) if len(seeds) > 1 else None,
                         "seed_noise_pooled_std": noise,
                         "within_seed_noise": None if noise is None else abs(mean) <= noise})
    return rows


def figure(fp32: dict[tuple[str, int], Path], bf16: dict[tuple[str, int], Path], rows: list[dict],
           out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from crossmatch.report.figures import _smooth

    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(len(methods), 2, figsize=(10, 3.3 * len(methods)), squeeze=False)
    for (ax_loss, ax_val), method in zip(axes, methods):
        seeds = next(r["seeds"] for r in rows if r["method"] == method)
        for i, seed in enumerate(seeds):
            colour = f"C{i}"
            for prec, runs, style in (("fp32", fp32, "-"), ("bf16", bf16, "--")):
                log = pd.read_csv(runs[method, seed] / "log.csv")
                ax_loss.plot(log["iteration"], _smooth(log["loss"].to_numpy(), max(1, len(log) // 30)),
                             style, color=colour, lw=1, label=f"seed {seed}, {prec}")
                val = log.dropna(subset=["val_dice"])
                ax_val.plot(val["iteration"], 100 * val["val_dice"], style, color=colour, marker="o", ms=2.5,
                            lw=1, label=f"seed {seed}, {prec}")
        ax_loss.set(xlabel="iteration", ylabel="training loss (moving average)", title=f"{method}: training loss",
                    yscale="log")
        ax_val.set(xlabel="iteration", ylabel="validation mean Dice (%)", title=f"{method}: validation Dice")
        for ax in (ax_loss, ax_val):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6, ncol=2)
    fig.suptitle("fp32 (solid) vs bf16 (dashed), paired by seed", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fp32", required=True, help="runs folders trained in fp32, comma-separated")
    p.add_argument("--bf16", required=True, help="the same configs and seeds trained in bf16")
    p.add_argument("--out", type=Path, required=True, help="JSON to write; the figure goes beside it (.png)")
    a = p.parse_args()
    fp32, bf16 = find_runs(a.fp32), find_runs(a.bf16)
    rows = parity(fp32, bf16)
    if not rows:
        raise SystemExit("no (method, seed) is evaluated on both sides")
    print("| method | checkpoint | seeds | fp32 | bf16 | bf16 - fp32 per seed | mean | seed noise | within |")
    print("|---|---|---|---|---|---|---|---|---|")
    pct = lambda d, sign="": ", ".join(f"{100 * v:{sign}.1f}" for v in d.values())  # noqa: E731
    for r in rows:
        noise = "-" if r["seed_noise_pooled_std"] is None else f"{100 * r['seed_noise_pooled_std']:.1f}"
        print(f"| {r['method']} | {r['checkpoint']} | {len(r['seeds'])} | {pct(r['fp32'])} | {pct(r['bf16'])} | "
              f"{pct(r['paired_difference'], '+')} | {100 * r['mean_paired_difference']:+.1f} | {noise} | "
              f"{r['within_seed_noise']} |")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    runs = {"fp32": {f"{m}/s{s}": str(p) for (m, s), p in fp32.items()},
            "bf16": {f"{m}/s{s}": str(p) for (m, s), p in bf16.items()}}
    a.out.write_text(json.dumps({"rows": rows, "runs": runs, "provenance": record()}, indent=2) + "\n")
    figure(fp32, bf16, rows, a.out.with_suffix(".png"))
    print(f"wrote {a.out} and {a.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
