"""Model inference for 2D (slice-wise) and 3D (sliding-window) segmentation.

The model is any ``torch.nn.Module`` whose ``forward(x)`` maps a float tensor
N x C x H x W (2D) or N x C x D x H x W (3D) to logits N x K x <same spatial>,
with K == ``n_classes``. It must already live on ``device``; inputs are moved
there. Both entry points run under ``torch.no_grad()`` with every submodule in
eval mode, and restore each submodule's previous ``training`` flag on return
(also on error). Intensity normalisation is the caller's job: volumes are fed
as given (cast to float32).
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Callable, ContextManager, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import zoom

from .choices import INTERPOLATIONS

__all__ = ["predict_slices_2d", "sliding_window_3d"]

DeviceLike = torch.device | str


@contextlib.contextmanager
def _inference_mode(model: torch.nn.Module) -> Iterator[None]:
    """eval() + no_grad(); restore per-module training flags afterwards.

    Restoring per module (not ``model.train(prev)``) keeps deliberately frozen
    submodules, e.g. BatchNorm layers kept in eval during training, as they were.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, was_training in flags:
            m.training = was_training


def _check_n_classes(n_classes: int) -> int:
    if isinstance(n_classes, bool) or int(n_classes) != n_classes or not 2 <= n_classes <= 256:
        # uint8 output cannot hold more than 256 labels.
        raise ValueError(f"n_classes must be an integer in [2, 256], got {n_classes!r}")
    return int(n_classes)


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def _check_int_tuple(value: Sequence[int], length: int, name: str) -> tuple[int, ...]:
    try:
        items = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of {length} positive ints, got {value!r}") from None
    if len(items) != length or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in items
    ):
        raise ValueError(f"{name} must be a sequence of {length} positive ints, got {value!r}")
    return tuple(int(v) for v in items)


def _run_model(model: torch.nn.Module, x: torch.Tensor, n_classes: int,
               autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> torch.Tensor:
    """Forward pass (under ``autocast()``) returning float32 softmax
    probabilities; checks the logits' shape."""
    with autocast():
        logits = model(x)
    if not isinstance(logits, torch.Tensor):
        raise ValueError(
            f"model must return a logits tensor, got {type(logits).__name__} "
            "(wrap multi-output models so forward returns one tensor)"
        )
    expected = (x.shape[0], n_classes, *x.shape[2:])
    if tuple(logits.shape) != expected:
        raise ValueError(f"model returned logits of shape {tuple(logits.shape)}, expected {expected}")
    return torch.softmax(logits.float(), dim=1)


def predict_slices_2d(
    model: torch.nn.Module,
    volume: np.ndarray,
    size: tuple[int, int],
    n_classes: int,
    device: DeviceLike,
    batch_size: int = 16,
    interpolation: str = "linear",
    autocast: Callable[[], ContextManager] = contextlib.nullcontext,
) -> np.ndarray:
    """Slice-wise 2D prediction of a volume or image.

    Args:
        volume: S x H x W (grayscale, fed as 1 channel), S x H x W x 3 (RGB,
            fed as 3 channels), a single RGB image H x W x 3 or a single
            grayscale slice H x W (both treated as S = 1). A 3D array whose
            last axis has length 3 is always read as one RGB image.
        size: (h, w) network input size; each slice is resized to it with
            ``scipy.ndimage.zoom(order=1)``.
        n_classes: K, the number of output channels of the model (2..256).
        device: where the inputs are sent; the model must already be there.
        batch_size: slices per forward pass.
        interpolation: ``linear`` (as below) or ``nearest``, the SSL4MIS /
            CrossMatch ``test.py``: each slice zoomed with ``order=0`` and the
            label map zoomed back with ``order=0``.
        autocast: context of the forward passes (``factories.Precision.autocast``:
            bf16 / fp16 autocast, or none for fp32); probabilities are float32.

    Returns:
        uint8 label map S x H x W with values in [0, n_classes).

    With ``linear``, unlike the SSL4MIS reference (``zoom(argmax, order=0)`` back to H x W),
    the softmax probabilities are resized back to H x W (bilinear,
    ``align_corners=True`` to match zoom's corner-aligned grid) and the argmax
    is taken at full resolution, which avoids blocky nearest-neighbour
    label edges.
    """
    n_classes = _check_n_classes(n_classes)
    batch_size = _check_batch_size(batch_size)
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be linear or nearest, got {interpolation!r}")
    order = INTERPOLATIONS[interpolation]
    h, w = _check_int_tuple(size, 2, "size")
    vol = np.asarray(volume)
    if vol.ndim == 4 and vol.shape[-1] == 3:
        rgb = True
    elif vol.ndim == 3 and vol.shape[-1] == 3:
        vol, rgb = vol[None], True
    elif vol.ndim == 3:
        rgb = False
    elif vol.ndim == 2:
        vol, rgb = vol[None], False
    else:
        raise ValueError(
            f"volume must be S x H x W, S x H x W x 3, H x W x 3 or H x W; got shape {vol.shape}"
        )
    n_slices, height, width = vol.shape[:3]
    if n_slices == 0 or height == 0 or width == 0:
        raise ValueError(f"volume has an empty axis: shape {vol.shape}")
    device = torch.device(device)

    factors = (h / height, w / width) + ((1.0,) if rgb else ())
    resize = (height, width) != (h, w)
    out = np.empty((n_slices, height, width), dtype=np.uint8)
    with _inference_mode(model):
        for start in range(0, n_slices, batch_size):
            stop = min(start + batch_size, n_slices)
            slices = []
            for s in range(start, stop):
                img = vol[s].astype(np.float32, copy=False)
                if resize:
                    img = zoom(img, factors, order=order)
                if img.shape[:2] != (h, w):  # guard against zoom's rounding of the output shape
                    raise RuntimeError(f"zoom produced {img.shape[:2]}, expected {(h, w)}")
                slices.append(img)
            batch = np.stack(slices)  # B x h x w [x 3]
            batch = batch.transpose(0, 3, 1, 2) if rgb else batch[:, None]
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(device)
            probs = _run_model(model, x, n_classes, autocast)
            if resize and order == 0:
                labels = probs.argmax(dim=1).to(torch.uint8).cpu().numpy()
                for j, lab in enumerate(labels):
                    back = zoom(lab, (height / h, width / w), order=0)
                    if back.shape != (height, width):
                        raise RuntimeError(f"zoom produced {back.shape}, expected {(height, width)}")
                    out[start + j] = back
                continue
            if resize:
                probs = F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=True)
            out[start:stop] = probs.argmax(dim=1).to(torch.uint8).cpu().numpy()
    return out


def _window_starts(size: int, patch: int, stride: int) -> list[int]:
    """UA-MT's window origins: ceil((size-patch)/stride)+1 steps, last one end-aligned."""
    n_steps = -(-(size - patch) // stride) + 1
    return [min(stride * i, size - patch) for i in range(n_steps)]


def sliding_window_3d(
    model: torch.nn.Module,
    volume: np.ndarray,
    patch: tuple[int, int, int],
    stride: tuple[int, int, int],
    n_classes: int,
    device: DeviceLike,
    batch_size: int = 1,
    autocast: Callable[[], ContextManager] = contextlib.nullcontext,
) -> np.ndarray:
    """Sliding-window 3D prediction, following UA-MT's ``test_single_case``.

    Args:
        volume: D x H x W single-channel volume (fed as N x 1 x patch).
        patch: window size (pd, ph, pw), positive ints.
        stride: step (sd, sh, sw), positive and <= patch on every axis so that
            the windows cover every voxel.
        n_classes: K, the number of output channels of the model (2..256).
        device: where the inputs and the accumulators live; the model must
            already be there.
        batch_size: windows per forward pass.
        autocast: context of the forward passes, as for ``predict_slices_2d``.

    Axes smaller than the patch are zero-padded symmetrically (extra voxel on
    the right), windows start at ``min(stride*i, size-patch)`` for
    ``i < ceil((size-patch)/stride)+1``, softmax probabilities are summed and
    divided by the per-voxel window count, the padding is cropped off and the
    argmax taken.

    Returns:
        uint8 label map D x H x W with values in [0, n_classes).
    """
    n_classes = _check_n_classes(n_classes)
    batch_size = _check_batch_size(batch_size)
    patch = _check_int_tuple(patch, 3, "patch")
    stride = _check_int_tuple(stride, 3, "stride")
    if any(s > p for s, p in zip(stride, patch)):
        raise ValueError(f"stride {stride} must not exceed patch {patch} on any axis (voxels would be skipped)")
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"volume must be D x H x W, got shape {vol.shape}")
    if 0 in vol.shape:
        raise ValueError(f"volume has an empty axis: shape {vol.shape}")
    device = torch.device(device)

    pads = [max(p - n, 0) for p, n in zip(patch, vol.shape)]
    pad_width = [(pd // 2, pd - pd // 2) for pd in pads]
    padded = np.pad(vol.astype(np.float32, copy=False), pad_width, mode="constant", constant_values=0)

    origins = list(
        itertools.product(*(_window_starts(n, p, s) for n, p, s in zip(padded.shape, patch, stride)))
    )
    score = torch.zeros((n_classes, *padded.shape), dtype=torch.float32, device=device)
    count = torch.zeros(padded.shape, dtype=torch.float32, device=device)
    pd_, ph, pw = patch
    with _inference_mode(model):
        for b in range(0, len(origins), batch_size):
            chunk = origins[b : b + batch_size]
            batch = np.stack([padded[z : z + pd_, y : y + ph, x : x + pw] for z, y, x in chunk])
            probs = _run_model(model, torch.from_numpy(batch[:, None]).to(device), n_classes, autocast)
            for (z, y, x), p in zip(chunk, probs):
                score[:, z : z + pd_, y : y + ph, x : x + pw] += p
                count[z : z + pd_, y : y + ph, x : x + pw] += 1
        crop = tuple(slice(lo, lo + n) for (lo, _), n in zip(pad_width, vol.shape))
        probs = score[(slice(None), *crop)] / count[crop]
        labels = probs.argmax(dim=0).to(torch.uint8).cpu().numpy()
    return labels
