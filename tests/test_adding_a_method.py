"""docs/adding-a-method.md, as a test: a method defined here, outside the
package (its declaration and its implementation), trains and evaluates
through the command line like a shipped one."""
from __future__ import annotations

import csv

import pytest
import torch
import yaml

from conftest import tiny_overrides
from crossmatch.cli import main
from crossmatch.errors import ConfigError
from crossmatch.losses import supervised_loss
from crossmatch.methods import catalog
from crossmatch.methods.base import IMPLEMENTATIONS, Method, StepContext, register, term_logs, weighted_sum


def _check(hp: dict) -> None:
    if hp["w_ent"] < 0:
        raise ConfigError(f"method.w_ent must be >= 0, got {hp['w_ent']}")


INFO = catalog.MethodInfo(name="entropy_min", module=__name__, uses_unlabeled=True,
                          defaults={"w_ent": 0.1}, id_keys=("w_ent",), check=_check)


class EntropyMin(Method):
    """Supervised loss plus the mean prediction entropy on unlabeled images."""
    name = "entropy_min"

    def weights(self, iteration: int) -> dict[str, float]:
        return {"sup": 1.0, "ent": self.hp["w_ent"]}

    def training_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        with ctx.autocast():
            logits = self.model(torch.cat((batch["x"], batch["u"])))
        pred_x, pred_u = logits.float().split([len(batch["x"]), len(batch["u"])])
        ce, dice = supervised_loss(pred_x, batch["y"], self.spec.dice_from_class, self.spec.dice_smooth)
        p = pred_u.softmax(1)
        terms = {"sup": (ce + dice) / 2, "ent": -(p * p.clamp_min(1e-8).log()).sum(1).mean()}
        w = self.weights(ctx.iteration)
        ctx.backward(weighted_sum(w, terms))
        return term_logs(terms, w, ce, dice)


@pytest.fixture
def declared():
    catalog.declare(INFO)
    register(EntropyMin)
    yield INFO
    del catalog.METHODS[INFO.name], IMPLEMENTATIONS[INFO.name]


def test_a_method_of_ones_own_trains_and_evaluates_through_the_cli(declared, acdc_root, tmp_path, capsys):
    raw = tiny_overrides(acdc_root, iterations=2, ckpt_every=1, val_every=1)
    raw["method"] = {"name": "entropy_min", "w_ent": 0.2}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    assert main(["train", "--config", str(tmp_path / "exp.yaml"), "--out", str(run)]) == 0
    assert "experiment acdc/entropy_min/l3/w_ent0.2/s0" in capsys.readouterr().out
    with open(run / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["iteration"] for r in rows] == ["1", "2"]
    for r in rows:  # the total is the weighted sum of the logged terms
        assert float(r["loss"]) == pytest.approx(float(r["sup"]) + 0.2 * float(r["ent"]), rel=1e-6)
        assert float(r["ent"]) > 0
    assert main(["evaluate", "--run", str(run), "--no-predictions"]) == 0
    assert (run / "eval/best/summary.json").is_file()


def test_a_declared_method_is_checked_like_a_shipped_one(declared, acdc_root, tmp_path, capsys):
    args = ["train", "--out", str(tmp_path / "r"), "--set", "method.name=entropy_min"]
    assert main([*args, "--set", "method.w_ent=-1"]) == 2
    assert "method.w_ent must be >= 0, got -1" in capsys.readouterr().err
    assert main([*args, "--set", "method.tau=0.9"]) == 2
    assert "method.tau: not a hyperparameter of 'entropy_min'; valid keys: ['w_ent']" in capsys.readouterr().err
    with pytest.raises(ValueError, match="declared already"):
        catalog.declare(INFO)
