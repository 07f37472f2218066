"""Tests for crossmatch.inference with fake models whose output is known."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crossmatch.inference import predict_slices_2d, sliding_window_3d


class NearestInteger(torch.nn.Module):
    """Pointwise model: logit_k = -10 (x - k)^2, so argmax = round(x) for x in [0, K-1].

    Works for any spatial rank; records mode/grad state seen in forward and
    the inputs it received.
    """

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.inputs: list[torch.Tensor] = []
        self.seen_training: list[bool] = []
        self.seen_grad: list[bool] = []
        self.frozen = torch.nn.BatchNorm1d(1).eval()  # stays in eval across calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().cpu().clone())
        self.seen_training.append(self.training)
        self.seen_grad.append(torch.is_grad_enabled())
        mean = x.mean(dim=1, keepdim=True)  # RGB: channel mean
        ks = torch.arange(self.n_classes, dtype=x.dtype).view(1, -1, *([1] * (x.dim() - 2)))
        return -10.0 * (mean - ks) ** 2


# ----------------------------------------------------------------------------- 3D


def test_sliding_window_padding_path_exact_labels():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(5, 6, 7))
    vol = labels + rng.uniform(-0.3, 0.3, size=labels.shape)
    model = NearestInteger(3)
    out = sliding_window_3d(model, vol, patch=(8, 8, 8), stride=(4, 4, 4), n_classes=3, device="cpu")
    assert out.dtype == np.uint8 and out.shape == (5, 6, 7)
    np.testing.assert_array_equal(out, labels)
    # One window over the zero-padded volume; pads (3, 2, 1) split as (1,2), (1,1), (0,1).
    assert len(model.inputs) == 1 and model.inputs[0].shape == (1, 1, 8, 8, 8)
    expected = np.pad(vol.astype(np.float32), [(1, 2), (1, 1), (0, 1)])
    np.testing.assert_array_equal(model.inputs[0][0, 0].numpy(), expected)


def test_sliding_window_overlapping_windows_exact_labels_and_origins():
    shape, patch, stride = (20, 13, 9), (8, 8, 8), (4, 4, 4)
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=shape)
    vol = labels + rng.uniform(-0.3, 0.3, size=shape)
    model = NearestInteger(4)
    out = sliding_window_3d(model, vol, patch, stride, n_classes=4, device="cpu", batch_size=5)
    np.testing.assert_array_equal(out, labels)

    # Window origins follow UA-MT: ceil((n-p)/s)+1 steps, start min(s*i, n-p).
    # axis 0: ceil(12/4)+1 = 4 -> 0,4,8,12; axis 1: ceil(5/4)+1 = 3 -> 0,4,5;
    # axis 2: ceil(1/4)+1 = 2 -> 0,1.  24 windows, batches of 5,5,5,5,4.
    coded = np.indices(shape).astype(np.float32)
    coded = coded[0] * 10000 + coded[1] * 100 + coded[2]  # exact in float32
    probe = NearestInteger(2)
    sliding_window_3d(probe, coded, patch, stride, n_classes=2, device="cpu", batch_size=5)
    assert [x.shape[0] for x in probe.inputs] == [5, 5, 5, 5, 4]
    corners = torch.cat(probe.inputs)[:, 0, 0, 0, 0].numpy().astype(int)
    got = [(c // 10000, c // 100 % 100, c % 100) for c in corners]
    assert got == list(itertools.product([0, 4, 8, 12], [0, 4, 5], [0, 1]))


def _ua_mt_reference(net, image, patch, stride, num_classes):
    """Direct transcription of UA-MT's test_single_case (per-axis strides, CPU)."""
    w, h, d = image.shape
    pads = [max(p - n, 0) for p, n in zip(patch, image.shape)]
    image = np.pad(image, [(p // 2, p - p // 2) for p in pads], mode="constant", constant_values=0)
    ww, hh, dd = image.shape
    sx = math.ceil((ww - patch[0]) / stride[0]) + 1
    sy = math.ceil((hh - patch[1]) / stride[1]) + 1
    sz = math.ceil((dd - patch[2]) / stride[2]) + 1
    score_map = np.zeros((num_classes,) + image.shape, dtype=np.float32)
    cnt = np.zeros(image.shape, dtype=np.float32)
    for x in range(sx):
        xs = min(stride[0] * x, ww - patch[0])
        for y in range(sy):
            ys = min(stride[1] * y, hh - patch[1])
            for z in range(sz):
                zs = min(stride[2] * z, dd - patch[2])
                t = image[xs : xs + patch[0], ys : ys + patch[1], zs : zs + patch[2]]
                with torch.no_grad():
                    y1 = net(torch.from_numpy(t[None, None].astype(np.float32)))
                score_map[:, xs : xs + patch[0], ys : ys + patch[1], zs : zs + patch[2]] += (
                    F.softmax(y1, dim=1)[0].numpy()
                )
                cnt[xs : xs + patch[0], ys : ys + patch[1], zs : zs + patch[2]] += 1
    score_map = score_map / cnt[None]
    l0, l1, l2 = (p // 2 for p in pads)
    return score_map[:, l0 : l0 + w, l1 : l1 + h, l2 : l2 + d]


def test_sliding_window_matches_ua_mt_with_context_dependent_model():
    # A 3x3x3 conv with zero padding sees different context in each window, so
    # the result depends on the exact window layout and averaging.
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 3, 3, padding=1)
    vol = np.random.default_rng(2).normal(size=(6, 15, 11)).astype(np.float32)
    patch, stride = (8, 8, 8), (3, 5, 4)  # axis 0 padded, axes 1-2 overlapping
    ref = _ua_mt_reference(net, vol, patch, stride, 3)
    out = sliding_window_3d(net, vol, patch, stride, n_classes=3, device="cpu", batch_size=4)
    srt = np.sort(ref, axis=0)
    clear = (srt[-1] - srt[-2]) > 1e-4  # ignore float near-ties from batching
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(out[clear], ref.argmax(0)[clear])


def test_sliding_window_restores_training_mode():
    model = NearestInteger(2).train()
    model.frozen.eval()
    sliding_window_3d(model, np.zeros((4, 4, 4)), (4, 4, 4), (2, 2, 2), 2, "cpu")
    assert model.seen_training == [False] and model.seen_grad == [False]
    assert model.training is True and model.frozen.training is False


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(patch=(8, 8)), "patch must be a sequence of 3"),
        (dict(patch=(8, 0, 8)), "patch must be a sequence of 3 positive"),
        (dict(stride=(4, 4, -1)), "stride must be a sequence of 3 positive"),
        (dict(stride=(4, 9, 4)), "must not exceed patch"),
        (dict(n_classes=1), "n_classes"),
        (dict(batch_size=0), "batch_size"),
        (dict(volume=np.zeros((8, 8))), r"D x H x W, got shape \(8, 8\)"),
        (dict(n_classes=3), r"logits of shape \(1, 2, 8, 8, 8\), expected \(1, 3, 8, 8, 8\)"),
    ],
)
def test_sliding_window_bad_arguments(kwargs, match):
    args = dict(
        model=NearestInteger(2), volume=np.zeros((8, 8, 8)), patch=(8, 8, 8),
        stride=(4, 4, 4), n_classes=2, device="cpu",
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sliding_window_3d(**args)


# ----------------------------------------------------------------------------- 2D


def test_predict_slices_2d_grayscale_non_square():
    # 3 slices of 12 x 20: step edge at the middle column, all-0, all-1.
    vol = np.zeros((3, 12, 20), dtype=np.float32)
    vol[0, :, 10:] = 1.0
    vol[2] = 1.0
    model = NearestInteger(2).train()
    out = predict_slices_2d(model, vol, size=(16, 48), n_classes=2, device="cpu", batch_size=2)
    assert out.shape == (3, 12, 20) and out.dtype == np.uint8
    expected = np.zeros((3, 12, 20), dtype=np.uint8)
    # The up/down resampling is symmetric about the edge, so it stays exactly at column 10.
    expected[0, :, 10:] = 1
    expected[2] = 1
    np.testing.assert_array_equal(out, expected)
    # Network saw the resized slices in batches of 2 + 1, one channel, in eval/no-grad.
    assert [tuple(x.shape) for x in model.inputs] == [(2, 1, 16, 48), (1, 1, 16, 48)]
    assert model.seen_training == [False, False] and model.seen_grad == [False, False]
    assert model.training is True


def test_predict_slices_2d_same_size_is_identity_resampling():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, size=(2, 7, 5))
    vol = labels + rng.uniform(-0.3, 0.3, size=labels.shape)
    out = predict_slices_2d(NearestInteger(3), vol, (7, 5), 3, "cpu")
    np.testing.assert_array_equal(out, labels)


def test_predict_slices_2d_rgb_volume_and_single_image():
    img = np.zeros((12, 20, 3), dtype=np.float32)
    img[:, 10:, :] = 1.0
    img[:, 10:, 0] = 0.4  # channel mean 0.8 -> class 1; the model must see 3 channels
    model = NearestInteger(2)
    out = predict_slices_2d(model, np.stack([img, 1 - img]), (16, 48), 2, torch.device("cpu"))
    assert model.inputs[0].shape == (2, 3, 16, 48)
    expected = np.zeros((12, 20), dtype=np.uint8)
    expected[:, 10:] = 1
    np.testing.assert_array_equal(out, np.stack([expected, 1 - expected]))

    single = predict_slices_2d(NearestInteger(2), img, (16, 48), 2, "cpu")
    assert single.shape == (1, 12, 20)
    np.testing.assert_array_equal(single[0], expected)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(size=(16,)), "size must be a sequence of 2"),
        (dict(size=(16, 0)), "size must be a sequence of 2 positive"),
        (dict(volume=np.zeros((2, 3, 4, 5, 6))), "volume must be"),
        (dict(volume=np.zeros((2, 8, 8, 4))), "volume must be"),
        (dict(batch_size=0), "batch_size"),
        (dict(n_classes=300), "n_classes"),
        (dict(n_classes=4), r"expected \(2, 4, 8, 8\)"),
    ],
)
def test_predict_slices_2d_bad_arguments(kwargs, match):
    args = dict(model=NearestInteger(2), volume=np.zeros((2, 8, 8)), size=(8, 8), n_classes=2, device="cpu")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        predict_slices_2d(**args)


def test_mode_restored_on_error():
    model = NearestInteger(2).train()
    with pytest.raises(ValueError):
        predict_slices_2d(model, np.zeros((1, 4, 4)), (4, 4), 3, "cpu")
    assert model.training is True


def test_predict_slices_2d_nearest_is_the_reference_test_procedure():
    """interpolation="nearest": SSL4MIS / CrossMatch test.py, slice zoomed with
    order 0 to the network size, argmax, label map zoomed back with order 0."""
    from scipy.ndimage import zoom
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 3, (3, 20, 28)).astype(np.float32)
    vol[:, 5:15, 8:20] = 2.0
    model = NearestInteger(3)
    out = predict_slices_2d(model, vol, (16, 16), 3, "cpu", interpolation="nearest")
    for s in range(3):
        small = zoom(vol[s], (16 / 20, 16 / 28), order=0)
        expected = zoom(np.rint(small).astype(np.uint8), (20 / 16, 28 / 16), order=0)
        assert np.array_equal(out[s], expected)
    assert not np.array_equal(out, predict_slices_2d(model, vol, (16, 16), 3, "cpu"))
    with pytest.raises(ValueError, match="interpolation"):
        predict_slices_2d(model, vol, (16, 16), 3, "cpu", interpolation="cubic")
