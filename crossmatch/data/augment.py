"""Augmentations. Weak views are per sample in numpy (geometry, applied to
image and label together); strong views are batched in torch on the training
device (intensity jitter, blur, CutMix), driven by an explicit generator so a
resumed run draws the same augmentations as an uninterrupted one.

Images are ``C x *spatial`` (numpy) or ``N x C x *spatial`` (torch); labels
have no channel axis.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


# --------------------------------------------------------------- weak (numpy)
def rot_flip(image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator):
    """Random multiple of 90 degrees in the first two spatial axes, then a
    flip of one random spatial axis (UniMatch in 2D, UA-MT in 3D)."""
    k = int(rng.integers(0, 4))
    nsp = image.ndim - 1
    ax = int(rng.integers(0, nsp))
    image = np.flip(np.rot90(image, k, axes=(1, 2)), axis=ax + 1)
    if label is not None:
        label = np.flip(np.rot90(label, k, axes=(0, 1)), axis=ax)
    return np.ascontiguousarray(image), None if label is None else np.ascontiguousarray(label)


def rotate(image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator,
           max_deg: float = 20.0):
    """Random in-plane rotation in [-max_deg, max_deg] (labels nearest-neighbour)."""
    angle = float(rng.uniform(-max_deg, max_deg))
    image = ndimage.rotate(image, angle, axes=(-2, -1), order=1, reshape=False)
    if label is not None:
        label = ndimage.rotate(label, angle, axes=(-2, -1), order=0, reshape=False)
    return image, label


def resize(image: np.ndarray, label: np.ndarray | None, size: tuple[int, ...]):
    """Zoom the spatial axes to ``size`` (image linear, label nearest)."""
    sp = image.shape[1:]
    if tuple(sp) == tuple(size):
        return image, label
    f = [s / c for s, c in zip(size, sp)]
    image = ndimage.zoom(image, [1, *f], order=1)
    if label is not None:
        label = ndimage.zoom(label, f, order=0)
    return image, label


def random_crop(image: np.ndarray, label: np.ndarray | None, size: tuple[int, ...],
                rng: np.random.Generator):
    """Random crop of ``size``; smaller volumes are zero-padded first (UA-MT)."""
    sp = image.shape[1:]
    pad = [max(0, s - c) for s, c in zip(size, sp)]
    if any(pad):
        widths = [(p // 2 + 1, p - p // 2 + 1) if p else (0, 0) for p in pad]
        image = np.pad(image, [(0, 0), *widths])
        if label is not None:
            label = np.pad(label, widths)
        sp = image.shape[1:]
    starts = [int(rng.integers(0, s - c + 1)) for s, c in zip(sp, size)]
    sl = tuple(slice(a, a + c) for a, c in zip(starts, size))
    return image[(slice(None), *sl)], None if label is None else label[sl]


def weak_view(image: np.ndarray, label: np.ndarray | None, size: tuple[int, ...],
              rng: np.random.Generator):
    """The weak view of a training sample: geometry only.

    2D (UniMatch ACDC): p 0.5 rot90+flip, else p 0.5 rotation of up to 20
    degrees, then resize to ``size``. 3D (UA-MT LA): rot90+flip of the whole
    volume, then a random crop to ``size`` (so any crop shape works).
    """
    if len(size) == 2:
        if rng.random() > 0.5:
            image, label = rot_flip(image, label, rng)
        elif rng.random() > 0.5:
            image, label = rotate(image, label, rng)
        return resize(image, label, size)
    image, label = rot_flip(image, label, rng)
    return random_crop(image, label, size, rng)


# ------------------------------------------------------------- strong (torch)
def _rand(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of one ``C x *spatial`` tensor (2D or 3D)."""
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    nsp = x.dim() - 1
    conv = F.conv2d if nsp == 2 else F.conv3d
    y = x.unsqueeze(1)  # C x 1 x spatial: each channel blurred alone
    for axis in range(nsp):
        shape = [1, 1] + [1] * nsp
        shape[2 + axis] = -1
        pad = [0] * (2 * nsp)
        pad[2 * (nsp - 1 - axis)] = pad[2 * (nsp - 1 - axis) + 1] = r
        y = conv(F.pad(y, pad, mode="replicate"), k.view(shape))
    return y.squeeze(1)


def strong_intensity(x: torch.Tensor, gen: torch.Generator,
                     clip: tuple[float, float] | None = None, p_jitter: float = 0.8,
                     p_blur: float = 0.5) -> torch.Tensor:
    """Colour jitter (brightness and contrast in [0.5, 1.5]) with probability
    ``p_jitter`` and Gaussian blur (sigma in [0.1, 2]) with ``p_blur``, drawn
    independently per sample. Returns a new tensor."""
    n = x.shape[0]
    draw = torch.rand(n, 2, generator=gen)
    bright, contrast, sigma = _rand(gen, n, 0.5, 1.5), _rand(gen, n, 0.5, 1.5), _rand(gen, n, 0.1, 2.0)
    out = []
    for i in range(n):
        xi = x[i]
        if draw[i, 0] < p_jitter:
            xi = xi * bright[i]
            mean = xi.mean()
            xi = (xi - mean) * contrast[i] + mean
            if clip is not None:
                xi = xi.clamp(*clip)
        if draw[i, 1] < p_blur:
            xi = gaussian_blur(xi, float(sigma[i]))
        out.append(xi)
    return torch.stack(out)


def cutmix_boxes(n: int, spatial: tuple[int, ...], gen: torch.Generator, p: float = 0.5,
                 area: tuple[float, float] = (0.02, 0.4), ratio: tuple[float, float] = (0.3, 1 / 0.3)
                 ) -> torch.Tensor:
    """Boolean masks ``N x *spatial``: one random box per sample, drawn with
    probability ``p`` (else empty). The box covers a fraction in ``area`` of
    the image, with side ratios in ``ratio`` (UniMatch's box, any dimension)."""
    boxes = torch.zeros((n, *spatial), dtype=torch.bool)
    d = len(spatial)
    for i in range(n):
        if float(torch.rand(1, generator=gen)) >= p:
            continue
        frac = float(_rand(gen, 1, *area))
        logr = torch.log(_rand(gen, d, *ratio))
        logr = logr - logr.mean()  # side factors with product 1
        side = (frac * math.prod(spatial)) ** (1 / d)
        sizes = [max(1, min(s, int(side * math.exp(float(f))))) for s, f in zip(spatial, logr)]
        starts = [int(torch.randint(0, s - z + 1, (1,), generator=gen)) for s, z in zip(spatial, sizes)]
        boxes[(i, *[slice(a, a + z) for a, z in zip(starts, sizes)])] = True
    return boxes


def apply_cutmix(a: torch.Tensor, b: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """``a`` with ``b`` pasted where ``box`` is True. ``a``/``b`` are images
    ``N x C x *spatial`` or labels/maps ``N x *spatial``; ``box`` is ``N x *spatial``."""
    m = box.to(a.device)
    if a.dim() == m.dim() + 1:
        m = m.unsqueeze(1)
    return torch.where(m, b, a)


def strong_views(u: torch.Tensor, u_mix: torch.Tensor, gen: torch.Generator, views: int,
                 clip: tuple[float, float] | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The FixMatch/UniMatch strong views of the unlabeled batch ``u``: per
    view, intensity jitter + blur of ``u`` and of the CutMix source batch
    ``u_mix``, then a CutMix box pasting the source's own strong view.
    Returns the views and their boxes (on ``u``'s device), in the order the
    random numbers are drawn from ``gen``."""
    n, spatial = u.shape[0], tuple(u.shape[2:])
    strong, boxes = [], []
    for _ in range(views):
        s, s_mix = strong_intensity(u, gen, clip), strong_intensity(u_mix, gen, clip)
        box = cutmix_boxes(n, spatial, gen).to(u.device)
        strong.append(apply_cutmix(s, s_mix, box))
        boxes.append(box)
    return strong, boxes
