"""Training speed and memory of our trainer beside the public reference code.

Both trainers run whole training loops (data loading included) on ACDC at
the README budget (4 labeled + 4 unlabeled + 4 CutMix source at 128x128, 2
threads), one after the other, alternating which goes first, for
``--rounds`` rounds, so that the host's drift (its speed varies by 2x between
days) hits both sides alike:

- the reference: its own ``train_cross_match.py`` / ``supervised.py``, with the
  CPU edits of the harness's ``cpu.patch``, run by ``ref_train.py`` (which
  writes the per-step ``log.csv``);
- ours: ``crossmatch train`` with the same budget, in fp32 and in bf16.

Per run: the median seconds per iteration (differences of ``log.csv``'s
cumulative seconds, the first ``--discard`` iterations dropped) and the
peak resident memory of the trainer's process (``wait4``'s ``ru_maxrss``;
data-loader worker processes are not counted, on either side). The JSON
gets every run, the ratios ours / reference per round and their median, the
matmul rate of the machine before and after, and the issue-16 targets
with the measured value beside each.

  python benchmarks/reference/speed_vs_reference.py                  # about 15 min
  python benchmarks/reference/speed_vs_reference.py --iterations 20 --rounds 1   # a quick look

Needs the reference code (``--reference``, default
``../shared/reference/AiEson-CrossMatch``) and the harness that patches it
for the CPU (``../shared/harness/reference-cpu``); without the reference it says so and exits 0.
Run it alone on the machine: anything else running skews the ratios.
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT / "benchmarks"))
from step_benchmark import matmul_rate  # noqa: E402

from crossmatch.io import write_json  # noqa: E402
from crossmatch.provenance import record  # noqa: E402

CONFIG = "config/experiments/acdc_l3_cpu.yaml"
TARGETS = {  # issue 16, at the README budget
    "crossmatch_time_vs_reference": 0.35,
    "crossmatch_peak_memory_vs_reference": 0.5,
    "crossmatch_vs_supervised_ours": 6.0,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> int:
    """Run ``cmd``; its peak RSS in KiB (``wait4``, the process itself)."""
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **env}, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed, see {log}")
    return usage.ru_maxrss


def step_seconds(log_csv: Path, discard: int) -> float:
    with open(log_csv) as f:
        t = [float(r["seconds"]) for r in csv.DictReader(f)]
    steps = [b - a for a, b in zip(t, t[1:])][max(0, discard - 1):]
    if not steps:
        raise SystemExit(f"{log_csv}: fewer iterations than --discard")
    return statistics.median(steps)


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args, self.work = args, args.work
        self.runs = args.work / "speed_runs"
        shutil.rmtree(self.runs, ignore_errors=True)
        self.runs.mkdir(parents=True)
        self.py = sys.executable
        self.crossmatch = str(Path(self.py).with_name("crossmatch"))

    def setup(self) -> None:
        """The reference patched for the CPU, torchvision beside it, its slice files
        (the harness's own setup)."""
        if (self.work / "ref" / "ACDC" / ".patched").is_file() and (self.work / "cfg" / "b4_128.yaml").is_file():
            return
        harness = self.args.harness / "run.sh"
        if not harness.is_file():
            raise SystemExit(f"no reference harness at {self.args.harness}: it patches the reference for the CPU")
        env = {"PARTS": "", "PROFILE": "0", "WORK": str(self.work), "REF_DIR": str(self.args.reference)}
        run(["bash", str(harness)], PROJECT, env, self.work / "speed_setup.log")
        if not (self.work / "cfg" / "b4_128.yaml").is_file():
            raise SystemExit(f"reference setup failed, see {self.work / 'speed_setup.log'}")

    def reference(self, method: str, tag: str) -> dict:
        out = self.runs / tag
        script = {"crossmatch": "train_cross_match.py", "supervised": "supervised.py"}[method]
        t = str(self.args.threads)
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "WORLD_SIZE": "1",
               "LOCAL_RANK": "0", "OMP_NUM_THREADS": t, "REF_THREADS": t, "REF_NUM_WORKERS": "1",
               "PYTHONPATH": str(self.work / "pylib")}
        splits = "splits/acdc/3"
        cmd = [self.py, "-W", "ignore", str(PROJECT / "benchmarks/reference/ref_train.py"),
               "--budget", str(self.args.iterations), "--snapshot-every", str(10 ** 6), "--out", str(out), "--",
               script, "--config", str(self.work / "cfg" / "b4_128.yaml"),
               "--labeled-id-path", f"{splits}/labeled.txt", "--unlabeled-id-path", f"{splits}/unlabeled.txt",
               "--save-path", str(out / "ref"), "--seed", "0"]
        rss = run(cmd, self.work / "ref" / "ACDC", env, self.runs / f"{tag}.log")
        return {"seconds_per_iteration": step_seconds(out / "log.csv", self.args.discard), "peak_rss_gib": rss / 2 ** 20}

    def ours(self, method: str, precision: str, tag: str) -> dict:
        out = self.runs / tag
        t = str(self.args.threads)
        cmd = [self.crossmatch, "train", "--config", CONFIG, "--out", str(out),
               "--set", f"method.name={method}", "--set", f"train.iterations={self.args.iterations}",
               "--set", "train.val_every=0", "--set", f"train.threads={t}", "--set", "train.seed=0",
               "--set", f"train.precision={precision}", "--set", f"train.ckpt_every={10 ** 6}"]
        rss = run(cmd, PROJECT, {"OMP_NUM_THREADS": t}, self.runs / f"{tag}.log")
        return {"seconds_per_iteration": step_seconds(out / "log.csv", self.args.discard), "peak_rss_gib": rss / 2 ** 20}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", type=Path, default=PROJECT.parent / "shared/reference/AiEson-CrossMatch")
    p.add_argument("--harness", type=Path, default=PROJECT.parent / "shared/harness/reference-cpu")
    p.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "refcpu")
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--discard", type=int, default=10, help="first iterations left out of the median")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=PROJECT / "benchmarks/results/speed_vs_reference.json")
    args = p.parse_args()
    if not (args.reference / "ACDC" / "train_cross_match.py").is_file():
        print(f"skipped: no reference code at {args.reference} (the public AiEson/CrossMatch; "
              "pass --reference)")
        return
    os.chdir(PROJECT)
    bench = Bench(args)
    bench.setup()
    root = subprocess.run([bench.crossmatch, "train", "--config", CONFIG, "--print-config"], capture_output=True,
                          text=True, check=True).stdout
    root = next(line.split(":", 1)[1].strip() for line in root.splitlines() if line.startswith("  root:"))
    if not (PROJECT / root / "manifest.json").is_file():
        subprocess.run([bench.crossmatch, "preprocess", "--config", CONFIG], check=True)

    cases = [("crossmatch", "reference", None), ("crossmatch", "ours", "fp32"), ("crossmatch", "ours", "bf16"),
             ("supervised", "reference", None), ("supervised", "ours", "fp32"), ("supervised", "ours", "bf16")]
    result = {"date": time.strftime("%Y-%m-%d"), "commit": subprocess.run(
                  ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "provenance": record(),
              "setup": {"iterations": args.iterations, "discard": args.discard, "threads": args.threads,
                        "batch": "4 labeled + 4 unlabeled + 4 CutMix source, 128x128 (ACDC, 3 labeled)",
                        "reference": str(args.reference)},
              "matmul_gflop_per_s": {"before": matmul_rate(args.threads)}, "runs": []}
    for r in range(args.rounds):
        for method, impl, precision in (cases if r % 2 == 0 else cases[::-1]):  # who goes first alternates
            tag = f"r{r}_{method}_{impl}{'_' + precision if precision else ''}"
            print(f"[{time.strftime('%H:%M:%S')}] round {r + 1}: {method}, {impl} {precision or ''}", flush=True)
            m = bench.reference(method, tag) if impl == "reference" else bench.ours(method, precision, tag)
            result["runs"].append({"round": r, "method": method, "impl": impl, "precision": precision or "fp32",
                                   **{k: round(v, 4) for k, v in m.items()}})
            write_json(args.out, result)  # a run cut short keeps what it measured
    result["matmul_gflop_per_s"]["after"] = matmul_rate(args.threads)
    result["ratios"] = ratios(result["runs"], args.rounds)
    result["targets"] = targets(result["ratios"])
    write_json(args.out, result)
    for k, v in result["ratios"].items():
        print(f"{k:45s} {v['median']:.3f}  (rounds: {', '.join(f'{x:.3f}' for x in v['rounds'])})")
    for k, v in result["targets"].items():
        print(f"target {k}: {v['measured']:.3f} vs <= {v['target']} -> {'met' if v['met'] else 'not met'}")
    print(f"wrote {args.out}")


def ratios(runs: list[dict], rounds: int) -> dict:
    def get(r, method, impl, precision, key="seconds_per_iteration"):
        return next(x[key] for x in runs if (x["round"], x["method"], x["impl"], x["precision"])
                    == (r, method, impl, precision))

    out: dict[str, list[float]] = {}
    for r in range(rounds):
        for method in ("crossmatch", "supervised"):
            ref = get(r, method, "reference", "fp32")
            for prec in ("fp32", "bf16"):
                out.setdefault(f"{method}_time_ours_{prec}_vs_reference", []).append(
                    get(r, method, "ours", prec) / ref)
                out.setdefault(f"{method}_peak_memory_ours_{prec}_vs_reference", []).append(
                    get(r, method, "ours", prec, "peak_rss_gib") / get(r, method, "reference", "fp32", "peak_rss_gib"))
        for prec in ("fp32", "bf16"):
            out.setdefault(f"crossmatch_vs_supervised_ours_{prec}", []).append(
                get(r, "crossmatch", "ours", prec) / get(r, "supervised", "ours", prec))
        out.setdefault("crossmatch_vs_supervised_reference", []).append(
            get(r, "crossmatch", "reference", "fp32") / get(r, "supervised", "reference", "fp32"))
    return {k: {"median": round(statistics.median(v), 4), "rounds": [round(x, 4) for x in v]}
            for k, v in out.items()}


def targets(rat: dict) -> dict:
    """Each target against our best precision on this machine."""
    best = lambda key: min(rat[key.format(p)]["median"] for p in ("fp32", "bf16"))  # noqa: E731
    measured = {"crossmatch_time_vs_reference": best("crossmatch_time_ours_{}_vs_reference"),
                "crossmatch_peak_memory_vs_reference": best("crossmatch_peak_memory_ours_{}_vs_reference"),
                "crossmatch_vs_supervised_ours": best("crossmatch_vs_supervised_ours_{}")}
    return {k: {"target": t, "measured": round(measured[k], 4), "met": measured[k] <= t} for k, t in TARGETS.items()}


if __name__ == "__main__":
    main()
