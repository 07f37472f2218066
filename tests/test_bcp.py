"""BCP: the mixed label is the copy-paste of the mixed image (a network that
reads labels off its input has zero loss in both stages), the stages run in
one resumable run with stage 2 starting from stage 1's best weights, the
pseudo-labels keep each class's largest component."""
import contextlib

import pytest
import torch

from crossmatch import config
from crossmatch.data.specs import get_spec
from crossmatch.errors import ConfigError
from crossmatch.methods import get_method
from crossmatch.methods.base import StepContext
from crossmatch.methods.bcp import BCP, largest_components, paste_mask
from crossmatch.train import train

from conftest import tiny_overrides


class LabelReader(torch.nn.Module):
    """Reads the label off its input (an image whose values are class indices):
    confident logits of round(input), plus a parameter so that there is
    something to back-propagate into."""

    def __init__(self, n_classes: int):
        super().__init__()
        self.n_classes = n_classes
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        onehot = torch.nn.functional.one_hot(x[:, 0].round().long().clamp(0, self.n_classes - 1), self.n_classes)
        return 30 * self.w * onehot.movedim(-1, 1).float()


def _blocks(n: int, size: tuple[int, ...], n_classes: int, seed: int) -> torch.Tensor:
    """Label maps with one solid block per class (a single component each)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.zeros(n, *size, dtype=torch.long)
    for i in range(n):
        for c in range(1, n_classes):
            lo = [int(torch.randint(0, s // 2, (1,), generator=g)) for s in size]
            y[i][tuple(slice(a, a + max(s // 4, 1)) for a, s in zip(lo, size))] = c
    return y


@pytest.mark.parametrize("dataset", ["acdc", "la"])
def test_a_network_that_reads_labels_off_its_input_has_zero_loss_in_both_stages(dataset):
    spec = get_spec(dataset)
    size = (32, 32) if spec.dim == 2 else (32, 32, 16)
    y, yu = _blocks(4, size, spec.n_classes, 0), _blocks(4, size, spec.n_classes, 1)
    batch = {"x": y[:, None].float(), "y": y, "u": yu[:, None].float()}
    info = get_method("bcp")
    method = BCP(LabelReader(spec.n_classes), spec, info.hyperparameters(dataset, {"pretrain_fraction": 0.5}))
    method.train()
    assert method.stages(10) == [("pretrain", 0), ("selftrain", 5)]
    for iteration, stage in ((0, "pretrain"), (9, "selftrain")):
        ctx = StepContext(iteration, torch.Generator().manual_seed(iteration), lambda loss: loss.backward(),
                          contextlib.nullcontext, 10, stage)
        logs = method.training_step(batch, ctx)
        assert logs["loss"] < 1e-3, (iteration, logs)
    assert "loss_u" in logs and logs["pseudo_fg"] > 0
    # the same images against labels pasted the other way round: far from zero
    swapped = {"x": batch["x"], "y": y.flip(0), "u": batch["u"]}
    ctx = StepContext(0, torch.Generator().manual_seed(0), lambda loss: loss.backward(), contextlib.nullcontext, 10,
                      "pretrain")
    assert method.training_step(swapped, ctx)["loss"] > 0.5
    # a step outside the trainer that names no stage of BCP's is refused, not guessed
    ctx = StepContext(0, torch.Generator(), lambda loss: loss.backward(), contextlib.nullcontext, 10)
    with pytest.raises(ValueError, match="bcp: a step of stage 'train'"):
        method.training_step(batch, ctx)


def test_paste_mask_is_one_box_of_two_thirds_per_axis():
    for spatial in ((128, 128), (112, 112, 80)):
        m = paste_mask(spatial, 0.6667, torch.Generator().manual_seed(0))
        sides = [int(s * 0.6667) for s in spatial]
        inside = (m == 0).nonzero()
        assert (m == 0).sum() == torch.tensor(sides).prod()
        assert [int(inside[:, d].max() - inside[:, d].min()) + 1 for d in range(len(spatial))] == sides
    a, b = (paste_mask((64, 64), 0.6667, torch.Generator().manual_seed(s)) for s in (0, 1))
    assert torch.equal(a, paste_mask((64, 64), 0.6667, torch.Generator().manual_seed(0))) and not torch.equal(a, b)


def test_pseudo_labels_keep_each_class_s_largest_component():
    lab = torch.zeros(1, 10, 10, dtype=torch.long)
    lab[0, :3, :3] = 1          # class 1: 9 pixels
    lab[0, 8:, 8:] = 1          # class 1: 4 pixels, dropped
    lab[0, 5, 0] = 2            # class 2: one pixel, kept (its only component)
    out = largest_components(lab, 3)
    assert out[0, :3, :3].eq(1).all() and out[0, 8:, 8:].eq(0).all() and out[0, 5, 0] == 2
    assert int(out.ne(0).sum()) == 10


def test_stage_two_starts_from_stage_one_s_best_weights_and_the_run_resumes_across_it(acdc_root, tmp_path,
                                                                                       monkeypatch, capsys):
    seen = []
    real = BCP.begin_stage

    def spy(self, name, best):
        real(self, name, best)
        seen.append((name, best is not None
                     and all(torch.equal(v, best[k]) for k, v in self.model.state_dict().items()),
                     all(torch.equal(t, s) for t, s in zip(self.extra["teacher"].state_dict().values(),
                                                           self.model.state_dict().values()))))

    monkeypatch.setattr(BCP, "begin_stage", spy)
    raw = tiny_overrides(acdc_root, iterations=6, ckpt_every=3, val_every=1)
    raw["method"] = {"name": "bcp", "pretrain_fraction": 0.5}
    cfg = config.resolve(raw)
    train(cfg, tmp_path / "full")
    assert seen == [("selftrain", True, True)]  # network and teacher = stage 1's best, once
    assert "stage 2 (selftrain) from iteration 3" in capsys.readouterr().out
    log = (tmp_path / "full" / "log.csv").read_text().splitlines()
    header = log[0].split(",")
    assert [row.split(",")[header.index("stage")] for row in log[1:]] == ["1", "1", "1", "2", "2", "2"]

    train(cfg, tmp_path / "cut", stop_after=3)   # stopped at the boundary, resumed into stage 2
    train(cfg, tmp_path / "cut")
    a, b = (torch.load(tmp_path / r / "checkpoints" / "latest.pt", weights_only=False) for r in ("full", "cut"))
    for part in ("model", "method"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part


def test_a_pretrain_fraction_that_empties_a_stage_stops_before_training(acdc_root, tmp_path):
    raw = tiny_overrides(acdc_root, iterations=4)
    raw["method"] = {"name": "bcp", "pretrain_fraction": 0.05}
    with pytest.raises(ConfigError, match=r"method.pretrain_fraction: 0.05 of train.iterations \(4\)"):
        train(config.resolve(raw), tmp_path / "run")
    assert not (tmp_path / "run" / "log.csv").exists()


@pytest.mark.parametrize("override, message", [({"mask_ratio": 1.0}, "method.mask_ratio must be in"),
                                               ({"u_weight": -1}, "method.u_weight must be >= 0")])
def test_bad_bcp_config_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        get_method("bcp").hyperparameters("acdc", override)
