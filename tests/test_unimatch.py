"""UniMatch: its defining invariants on a fixed batch (against CrossMatch with
both distillation streams off, and as SemSim's base), 2D and 3D, and a short
run through the command line."""
import contextlib
import copy
import json

import pytest
import torch

from crossmatch.data.specs import get_spec
from crossmatch.errors import ConfigError
from crossmatch.losses import masked_dice, pseudo_label
from crossmatch.methods import get_method
from crossmatch.methods.base import StepContext
from crossmatch.models import build_model

from conftest import tiny_overrides, train_and_evaluate_cli


def _frozen_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """Batch norm on running statistics and no encoder dropout, whatever
    ``train()`` says: every sample's prediction then depends on that sample
    alone, so predictions of one image in differently stacked batches agree."""
    for m in model.modules():
        if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.Dropout, torch.nn.Dropout3d)):
            m.eval()
            m.train = lambda mode=True, m=m: m
    return model


def _batch(dim: int, n: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    size = (32, 32) if dim == 2 else (32, 32, 16)
    k = 4 if dim == 2 else 2
    return {"x": torch.rand(n, 1, *size, generator=g), "y": torch.randint(0, k, (n, *size), generator=g),
            "u": torch.rand(n, 1, *size, generator=g), "u_mix": torch.rand(n, 1, *size, generator=g)}


def _step(name: str, dataset: str, model: torch.nn.Module, batch: dict, **hp) -> tuple[dict, object]:
    info, spec = get_method(name), get_spec(dataset)
    method = info.load()(model, spec, info.hyperparameters(dataset, hp))
    method.train()
    torch.manual_seed(11)  # after the method's own modules are built: equal dropout draws on both sides
    ctx = StepContext(0, torch.Generator().manual_seed(7), lambda loss: loss.backward(), contextlib.nullcontext)
    return method.training_step(batch, ctx), method


@pytest.mark.parametrize("dataset", ["acdc", "la"])
def test_unimatch_is_crossmatch_without_its_distillation_streams(dataset):
    """CrossMatch extends UniMatch: with both distillation streams off it
    computes UniMatch's supervised and strong-view terms, with UniMatch's
    weights; UniMatch adds its FP term (weight 0.5 of the unlabeled part)."""
    spec = get_spec(dataset)
    torch.manual_seed(0)
    net = _frozen_statistics(build_model(spec.dim, 1, spec.n_classes, width=8))
    batch = _batch(spec.dim)
    # tau 0: every pixel counts (an untrained network's confidence is low), so no term is trivially 0
    uni, u_method = _step("unimatch", dataset, copy.deepcopy(net), batch, tau=0.0)
    cm, c_method = _step("crossmatch", dataset, copy.deepcopy(net), batch, tau=0.0, tkd=False, dkd=False,
                         tau_schedule="constant")
    assert min(uni["u_s1"], uni["u_s2"], uni["u_fp"], uni["sup"]) > 0.01
    assert uni["sup"] == pytest.approx(cm["sup"], rel=1e-6)
    assert uni["u_s1"] == pytest.approx(cm["ip_s1"], rel=1e-6)
    assert uni["u_s2"] == pytest.approx(cm["ip_s2"], rel=1e-6)
    wu, wc = u_method.weights(0), c_method.weights(0)
    if dataset == "acdc":  # the 2D reference's loss form: (sup + .25 s1 + .25 s2 [+ .5 fp]) / 2
        assert (wu["sup"], wu["u_s1"], wu["u_s2"]) == (wc["sup"], wc["ip_s1"], wc["ip_s2"]) == (0.5, 0.125, 0.125)
    assert wu["u_fp"] == 0.25 and "u_fp" not in cm
    assert uni["loss"] == pytest.approx(sum(wu[k] * uni[k] for k in wu))


def test_unimatch_is_semsim_without_its_similarity_terms():
    """SemSim runs UniMatch's step: its UniMatch terms equal UniMatch's own
    (same weights, same draws), the similarity terms come on top."""
    torch.manual_seed(0)
    net = build_model(2, 1, 4, width=8)
    batch = _batch(2)
    uni, u_method = _step("unimatch", "acdc", copy.deepcopy(net), batch)
    sem, s_method = _step("semsim", "acdc", copy.deepcopy(net), batch, w_u=1.0)
    for term in ("sup", "u_fp", "u_s1", "u_s2"):
        assert sem[term] == pytest.approx(uni[term], rel=1e-6), term
        assert s_method.weights(0)[term] == u_method.weights(0)[term]
    assert {"intra", "cross"} <= set(sem) and not {"intra", "cross"} & set(uni)


def test_fp_stream_is_the_weak_views_features_with_channels_dropped():
    """The FP term decodes the weak view's encoder features through the
    channel dropout (nn.Dropout2d(0.5) in the reference): with p 0 it is the
    Dice of the weak view's own prediction against its own pseudo-label."""
    spec = get_spec("acdc")
    torch.manual_seed(0)
    net = _frozen_statistics(build_model(2, 1, 4, width=8))
    batch = _batch(2)
    out, method = _step("unimatch", "acdc", copy.deepcopy(net), batch, fp_p=0.0, tau=0.0)
    assert method.fp_drop.kind == "dropout"
    with torch.no_grad():
        pred_w = net(batch["u"], drop=False)
    conf, label = pseudo_label(pred_w.softmax(1))
    own = masked_dice(pred_w, label, conf, 0.0, from_class=spec.dice_from_class, smooth=spec.dice_smooth)
    assert out["u_fp"] == pytest.approx(float(own), rel=1e-5)
    out_half, _ = _step("unimatch", "acdc", copy.deepcopy(net), batch, fp_p=0.5, tau=0.0)
    assert out_half["u_fp"] != pytest.approx(float(own), rel=1e-5)  # the dropout perturbs


@pytest.mark.parametrize("override, message", [({"tau": 1.5}, "method.tau must be in"),
                                               ({"fp_p": 1.0}, "method.fp_p must be in"),
                                               ({"eta": 0.3}, "not a hyperparameter of 'unimatch'")])
def test_bad_unimatch_config_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        get_method("unimatch").hyperparameters("acdc", override)


def test_unimatch_trains_and_evaluates_through_the_command_line(acdc_root, tmp_path):
    run = train_and_evaluate_cli({**tiny_overrides(acdc_root, iterations=4), "method": {"name": "unimatch"}},
                                 tmp_path)
    log = (run / "log.csv").read_text().splitlines()
    assert {"sup", "u_s1", "u_s2", "u_fp", "mask_ratio"} <= set(log[0].split(",")) and len(log) == 5
    summary = json.loads((run / "eval/best/summary.json").read_text())
    assert summary["experiment"].startswith("acdc/unimatch/l3/tau0.95/")
