"""UA-MT: its uncertainty mask follows the ramped threshold, its consistency
is the masked softmax MSE, its teacher is the student's EMA (its command-line run:
tests/test_method_runs.py)."""
import contextlib
import math

import pytest
import torch

from crossmatch.data.specs import get_spec
from crossmatch.errors import ConfigError
from crossmatch.methods import get_method
from crossmatch.methods.base import StepContext
from crossmatch.methods.mean_teacher import ema_decay
from crossmatch.methods.uamt import predictive_entropy, uncertainty_threshold
from crossmatch.models import build_model


def _method(dataset: str = "acdc", **hp):
    spec, info = get_spec(dataset), get_method("uamt")
    torch.manual_seed(0)
    net = build_model(spec.dim, 1, spec.n_classes, width=8)
    method = info.load()(net, spec, info.hyperparameters(dataset, hp))
    method.train()
    return method


def _batch(n: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.rand(n, 1, 32, 32, generator=g), "y": torch.randint(0, 4, (n, 32, 32), generator=g),
            "u": torch.rand(n, 1, 32, 32, generator=g)}


def _ctx(iteration: int, iterations: int) -> StepContext:
    return StepContext(iteration, torch.Generator().manual_seed(3), lambda loss: loss.backward(),
                       contextlib.nullcontext, iterations)


def test_threshold_ramps_from_three_quarters_of_ln2_to_ln2_over_the_run():
    assert uncertainty_threshold(0, 1000) == pytest.approx((0.75 + 0.25 * math.exp(-5)) * math.log(2))
    assert uncertainty_threshold(500, 1000) == pytest.approx((0.75 + 0.25 * math.exp(-1.25)) * math.log(2))
    assert uncertainty_threshold(1000, 1000) == uncertainty_threshold(5000, 1000) == pytest.approx(math.log(2))
    values = [uncertainty_threshold(i, 1000) for i in range(0, 1001, 50)]
    assert values == sorted(values)


def test_entropy_of_the_mean_of_passes():
    sure = torch.tensor([[1.0, 0.0]]).reshape(1, 1, 2, 1, 1)        # T=1, N=1, K=2, 1x1
    split = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]]).reshape(2, 1, 2, 1, 1)  # two passes that disagree
    assert predictive_entropy(sure).item() == pytest.approx(0.0, abs=1e-5)
    assert predictive_entropy(split).item() == pytest.approx(math.log(2), abs=1e-5)


def test_mask_and_consistency_follow_the_ramp_on_a_fixed_batch():
    """Without noise or teacher dropout the T passes agree: the uncertainty
    is the entropy of the teacher's softmax. The logged mask ratio is the
    share under the threshold of that iteration (wider at the end of the
    run), and the consistency is the masked softmax MSE / (2 |mask|)."""
    method = _method(noise_std=0.0, consistency=1.0, ramp_length=0)
    # deterministic passes: no dropout (batch statistics of [u; u] are those of u)
    for m in method.extra["teacher"].modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    with torch.no_grad():  # a confident teacher: entropies spread over 0 .. ln 4, not all near ln 4
        method.extra["teacher"].decoder.out.weight.mul_(10)
    batch = _batch()
    with torch.no_grad():
        probs = method.extra["teacher"](batch["u"]).softmax(1)
    entropy = -(probs * torch.log(probs + 1e-6)).sum(1, keepdim=True)
    ratios = []
    for iteration in (0, 1000):
        threshold = uncertainty_threshold(iteration, 1000)
        logs = method.training_step(batch, _ctx(iteration, 1000))
        mask = (entropy < threshold).float()
        assert logs["threshold"] == pytest.approx(threshold)
        assert logs["mask_ratio"] == pytest.approx(mask.mean().item())
        ratios.append(logs["mask_ratio"])
    assert ratios[0] < ratios[1]
    # the consistency term against a hand computation (the student's forward is stochastic:
    # rerun it with the same dropout draws)
    torch.manual_seed(5)
    logs = method.training_step(batch, _ctx(1000, 1000))
    torch.manual_seed(5)
    with torch.no_grad():
        student = method.model(torch.cat((batch["x"], batch["u"])))[2:].softmax(1)
    mask = (entropy < math.log(2)).float()
    expected = (mask * (student - probs).pow(2)).sum() / (2 * mask.sum())
    assert logs["cons"] == pytest.approx(expected.item(), rel=1e-4)
    assert logs["loss"] == pytest.approx(logs["sup"] + logs["cons"], rel=1e-6)


def test_teacher_is_the_ema_of_the_student_and_not_optimised():
    method = _method()
    teacher, student = list(method.extra["teacher"].parameters()), list(method.model.parameters())
    assert all(torch.equal(t, s) for t, s in zip(teacher, student)) and not any(t.requires_grad for t in teacher)
    assert not {id(p) for p in method.parameters()} & {id(t) for t in teacher}
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    before = [t.clone() for t in teacher]
    ctx = _ctx(0, 10)
    opt.zero_grad()
    method.training_step(_batch(), ctx)
    opt.step()
    method.after_step(ctx)
    a = ema_decay(0, 0.99)
    for t, b, s in zip(teacher, before, student):
        torch.testing.assert_close(t, a * b + (1 - a) * s, rtol=0, atol=1e-6)
    assert any(not torch.equal(t, b) for t, b in zip(teacher, before))


def test_defaults_follow_each_dimensions_code():
    two, three = (get_method("uamt").hyperparameters(d, {}) for d in ("acdc", "la"))
    assert (two["ema_decay"], two["consistency"], two["passes"], two["ramp_length"]) == (0.99, 0.1, 8, 30000)
    assert three["ramp_length"] == 6000


@pytest.mark.parametrize("override, message", [({"passes": 3}, "method.passes must be an even number"),
                                               ({"ema_decay": 1.0}, "method.ema_decay must be in"),
                                               ({"tau": 0.9}, "not a hyperparameter of 'uamt'")])
def test_bad_uamt_config_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        get_method("uamt").hyperparameters("acdc", override)
