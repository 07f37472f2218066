"""Make a reference training run (``ref_train.py``) one of our run folders
and evaluate it with our evaluator, under our protocol:

- every snapshot is loaded into our network (``load_reference_state``) and
  scored on OUR validation split with the trainer's own ``validate``; the
  best one (first of equal scores) becomes ``checkpoints/best.pt``, the last
  ``checkpoints/final.pt`` (the reference itself selects on val+test);
- ``config.yaml`` is our resolved config of the same experiment with the
  reference's network (``model.upsample: bilinear``) and a note that the
  weights come from the reference code;
- ``crossmatch.evaluate.evaluate_run`` scores both on the test split.

  python benchmarks/reference/evaluate_reference.py RUN --method crossmatch --seed 0 \
      [--config config/experiments/acdc_l3_cpu.yaml] [--set dataset.root=...]

Validation scores are cached in ``RUN/val.csv``; a re-run only scores new snapshots.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch

from crossmatch import config as config_mod
from crossmatch.data.specs import get_spec
from crossmatch.evaluate import evaluate_run
from crossmatch.io import write_yaml
from crossmatch.models.reference import load_reference_state
from crossmatch.factories import make_model, pick_device, splits_for
from crossmatch.train import save_checkpoint, validate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--method", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--config", default="config/experiments/acdc_l3_cpu.yaml")
    p.add_argument("--set", action="append", default=[], dest="sets")
    p.add_argument("--limit", type=int, default=0, help="score the first N test cases only (a smoke test)")
    a = p.parse_args()
    cfg = config_mod.load(a.config, [f"method.name={a.method}", f"train.seed={a.seed}",
                                     "model.upsample=bilinear", *a.sets])
    spec, splits, device = get_spec(cfg["dataset"]["name"]), splits_for(cfg), pick_device("auto")
    note = (f"weights trained by the public reference code (AiEson/CrossMatch ACDC, "
            f"{'train_cross_match.py' if a.method == 'crossmatch' else 'supervised.py'}, seed {a.seed}) "
            "at this config's budget; selection and evaluation by this package")
    write_yaml(a.run / "config.yaml", {"experiment": config_mod.experiment_id(cfg), **cfg,
                                       "notes": [*splits.notes, note]})
    snaps = sorted((a.run / "snapshots").glob("iter_*.pt"))
    if not snaps:
        raise SystemExit(f"no snapshots under {a.run / 'snapshots'}")
    cache = a.run / "val.csv"
    scores = {}
    if cache.is_file():
        scores = {int(r["iteration"]): float(r["val_dice"]) for r in csv.DictReader(cache.open())}
    model = make_model(cfg, spec).to(device)
    best = final = None
    for path in snaps:
        state = torch.load(path, map_location="cpu", weights_only=False)
        it = state["iteration"]
        load_reference_state(model, state["model"])
        if it not in scores:
            scores[it] = validate(model, spec, cfg, splits.val, device)
            print(f"{path.name}: validation Dice {scores[it]:.4f}", flush=True)
            with open(cache, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=["iteration", "val_dice"])
                w.writeheader()
                w.writerows({"iteration": k, "val_dice": v} for k, v in sorted(scores.items()))
        if best is None or scores[it] > best[0]:
            best = (scores[it], it)
            save_checkpoint(a.run / "checkpoints" / "best.pt", model=model.state_dict(), iteration=it,
                            val_dice=scores[it], experiment=config_mod.experiment_id(cfg))
        final = it
    save_checkpoint(a.run / "checkpoints" / "final.pt", model=model.state_dict(), iteration=final,
                    experiment=config_mod.experiment_id(cfg))
    for ckpt in ("final", "best"):
        s = evaluate_run(a.run, ckpt, save_predictions=False, limit=a.limit)
        print(f"{ckpt} (iteration {s['iteration']}): test Dice {100 * s['mean']['dice']['mean']:.1f}")


if __name__ == "__main__":
    main()
