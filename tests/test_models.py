import re

import pytest
import torch

from crossmatch.models import DROPOUT_TYPES, FeatureDropout, build_model


@pytest.mark.parametrize("dim,shape", [(2, (4, 1, 32, 48)), (3, (2, 1, 16, 16, 32))])
def test_output_shapes_with_and_without_fp(dim, shape):
    n_classes = 4 if dim == 2 else 2
    model = build_model(dim, 1, n_classes)
    x = torch.randn(shape)
    out = model(x)
    assert out.shape == (shape[0], n_classes, *shape[2:])
    a, b, bw, bs = model(x, need_fp=True)
    half = shape[0] // 2
    for t in (a, b, bw, bs):
        assert t.shape == (half, n_classes, *shape[2:])
    # split=0 perturbs the whole batch
    a, b, bw, bs = model(x, need_fp=True, split=0)
    assert a.shape[0] == 0 and b.shape[0] == bw.shape[0] == bs.shape[0] == shape[0]


def test_width_scales_every_stage():
    """model.width is the first stage's channels (16: the reference networks,
    1,813,764 parameters in 2D); every stage doubles it, so parameters scale
    about with width squared, and the output shape does not change."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    for dim, n_classes, shape in ((2, 4, (2, 1, 32, 32)), (3, 2, (2, 1, 16, 16, 16))):
        ref, half = build_model(dim, 1, n_classes), build_model(dim, 1, n_classes, width=8)
        assert 3.5 < count(ref) / count(half) < 4.5
        assert half(torch.randn(shape)).shape == ref(torch.randn(shape)).shape
    assert count(build_model(2, 1, 4)) == 1_813_764


def test_stacked_streams_equal_looped_streams():
    torch.manual_seed(0)
    stacked = build_model(2, 1, 4).eval()
    looped = build_model(2, 1, 4, stack_streams=False).eval()
    looped.load_state_dict(stacked.state_dict())
    x = torch.randn(4, 1, 32, 32)
    torch.manual_seed(1)
    out_s = stacked(x, need_fp=True)
    torch.manual_seed(1)
    out_l = looped(x, need_fp=True)
    for s, l in zip(out_s, out_l):
        torch.testing.assert_close(s, l, rtol=1e-4, atol=1e-5)


def test_clean_stream_of_fp_equals_plain_forward_in_eval():
    model = build_model(2, 1, 4).eval()
    x = torch.randn(4, 1, 32, 32)
    a, b, bw, bs = model(x, need_fp=True)
    torch.testing.assert_close(torch.cat((a, b)), model(x), rtol=1e-4, atol=1e-5)
    # the perturbed streams differ from the clean one
    assert not torch.allclose(bw, b) and not torch.allclose(bs, b)


@pytest.mark.parametrize("kind", DROPOUT_TYPES)
def test_feature_dropout_active_in_eval_mode(kind):
    drop = FeatureDropout(0.75, kind).eval()
    x = torch.ones(2, 8, 4, 4)
    assert not torch.equal(drop(x), x)


def test_dropout_rates_and_bad_type():
    model = build_model(2, 1, 4, dropout_type="alpha")
    assert model.perturb.weak.p == 0.25 and model.perturb.strong.p == 0.75
    with pytest.raises(ValueError, match="dropout_type"):
        build_model(2, 1, 4, dropout_type="bogus")


@pytest.mark.parametrize("upsample", ["transpose", "bilinear"])
def test_unet_upsampling_modes(upsample):
    model = build_model(2, 1, 4, upsample=upsample)
    x = torch.randn(4, 1, 32, 48)
    assert model(x).shape == (4, 4, 32, 48)
    has_transpose = any(isinstance(m, torch.nn.ConvTranspose2d) for m in model.modules())
    assert has_transpose == (upsample == "transpose")
    # the references' UNet (bilinear upsampling): 1,813,764 parameters for 1 -> 4 classes; transpose 1,944,324
    n = sum(p.numel() for p in model.parameters())
    assert n == (1944324 if upsample == "transpose" else 1813764)
    with pytest.raises(ValueError, match="upsample"):
        build_model(2, 1, 4, upsample="nearest")


def test_config_default_upsampling_is_the_references():
    from crossmatch import config
    from crossmatch.errors import ConfigError
    assert config.load(None)["model"]["upsample"] == "bilinear"  # the reference's network
    with pytest.raises(ConfigError, match="model.upsample"):
        config.load(None, ["model.upsample=nearest"])


@pytest.mark.parametrize("p", ["1.0", "-0.1"])
def test_config_rejects_decoder_dropout_outside_unit_interval(p):
    from crossmatch import config
    from crossmatch.errors import ConfigError
    assert config.load(None)["model"]["decoder_dropout"] == 0.5
    with pytest.raises(ConfigError, match=r"model.decoder_dropout must be in \[0, 1\), got " + re.escape(p)):
        config.load(None, [f"model.decoder_dropout={p}"])


def test_vnet_decoder_dropout_as_the_reference():
    """UA-MT / CrossMatch-LA V-Net: Dropout3d(0.5) on the last decoder stage in plain
    training passes only: not in the perturbation streams (stacked or looped), not with
    drop=False, never in eval mode; configs without the key build it off."""
    from crossmatch.models import build_model
    from crossmatch.models.vnet3d import VNet3d

    class Counting(torch.nn.Dropout3d):
        calls = 0

        def forward(self, x):
            Counting.calls += 1
            return super().forward(x)

    torch.manual_seed(0)
    x = torch.randn(2, 1, 16, 16, 16)
    for stack in (True, False):
        net = VNet3d(1, 2, encoder_dropout=0.0, stack_streams=stack)
        net.decoder.dropout = Counting(0.5)
        net.train()
        net(x, need_fp=True)
        net(x, drop=False)
        assert Counting.calls == 0
        logits, stages = net(x, features=True)
        assert Counting.calls == 1
        dropped = stages[-1].flatten(2).abs().sum(-1) == 0       # whole channels zeroed
        assert 0 < dropped.sum() < dropped.numel()
        net.eval()
        assert torch.equal(net(x), net(x))
        Counting.calls = 0
    assert build_model(3, 1, 2).decoder.dropout.p == 0.0                       # old run configs
    assert build_model(3, 1, 2, decoder_dropout=0.5).decoder.dropout.p == 0.5
