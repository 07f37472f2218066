"""SemSim: its similarity components, its place in the shared trainer, and
short runs through the command line (synthetic, and real ACDC when present)."""
import contextlib
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml

from crossmatch import config
from crossmatch.data.specs import get_spec
from crossmatch.errors import ConfigError
from crossmatch.losses import dice_loss
from crossmatch.methods.base import StepContext
from crossmatch.methods.semsim import (SemSim, SpatialFusion, affinity, cross_loss, rectify,
                                       region_prototypes, uncertainty_weight)
from crossmatch.models import build_model

from conftest import tiny_overrides


def _method(**hp):
    torch.manual_seed(1)
    return SemSim(build_model(2, 1, 4), get_spec("acdc"), SemSim.hyperparameters("acdc", hp))


def _batch(size=32, n=2):
    torch.manual_seed(0)
    return {"x": torch.rand(n, 1, size, size), "y": torch.randint(0, 4, (n, size, size)),
            "u": torch.rand(n, 1, size, size), "u_mix": torch.rand(n, 1, size, size)}


def _ctx(backward=lambda loss: loss.backward()):
    return StepContext(0, torch.Generator().manual_seed(2), backward,
                       contextlib.nullcontext)


def test_affinity_rows_sum_to_one():
    m = affinity(torch.randn(3, 8, 4, 5), temperature=0.1)
    assert m.shape == (3, 20, 20) and (m >= 0).all()
    torch.testing.assert_close(m.sum(-1), torch.ones(3, 20))
    # the rectified prediction stays a distribution
    probs = torch.randn(3, 4, 16, 20).softmax(1)
    torch.testing.assert_close(rectify(probs, torch.randn(3, 8, 4, 5), 0.1).sum(1), torch.ones(3, 16, 20))


def test_class_missing_from_a_sub_region_falls_back_to_the_image_prototype():
    # 4x4 features, 2x2 regions of 2x2 positions; each region has its own feature value
    feats = torch.zeros(1, 2, 4, 4)
    feats[0, 0, :2, :2], feats[0, 0, :2, 2:], feats[0, 0, 2:, :2], feats[0, 0, 2:, 2:] = 1, 2, 3, 4
    feats[0, 1] = torch.arange(16.0).view(4, 4)
    labels = torch.zeros(1, 8, 8, dtype=torch.long)   # labels at twice the feature resolution
    labels[0, :4, :2] = 1                              # class 1 only in region 0 (top-left)
    labels[0, 4:, 4:] = 2                              # class 2 only in region 3 (bottom-right)
    protos, present = region_prototypes(feats, labels, n_classes=4, grid=2)
    assert protos.shape == (4, 4, 2)
    assert present.tolist() == [True, True, True, False]
    # region 0 sees class 1 (its left column): its own prototype
    torch.testing.assert_close(protos[0, 1], torch.tensor([1.0, (0 + 4) / 2]))
    # regions 1-3 have no class 1: the image prototype, which is region 0's here
    for r in (1, 2, 3):
        torch.testing.assert_close(protos[r, 1], protos[0, 1])
    torch.testing.assert_close(protos[0, 2], protos[3, 2])
    # background everywhere: each region averages its own features
    torch.testing.assert_close(protos[1, 0], torch.tensor([2.0, (2 + 3 + 6 + 7) / 4]))


def test_sfm_keeps_shapes_is_a_method_extra_and_is_trained():
    sfm = SpatialFusion([64, 32, 16], dim=32, window=4, heads=4)
    stages = [torch.randn(2, 64, 12, 20), torch.randn(2, 32, 24, 40), torch.randn(2, 16, 48, 80)]
    for size in ((6, 10), (3, 5), (12, 20)):  # windows that do and do not divide the grid
        assert sfm(stages, size).shape == (2, 32, *size)

    method = _method(tau=0.0)
    assert isinstance(method.extra["sfm"], SpatialFusion)
    ids = {id(p) for p in method.parameters()}
    assert all(id(p) in ids for p in method.extra["sfm"].parameters())
    before = {k: v.clone() for k, v in method.extra.state_dict().items()}
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    logs = method.training_step(_batch(), _ctx())
    opt.step()
    assert logs["intra"] > 0 and logs["mask_ratio"] == 1
    changed = [k for k, v in method.extra.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("sfm.proj") for k in changed) and any("attn" in k for k in changed)


def test_uncertainty_weight_is_one_for_equal_distributions_and_falls_with_kl():
    teacher = torch.tensor([0.7, 0.1, 0.1, 0.1]).view(1, 4, 1, 1)
    assert uncertainty_weight(teacher.log(), teacher, r=1000).item() == pytest.approx(1.0, abs=1e-5)
    weights = []
    for eps in (0.0, 0.001, 0.01, 0.1, 0.3):
        q = teacher + eps * torch.tensor([-1.0, 1.0, 0.0, 0.0]).view(1, 4, 1, 1)
        weights.append(uncertainty_weight(q.log(), teacher, r=1000).item())
    assert weights == sorted(weights, reverse=True) and weights[-1] < 1e-3
    # r scales the penalty: r = 0 trusts every pixel
    q = torch.tensor([0.25] * 4).view(1, 4, 1, 1)
    assert uncertainty_weight(q.log(), teacher, r=0).item() == 1.0


def test_a_pixel_under_tau_contributes_nothing():
    torch.manual_seed(0)
    n, k, h, w, tau = 2, 4, 8, 8, 0.6
    conf = torch.rand(n, h, w)
    low = conf < tau
    assert low.any() and (~low).any()
    target = torch.randint(0, k, (n, h, w))
    teacher = torch.randn(n, k, h, w).softmax(1)
    present = torch.ones(k, dtype=torch.bool)
    other_target = torch.where(low, (target + 1) % k, target)
    other_teacher = torch.where(low[:, None], torch.randn(n, k, h, w).softmax(1), teacher)

    # cross-image term: neither the query nor the targets at that pixel matter
    logits = torch.randn(n, k, h, w, requires_grad=True)
    loss, _ = cross_loss(logits, target, conf, tau, teacher, 1.0, present)
    loss.backward()
    assert logits.grad[low[:, None].expand_as(logits)].abs().max() == 0
    other_logits = torch.where(low[:, None], torch.randn(n, k, h, w), logits.detach())
    again, _ = cross_loss(other_logits, other_target, conf, tau, other_teacher, 1.0, present)
    torch.testing.assert_close(again, loss.detach())

    # intra-image term: the rectified prediction at that pixel is not scored
    rect = torch.randn(n, k, h, w).softmax(1).requires_grad_()
    loss = dice_loss(rect, target, conf >= tau)
    loss.backward()
    assert rect.grad[low[:, None].expand_as(rect)].abs().max() == 0
    torch.testing.assert_close(dice_loss(rect.detach(), other_target, conf >= tau), loss.detach())

    # a whole step with no confident pixel: every unlabeled term is zero and the SFM gets no gradient
    method = _method(tau=0.999999)
    logs = method.training_step(_batch(), _ctx())
    assert logs["mask_ratio"] == 0
    assert all(logs[t] == 0 for t in ("u_s1", "u_s2", "u_fp", "intra", "cross"))
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in method.extra.parameters())


def test_split_backward_gives_the_same_gradient_as_one_backward():
    grads = []
    for split in (True, False):
        method = _method(tau=0.3, r=1.0, split_backward=split)
        method.training_step(_batch(), _ctx())
        grads.append([p.grad.clone() for p in method.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_total_loss_weights():
    w = _method().weights(0)
    # (L_s + 0.5 (0.25 s1 + 0.25 s2 + 0.5 fp) + 0.25 intra + 0.25 cross) / 2
    assert w == pytest.approx({"sup": 0.5, "u_s1": 0.0625, "u_s2": 0.0625, "u_fp": 0.125,
                               "intra": 0.125, "cross": 0.125})


def test_3d_dataset_is_rejected_at_config_resolution():
    with pytest.raises(ConfigError, match="method.name: semsim supports 2D datasets only; la is 3D"):
        config.load(None, ["dataset.name=la", "method.name=semsim"])


@pytest.mark.parametrize("override,message", [
    ("method.tau=1.0", "method.tau must be in"),
    ("method.n_regions=3", "method.n_regions must be a square"),
    ("method.feature_scale=2", "method.feature_scale must be one of"),
    ("method.r=-1", "method.r must be >= 0"),
    ("method.temperature=0", "method.temperature must be > 0"),
    ("method.sfm_dim=30", "method.sfm_dim must be a positive multiple"),
    ("method.fp_p=1.0", "method.fp_p must be in"),
])
def test_bad_hyperparameters_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        config.load(None, ["method.name=semsim", override])


def cli(*args: str, env=None, check=True) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "crossmatch", *args], capture_output=True, text=True,
                         env=env)
    if check:
        assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.mark.slow
def test_cli_train_evaluate_and_resume_after_a_kill(acdc_root, tmp_path):
    raw = tiny_overrides(acdc_root, iterations=4, ckpt_every=2, val_every=2)
    raw["method"] = {"name": "semsim", "tau": 0.5}
    cfg_file = tmp_path / "semsim.yaml"
    cfg_file.write_text(yaml.safe_dump(raw))
    full, cut = tmp_path / "full", tmp_path / "cut"
    cli("train", "--config", str(cfg_file), "--out", str(full))
    out = cli("evaluate", "--run", str(full)).stdout
    assert "final (iteration 4)" in out
    rows = pd.read_csv(full / "eval" / "final" / "metrics_per_case.csv")
    assert len(rows) == 3 and rows["dice"].between(0, 1).all()
    assert json.loads((full / "eval" / "best" / "summary.json").read_text())["checkpoint"] == "best"
    log = pd.read_csv(full / "log.csv")
    for col in ("sup", "u_s1", "u_s2", "u_fp", "intra", "cross", "mask_ratio", "cross_weight"):
        assert log[col].notna().all(), col

    # the process dies right after the checkpoint at iteration 2; the same command resumes it
    env = {**os.environ, "CROSSMATCH_FAIL_ONCE": str(tmp_path / "failed")}
    res = cli("train", "--config", str(cfg_file), "--out", str(cut), env=env, check=False)
    assert res.returncode == 1 and "injected failure" in res.stderr
    state = torch.load(cut / "checkpoints" / "latest.pt", weights_only=False)
    assert state["iteration"] == 2 and any(k.startswith("sfm.") for k in state["method"])
    cli("train", "--config", str(cfg_file), "--out", str(cut), env=env)
    a = torch.load(full / "checkpoints" / "final.pt", weights_only=False)["model"]
    b = torch.load(cut / "checkpoints" / "final.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sfm_a = torch.load(full / "checkpoints" / "latest.pt", weights_only=False)["method"]
    sfm_b = torch.load(cut / "checkpoints" / "latest.pt", weights_only=False)["method"]
    assert all(torch.equal(sfm_a[k], sfm_b[k]) for k in sfm_a)
    pd.testing.assert_series_equal(log["loss"], pd.read_csv(cut / "log.csv")["loss"])


@pytest.mark.realdata
def test_acdc_short_real_run_writes_metrics(roots, tmp_path):
    root = roots / "acdc"
    run = tmp_path / "run"
    cli("train", "--out", str(run), "--set", f"dataset.root={root}", "--set", "dataset.labeled=3",
        "--set", "method.name=semsim", "--set", "train.iterations=4", "--set", "train.batch_size=2",
        "--set", "train.crop=[64,64]", "--set", "train.val_every=2", "--set", "eval.val_cases=2")
    out = cli("evaluate", "--run", str(run), "--limit", "2").stdout
    assert "final (iteration 4)" in out and "best (iteration" in out
    rows = pd.read_csv(run / "eval" / "limited" / "final" / "metrics_per_case.csv")
    assert len(rows) == 6 and rows["dice"].between(0, 1).all()
    log = pd.read_csv(run / "log.csv")
    assert len(log) == 4 and log["loss"].notna().all() and log["intra"].notna().all()


def test_uncertainty_weight_ignores_classes_absent_from_the_labeled_batch():
    """A class no labeled pixel shows gets the query logit ABSENT; the teacher's (never
    zero) softmax mass on it must not zero the weight: the KL runs over the present
    classes with the teacher renormalised over them."""
    from crossmatch.methods.semsim import ABSENT
    present = torch.tensor([True, True, False, True])
    logits = torch.tensor([2.0, 0.5, ABSENT, -1.0]).view(1, 4, 1, 1)
    log_q = torch.log_softmax(logits, 1)
    q_present = log_q.exp()[0, [0, 1, 3], 0, 0]
    teacher = torch.tensor([0.0, 0.0, 1e-3, 0.0]).view(1, 4, 1, 1)
    teacher[0, [0, 1, 3], 0, 0] = q_present * (1 - 1e-3)      # agrees with the query on present classes
    assert uncertainty_weight(log_q, teacher, r=1000).item() < 1e-6          # without the mask: poisoned
    assert uncertainty_weight(log_q, teacher, r=1000, present=present).item() == pytest.approx(1.0, abs=1e-4)
    # and it still falls as the distributions diverge over the present classes
    other = torch.tensor([0.2, 0.7, 1e-3, 0.099]).view(1, 4, 1, 1)
    assert uncertainty_weight(log_q, other, r=10, present=present).item() < 0.5
