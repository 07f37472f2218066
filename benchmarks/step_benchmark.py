"""Time per training iteration and peak memory of CrossMatch vs its baselines.

Variants, all on the same network and the same labeled batch:
  network                  the bare network: forward, cross-entropy, backward and
                           SGD step on the labeled batch, no method code (the
                           floor under ``supervised``: their difference is our
                           code's overhead; with --batch it measures how the
                           per-sample cost changes with the batch size)
  supervised               labeled batch only
  crossmatch               stacked decoder streams, pass-2 loss back-propagated
                           before pass 3 (the default)
  crossmatch_one_backward  stacked streams, one backward of the total loss (the
                           reference code's memory pattern)
  crossmatch_looped        decoder called once per stream instead of stacked
  unimatch                 UniMatch, same batches
  semsim                   SemSim (2D datasets only), same batches
  simcvd                   SimCVD (3D datasets only): labeled + unlabeled
  uamt                     UA-MT: labeled + unlabeled, 8 teacher passes
  mcnet                    MC-Net: labeled + unlabeled, two decoders
  bcp                      BCP's self-training stage (its costly one): two
                           pasted halves, teacher pseudo-labels

Each (variant, allocator setting) runs in a fresh process so that the peak
resident memory (ru_maxrss) belongs to that variant alone. The step is the
method's ``training_step`` plus the optimiser step on random tensors of the
reference batch shapes (data loading excluded). Each result also counts the
step's arithmetic (GFLOP of convolutions and matmuls, forward and backward,
with torch's FlopCounterMode), and the JSON records the machine's matmul
rate with the same threads: their ratio tells a slow machine from slow code.
Results are written as JSON.

  python benchmarks/step_benchmark.py --dataset acdc --out benchmarks/results/cpu_acdc.json
  python benchmarks/step_benchmark.py --dataset la --iters 2 --out benchmarks/results/cpu_la.json
  python benchmarks/step_benchmark.py --dataset la --variants network supervised --allocators tuned \
      --precision fp32 bf16 --memory-formats contiguous channels_last --rounds 2 \
      --out benchmarks/results/cpu_la_memory_format.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from crossmatch.provenance import record

REPO = Path(__file__).resolve().parents[1]
SHAPES = {  # reference batch sizes: labeled = unlabeled = mix
    "acdc": {"batch": 12, "crop": [256, 256]},
    "la": {"batch": 2, "crop": [112, 112, 80]},
}
VARIANTS = {
    "network": ({"name": "supervised"}, {}),
    "supervised": ({"name": "supervised"}, {}),
    "crossmatch": ({"name": "crossmatch"}, {}),
    "crossmatch_one_backward": ({"name": "crossmatch", "split_backward": False}, {}),
    "crossmatch_looped": ({"name": "crossmatch"}, {"stack_streams": False}),
    "unimatch": ({"name": "unimatch"}, {}),
    "semsim": ({"name": "semsim"}, {}),
    "simcvd": ({"name": "simcvd"}, {}),
    "uamt": ({"name": "uamt"}, {}),
    "mcnet": ({"name": "mcnet"}, {}),
    "bcp": ({"name": "bcp"}, {}),
}
# (environment, in-process tuning): glibc defaults; the environment setting
# the reference was measured under (mmap off); our trainer's default
# (crossmatch.runtime.tune_allocator: mmap off and no heap trimming)
ALLOCATORS = {
    "default": ({}, False),
    "no_mmap": ({"MALLOC_MMAP_MAX_": "0"}, False),
    "tuned": ({}, True),
}


def run_one(dataset: str, variant: str, iters: int, warmup: int, threads: int, device: str,
            tune: bool, batch_size: int | None = None, crop: list[int] | None = None,
            precision: str = "auto", channels_last: bool = True) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from crossmatch.runtime import tune_allocator
    if tune:
        tune_allocator()

    from crossmatch import config
    from crossmatch.data.specs import get_spec
    from crossmatch.train import Trainer

    torch.set_num_threads(threads)
    method_cfg, model_cfg = VARIANTS[variant]
    shape = dict(SHAPES[dataset])
    shape.update({k: v for k, v in (("batch", batch_size), ("crop", crop)) if v})
    cfg = config.resolve({"dataset": {"name": dataset}, "method": method_cfg, "model": model_cfg,
                          "train": {"batch_size": shape["batch"], "crop": shape["crop"], "device": device,
                                    "precision": precision,
                                    "tune_allocator": False}})  # tuned above, when asked
    spec = get_spec(dataset)
    # the trainer's own build and step (seed 0), on synthetic batches: no data, no run folder
    trainer = Trainer(cfg, "unused", check_data=False)
    trainer.build()
    dev = trainer.device
    if dev.type == "cuda":  # this variant's own peak (gpu_check.py runs them in one process)
        torch.cuda.reset_peak_memory_stats()
    b, crop = shape["batch"], shape["crop"]
    batch = {"x": torch.rand(b, 1, *crop, device=dev), "y": _rings(b, crop, spec.n_classes).to(dev),
             "u": torch.rand(b, 1, *crop, device=dev), "u_mix": torch.rand(b, 1, *crop, device=dev)}
    if not channels_last:  # the trainer's networks are channels-last (make_model): undo it
        trainer.model.to(memory_format=torch.contiguous_format)

    first = trainer.stages[-1][1]  # a staged method (BCP) is timed in its last, main stage

    def step(i: int) -> None:
        if variant != "network":
            trainer.step(first + i, batch)
            return
        # the network alone: one forward, backward and optimiser step of plain CE
        trainer.optimizer.zero_grad(set_to_none=True)
        with trainer.autocast():
            loss = torch.nn.functional.cross_entropy(trainer.model(batch["x"]).float(), batch["y"])
        trainer.scaler.scale(loss).backward()
        trainer.scaler.step(trainer.optimizer)
        trainer.scaler.update()

    times = []
    for i in range(warmup + iters):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        tic = time.perf_counter()
        step(i)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - tic)
    # one more, untimed step counts the arithmetic (convolutions and matmuls,
    # forward and backward): seconds alone cannot tell a slow machine from slow code
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _NoModuleTracker()
    with counter:
        step(warmup + iters)
    gflop = counter.get_total_flops() / 1e9
    seconds = statistics.median(times)
    out = {"dataset": dataset, "variant": variant,
           "batch": {"network": f"{b}", "supervised": f"{b}"}.get(
               variant, f"{b}+{b}" if variant in ("simcvd", "uamt", "mcnet", "bcp") else f"{b}+{b}+{b}"),
           "crop": crop, "seconds_per_iter": seconds, "seconds_all": times,
           "gflop_per_iter": gflop, "gflop_per_s": gflop / seconds,
           "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
           "device": str(dev), "threads": threads, "precision": trainer.precision.name,
           "channels_last": channels_last}
    if dev.type == "cuda":
        out["peak_cuda_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
        out["gpu"] = torch.cuda.get_device_name()
    return out


class _NoModuleTracker:
    """Stands in for FlopCounterMode's per-module tracker, whose backward
    hooks fail on SemSim's step ("Expected gradient function to be set");
    the total needs no module breakdown: every count goes to "Global"."""
    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def matmul_rate(threads: int, n: int = 2048, reps: int = 5) -> float:
    """GFLOP/s of a large float32 matmul with ``threads`` threads: the
    machine's practical ceiling, against which a step's GFLOP/s reads."""
    import torch
    torch.set_num_threads(threads)
    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    best = math.inf
    for _ in range(reps):
        tic = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - tic)
    return 2 * n ** 3 / best / 1e9


def _rings(b: int, crop: list[int], n_classes: int):
    """Concentric classes around the centre: a label with real boundaries
    (SimCVD's signed distance map costs what it costs on anatomy)."""
    import torch
    grid = torch.meshgrid(*[torch.linspace(-1, 1, c) for c in crop], indexing="ij")
    r = torch.sqrt(sum(g ** 2 for g in grid))
    label = (n_classes - 1 - (r / 0.8 * (n_classes - 1)).floor()).clamp(min=0).long()
    return label.expand(b, *crop).clone()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=sorted(SHAPES), required=True)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--allocators", nargs="+", default=list(ALLOCATORS), choices=list(ALLOCATORS))
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (the heap grows to its "
                   "steady size over the first steps)")
    p.add_argument("--tune", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=None, help="batch size per stream (default: the "
                   "reference's, ACDC 12, LA 2)")
    p.add_argument("--crop", type=int, nargs="+", default=None, help="patch size (default: the "
                   "reference's, ACDC 256 256, LA 112 112 80)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", nargs="+", default=["auto"], choices=["auto", "fp32", "bf16", "fp16"],
                   help="train.precision, one or several timed back to back (auto: fp32 on CPU, bf16 "
                   "on CUDA where the GPU has it)")
    p.add_argument("--memory-formats", nargs="+", choices=["channels_last", "contiguous"],
                   default=["channels_last"], help="the networks' memory format, one or several timed back "
                   "to back (channels_last: the trainer's, make_model; contiguous: NCHW / NCDHW)")
    p.add_argument("--rounds", type=int, default=1, help="repeat the whole set this many times, so that "
                   "ratios can be taken within a round")
    p.add_argument("--out", type=Path)
    p.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.single:
        print(json.dumps(run_one(a.dataset, a.variants[0], a.iters, a.warmup, a.threads, a.device, a.tune,
                                 a.batch, a.crop, a.precision[0], a.memory_formats[0] == "channels_last")))
        return
    import torch
    results = []
    from crossmatch.data.specs import get_spec
    from crossmatch.methods import get_method
    dim = get_spec(a.dataset).dim
    variants = [v for v in a.variants if dim in get_method(VARIANTS[v][0]["name"]).dims]
    # the settings compared vary innermost, so each comparison is timed back to back
    for rnd, alloc, variant, precision, fmt in itertools.product(range(a.rounds), a.allocators, variants,
                                                                 a.precision, a.memory_formats):
        alloc_env, tune = ALLOCATORS[alloc]
        env = {**os.environ, **alloc_env, "PYTHONPATH": str(REPO)}
        cmd = [sys.executable, __file__, "--single", "--dataset", a.dataset, "--variants", variant,
               "--iters", str(a.iters), "--warmup", str(a.warmup), "--threads", str(a.threads),
               "--device", a.device, "--precision", precision] + (["--tune"] if tune else []) + \
            (["--batch", str(a.batch)] if a.batch else []) + \
            (["--crop", *map(str, a.crop)] if a.crop else []) + \
            ["--memory-formats", fmt]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if res.returncode:
            sys.exit(f"{variant} ({alloc}, {precision}, {fmt}) failed:\n{res.stderr[-3000:]}")
        r = json.loads(res.stdout.strip().splitlines()[-1])
        r.update(allocator=alloc, allocator_env=alloc_env, tune_allocator=tune, round=rnd)
        results.append(r)
        print(f"{a.dataset:5s} {alloc:8s} {variant:24s} {r['precision']:5s} {fmt:13s} "
              f"{r['seconds_per_iter']:7.2f} s/it  {r['gflop_per_iter']:7.1f} GFLOP ({r['gflop_per_s']:5.1f} "
              f"GFLOP/s)  peak RSS {r['peak_rss_gib']:5.2f} GiB", flush=True)
    doc = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                       "cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
                       "matmul_gflop_per_s": matmul_rate(a.threads) if a.device == "cpu" else None},
           "iters": a.iters, "warmup": a.warmup, "results": results, "provenance": record(device=a.device)}
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
