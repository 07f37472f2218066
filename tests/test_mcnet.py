"""MC-Net: its two decoders differ only in upsampling, its consistency is
the cross sharpened-prediction MSE with gradients on both sides, only the
first decoder is the evaluated network (its command-line run:
tests/test_method_runs.py)."""
import contextlib

import pytest
import torch

from crossmatch.data.specs import get_spec
from crossmatch.errors import ConfigError
from crossmatch.methods import get_method
from crossmatch.methods.base import StepContext
from crossmatch.methods.mcnet import sharpen
from crossmatch.models import build_model


SIZE = {2: (32, 32), 3: (32, 32, 16)}


def _method(dataset: str, **hp):
    spec, info = get_spec(dataset), get_method("mcnet")
    torch.manual_seed(0)
    net = build_model(spec.dim, 1, spec.n_classes, width=8, decoder_dropout=0.5)
    method = info.load()(net, spec, info.hyperparameters(dataset, hp))
    method.train()
    return method


def _batch(dim: int, k: int, n: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"x": torch.rand(n, 1, *SIZE[dim], generator=g), "y": torch.randint(0, k, (n, *SIZE[dim]), generator=g),
            "u": torch.rand(n, 1, *SIZE[dim], generator=g)}


def _upsampling(name: str) -> bool:
    """State-dict keys of a decoder's upsampling layers (ups.<i>.0 / reduce / up)."""
    parts = name.split(".")
    return parts[0] == "ups" and (parts[2] in ("up", "reduce") or parts[2] == "0")


@pytest.mark.parametrize("dataset", ["acdc", "la"])
def test_two_decoders_differ_only_in_upsampling(dataset):
    method = _method(dataset)
    one, two = method.model.decoder, method.extra["decoder2"]
    a, b = one.state_dict(), two.state_dict()
    rest_a = {k: v.shape for k, v in a.items() if not _upsampling(k)}
    rest_b = {k: v.shape for k, v in b.items() if not _upsampling(k)}
    assert rest_a == rest_b and len(rest_a) > 10
    kinds = (torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d, torch.nn.Upsample)
    ups_a = [type(m).__name__ for m in one.modules() if isinstance(m, kinds)]
    ups_b = [type(m).__name__ for m in two.modules() if isinstance(m, kinds)]
    assert len(ups_a) == len(ups_b) == 4 and set(ups_a) != set(ups_b)
    if dataset == "la":  # the V-Net's own (transposed) first, MC-Net's trilinear second
        modes = {m.mode for m in two.modules() if isinstance(m, torch.nn.Upsample)}
        assert set(ups_a) == {"ConvTranspose3d"} and modes == {"trilinear"}
    else:  # the UNet's bilinear first, transposed second (mcnet2d_v1: up_type 1 and 0)
        assert set(ups_a) == {"Upsample"} and set(ups_b) == {"ConvTranspose2d"}
    # only the first decoder is the network (evaluated, kept in best.pt / final.pt)
    assert not any(k.startswith("decoder2") for k in method.model.state_dict())
    assert {id(p) for p in two.parameters()} <= {id(p) for p in method.parameters()}


def test_sharpening():
    p = torch.tensor([0.0, 0.2, 0.5, 0.8, 1.0])
    torch.testing.assert_close(sharpen(p, 1.0), p)
    s = sharpen(p, 0.1)
    assert s[2] == pytest.approx(0.5) and s[1] < 0.01 and s[3] > 0.99 and s[0] == 0 and s[4] == 1


@pytest.mark.parametrize("dataset", ["acdc", "la"])
def test_loss_is_lamda_dice_plus_ramped_cross_consistency_through_both_decoders(dataset):
    spec = get_spec(dataset)
    method = _method(dataset, ramp_length=0)
    hp = method.hp
    batch = _batch(spec.dim, spec.n_classes)
    method.extra.eval()  # deterministic decoders: dropout off in both (the encoder too)
    method.model.eval()
    logs = method.training_step(batch, StepContext(0, torch.Generator(), lambda loss: loss.backward(),
                                                   contextlib.nullcontext))
    assert logs["loss"] == pytest.approx(hp["lamda"] * logs["sup"] + hp["consistency"] * logs["cons"], rel=1e-6)
    with torch.no_grad():
        feats = method.model.encoder(torch.cat((batch["x"], batch["u"])))
        p1, p2 = method.model.decoder(feats).softmax(1), method.extra["decoder2"](feats).softmax(1)
    t = hp["temperature"]
    cons = (p1 - sharpen(p2, t)).pow(2).mean() + (p2 - sharpen(p1, t)).pow(2).mean()
    assert logs["cons"] == pytest.approx(cons.item(), rel=1e-5)
    assert logs["sup_dice2"] > 0 and logs["sup"] == pytest.approx(logs["sup_dice"] + logs["sup_dice2"], rel=1e-6)
    # the consistency alone moves both decoders (no detached side), the encoder too
    method.model.zero_grad()
    method.extra.zero_grad()
    method.hp = {**hp, "lamda": 0.0}
    method.training_step(batch, StepContext(0, torch.Generator(), lambda loss: loss.backward(), contextlib.nullcontext))
    for part in (method.model.encoder, method.model.decoder, method.extra["decoder2"]):
        assert sum(p.grad.abs().sum().item() for p in part.parameters() if p.grad is not None) > 0


def test_defaults_follow_each_dimensions_code():
    two, three = (get_method("mcnet").hyperparameters(d, {}) for d in ("acdc", "la"))
    assert (two["lamda"], two["consistency"], two["ramp_length"], two["temperature"]) == (1.0, 0.1, 30000, 0.1)
    assert (three["lamda"], three["consistency"], three["ramp_length"]) == (0.5, 1.0, 6000)


@pytest.mark.parametrize("override, message", [({"temperature": 0}, "method.temperature must be > 0"),
                                               ({"lamda": -1}, "method.lamda must be >= 0")])
def test_bad_mcnet_config_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        get_method("mcnet").hyperparameters("la", override)
