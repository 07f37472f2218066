"""One short GPU run that answers the GPU questions of the speed work
(docs/benchmarks.md, "GPU"): run it whenever a GPU is at hand,
``bash benchmarks/gpu_check.sh OUT.json`` (about 3 minutes on an H200).

Sections, each written to the JSON as soon as it is done (a run cut short
keeps what it measured; a section that fails records its error and the
next one runs):

- ``steps``: seconds per training step and peak GPU memory of every method
  at the reference batch (ACDC 12+12+12 at 256x256, LA 2+2+2 at
  112x112x80), in fp32, bf16 and fp16, CrossMatch with stacked and with
  looped decoder streams (benchmarks/step_benchmark.py's ``run_one``, in
  this process; synthetic batches, data loading excluded);
- ``inference``: seconds per case of LA's sliding-window evaluation (a
  183x140x88 volume, the window the training crop, UA-MT's stride 18x18x4)
  and of ACDC's slice-wise evaluation (10 slices of 256x216), per precision
  and windows per pass (``eval.window_batch``);
- ``end_to_end``: the command line on CUDA with the default ``auto``
  precision: phantom -> preprocess -> ``crossmatch train`` (CrossMatch, ACDC
  and LA phantoms), the same run interrupted halfway and resumed, then
  ``crossmatch evaluate``; records the precision the run picked, the
  largest weight difference between the resumed and the uninterrupted run,
  and the test Dice.

``--smoke`` runs every section on the CPU at toy sizes (fp32 and bf16), in
seconds: a check of this script, not a measurement (tests/test_benchmark.py).
``--cpu`` runs the real sizes on the CPU in fp32 and bf16 (4 windows per
pass), for the CPU's ratios, e.g. of LA's evaluation:
``python benchmarks/gpu_check.py --cpu --sections inference --reps 1 --out ...``.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from crossmatch.provenance import record  # noqa: E402  (standard library only)

STEP_VARIANTS = {d: ["network", "supervised", "crossmatch", "crossmatch_looped", "unimatch", other, "uamt", "mcnet",
                     "bcp"] for d, other in (("acdc", "semsim"), ("la", "simcvd"))}
# device, precisions; per dataset: step batch and crop (None: the reference's), inference case shape
# and window (None: the training crop)
PLANS = {
    "gpu": {"device": "cuda", "precisions": ["fp32", "bf16", "fp16"], "e2e_iterations": 60,
            "acdc": {"batch": None, "crop": None, "case": (10, 256, 216), "window": None},  # a typical frame
            "la": {"batch": None, "crop": None, "case": (183, 140, 88), "window": None}},   # UA-MT's crop
    "smoke": {"device": "cpu", "precisions": ["fp32", "bf16"], "e2e_iterations": 4,
              "acdc": {"batch": 2, "crop": [32, 32], "case": (2, 40, 36), "window": (32, 32)},
              # 48x48x32, not 32x32x16: at a V-Net bottleneck of 2x2x1 or 2x2x2 voxels the
              # CPU's bf16 Conv3d weight gradient is NaN now and then (torch 2.13, oneDNN;
              # ~5 % of calls; never in 300 calls at 3x3x2, 4x4x2 or the real 7x7x5)
              "la": {"batch": 2, "crop": [48, 48, 32], "case": (56, 52, 36), "window": (48, 48, 32)}},  # BCP: even
}
# the GPU plan's real sizes on the CPU, for the CPU's bf16 / fp32 ratios (slow: the sections one wants only)
PLANS["cpu"] = {**PLANS["gpu"], "device": "cpu", "precisions": ["fp32", "bf16"], "window_batches": (4,)}


def _release() -> None:
    import torch
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def steps(plan: dict, iters: int, warmup: int) -> list[dict]:
    from step_benchmark import run_one
    rows = []
    for dataset, variants in STEP_VARIANTS.items():
        for precision in plan["precisions"]:
            for variant in variants:
                r = run_one(dataset, variant, iters, warmup, threads=min(4, os.cpu_count() or 1),
                            device=plan["device"], tune=False, batch_size=plan[dataset]["batch"],
                            crop=plan[dataset]["crop"], precision=precision)
                r.pop("seconds_all", None)
                rows.append(r)
                print(f"{dataset:5s} {precision:5s} {variant:18s} {r['seconds_per_iter'] * 1e3:8.1f} ms/it "
                      f"{r.get('peak_cuda_gib', float('nan')):6.2f} GiB", flush=True)
                _release()
    return rows


def _sync() -> None:
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def inference(plan: dict, reps: int) -> list[dict]:
    import numpy as np
    import torch
    from crossmatch import config
    from crossmatch.data.specs import get_spec
    from crossmatch.factories import make_model, pick_device, pick_precision
    from crossmatch.inference import predict_slices_2d, sliding_window_3d
    dev = pick_device(plan["device"])
    rng = np.random.default_rng(0)
    rows = []
    for dataset in ("la", "acdc"):
        spec, shape = get_spec(dataset), plan[dataset]["case"]
        cfg = config.resolve({"dataset": {"name": dataset}})
        model = make_model(cfg, spec).to(dev)
        volume = rng.random(shape, dtype=np.float32)
        crop = tuple(plan[dataset]["window"] or cfg["train"]["crop"])
        stride = tuple(min(s, c) for s, c in zip(cfg["eval"]["stride"], crop)) if spec.dim == 3 else None
        for precision in plan["precisions"]:
            autocast = pick_precision(precision, dev).autocast
            for window_batch in (plan.get("window_batches", (1, 4, 16)) if spec.dim == 3 else (None,)):
                def predict():
                    if spec.dim == 3:
                        return sliding_window_3d(model, volume, crop, stride, spec.n_classes,
                                                 dev, batch_size=window_batch, autocast=autocast)
                    return predict_slices_2d(model, volume, crop, spec.n_classes, dev, autocast=autocast)
                predict()  # warm-up (cuDNN picks its kernels)
                times = []
                for _ in range(reps):
                    _sync()
                    tic = time.perf_counter()
                    predict()
                    _sync()
                    times.append(time.perf_counter() - tic)
                rows.append({"dataset": dataset, "shape": list(shape), "precision": precision,
                             "window": list(crop), "stride": list(stride) if stride else None,
                             "window_batch": window_batch, "seconds_per_case": statistics.median(times),
                             "seconds_all": times})
                print(f"{dataset:5s} {precision:5s} window_batch {window_batch} "
                      f"{statistics.median(times):.3f} s/case", flush=True)
        del model
        _release()
    return rows


def _cli(*args: str) -> float:
    tic = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "crossmatch", *args], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")})
    if res.returncode:
        raise RuntimeError(f"crossmatch {' '.join(args)} failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
    return time.perf_counter() - tic


def end_to_end(plan: dict, work: Path) -> list[dict]:
    import torch
    import yaml
    settings = {"acdc": {"labeled": 3, "train": {"crop": [64, 64], "batch_size": 4}},
                "la": {"labeled": 4, "train": {"crop": [32, 32, 16], "batch_size": 2},
                       "eval": {"stride": [16, 16, 8]}}}
    n = plan["e2e_iterations"]
    rows = []
    for dataset, s in settings.items():
        d = work / dataset
        _cli("phantom", "--dataset", dataset, "--out", str(d))
        _cli("preprocess", "--dataset", dataset, "--raw", str(d / "raw"), "--out", str(d / "root"),
             "--split-dir", str(d / "splits"))
        cfg = {"dataset": {"name": dataset, "root": str(d / "root"), "split_dir": str(d / "splits"),
                           "labeled": s["labeled"]},
               "method": {"name": "crossmatch"},
               "train": {"iterations": n, "val_every": n // 3, "ckpt_every": n // 2, "num_workers": 2,
                         "device": plan["device"], **s["train"]},
               "eval": s.get("eval", {})}
        (d / "exp.yaml").write_text(yaml.safe_dump(cfg))
        row = {"dataset": dataset, "iterations": n}
        row["train_seconds"] = _cli("train", "--config", str(d / "exp.yaml"), "--out", str(d / "whole"))
        _cli("train", "--config", str(d / "exp.yaml"), "--out", str(d / "resumed"), "--stop-after", str(n // 2))
        _cli("train", "--config", str(d / "exp.yaml"), "--out", str(d / "resumed"))
        a = torch.load(d / "whole/checkpoints/final.pt", map_location="cpu", weights_only=True)["model"]
        b = torch.load(d / "resumed/checkpoints/final.pt", map_location="cpu", weights_only=True)["model"]
        row["resumed_max_abs_weight_diff"] = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
        row["train_precision"] = yaml.safe_load((d / "whole/config.yaml").read_text())["train_precision"]
        row["evaluate_seconds"] = _cli("evaluate", "--run", str(d / "whole"), "--checkpoint", "final",
                                       "--no-predictions", "--device", plan["device"])
        summary = json.loads((d / "whole/eval/final/summary.json").read_text())
        row["test_dice"], row["eval_precision"] = summary["mean"]["dice"]["mean"], summary["eval_precision"]
        rows.append(row)
        print(f"{dataset}: {row}", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--sections", nargs="+", default=["steps", "inference", "end_to_end"])
    p.add_argument("--smoke", action="store_true", help="every section on the CPU at toy sizes (checks the script)")
    p.add_argument("--cpu", action="store_true", help="the real sizes on the CPU in fp32 and bf16 (e.g. "
                   "--sections inference for the CPU's evaluation ratios)")
    a = p.parse_args()
    import torch
    plan = PLANS["smoke" if a.smoke else "cpu" if a.cpu else "gpu"]
    if plan["device"] == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here (torch.cuda.is_available() is False); --smoke checks the "
                 "script on the CPU")
    cuda = plan["device"] == "cuda"
    doc = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "smoke": a.smoke, "cpu": a.cpu,
           "machine": {"gpu": torch.cuda.get_device_name() if cuda else None, "torch": torch.__version__,
                       "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
                       "bf16": torch.cuda.is_bf16_supported() if cuda else None,
                       "python": platform.python_version(), "cpus": os.cpu_count()},
           "commit": subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True).stdout.strip() or None,
           "settings": {"iters": a.iters, "warmup": a.warmup, "reps": a.reps}, "errors": {},
           "provenance": record(device="cuda" if torch.cuda.is_available() else "cpu")}

    def save():
        a.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        os.replace(tmp, a.out)

    with tempfile.TemporaryDirectory() as work:
        jobs = {"steps": lambda: steps(plan, a.iters, a.warmup), "inference": lambda: inference(plan, a.reps),
                "end_to_end": lambda: end_to_end(plan, Path(work))}
        for name in a.sections:
            tic = time.perf_counter()
            try:
                doc[name] = jobs[name]()
            except Exception:  # keep the other sections' answers
                doc["errors"][name] = traceback.format_exc()[-4000:]
                print(doc["errors"][name], file=sys.stderr, flush=True)
            doc.setdefault("section_seconds", {})[name] = round(time.perf_counter() - tic, 1)
            save()
    if doc["errors"]:
        sys.exit(f"gpu_check: failed sections: {', '.join(doc['errors'])} (see {a.out})")


if __name__ == "__main__":
    main()
