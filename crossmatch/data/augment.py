"""Augmentations. Weak views are per sample in numpy (geometry, applied to
image and label together); strong views are batched in torch on the training
device (intensity jitter, blur, CutMix), driven by an explicit generator so a
resumed run draws the same augmentations as an uninterrupted one.

Images are ``C x *spatial`` (numpy) or ``N x C x *spatial`` (torch); labels
have no channel axis.

Side by side with the reference code (tests/test_parity.py): the geometry
(rot90 + flip of one of the first two axes, integer rotation angles, the
order-0 zoom and rotation under ``interpolation="nearest"``) and the CutMix
boxes follow it draw for draw in distribution; brightness and contrast equal
PIL's ImageEnhance (what the reference's ColorJitter calls) up to its 8-bit
rounding. By default, and documented (docs/fidelity.md): float views
instead of the reference's 8-bit PIL images, a fixed brightness-then-contrast
order (ColorJitter permutes them), an exact Gaussian blur (PIL approximates
it with box blurs), and in 3D the 2D reference's jitter instead of the LA
code's torchio bias field and gamma. ``pil=True`` (``train.unlabeled_views:
pil``) makes the 2D strong views as the reference does, with PIL itself:
8-bit images, the two enhancements in a random order, PIL's blur.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageFilter
from scipy import ndimage

from ..choices import INTERPOLATIONS


# --------------------------------------------------------------- weak (numpy)


def rot_flip(image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator):
    """Random multiple of 90 degrees in the first two spatial axes, then a
    flip of one of those two axes (UniMatch in 2D, UA-MT / CrossMatch-LA in
    3D: ``np.flip(axis=randint(0, 2))``, never the third axis)."""
    k = int(rng.integers(0, 4))
    ax = int(rng.integers(0, 2))
    image = np.flip(np.rot90(image, k, axes=(1, 2)), axis=ax + 1)
    if label is not None:
        label = np.flip(np.rot90(label, k, axes=(0, 1)), axis=ax)
    return np.ascontiguousarray(image), None if label is None else np.ascontiguousarray(label)


def rotate(image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator,
           max_deg: int = 20, order: int = 1):
    """Random in-plane rotation by a whole number of degrees in [-max_deg,
    max_deg) (the reference's ``randint(-20, 20)``); the image with spline
    ``order``, labels nearest-neighbour."""
    angle = int(rng.integers(-max_deg, max_deg))
    image = ndimage.rotate(image, angle, axes=(-2, -1), order=order, reshape=False)
    if label is not None:
        label = ndimage.rotate(label, angle, axes=(-2, -1), order=0, reshape=False)
    return image, label


def resize(image: np.ndarray, label: np.ndarray | None, size: tuple[int, ...], order: int = 1):
    """Zoom the spatial axes to ``size`` (image with spline ``order``, label nearest)."""
    sp = image.shape[1:]
    if tuple(sp) == tuple(size):
        return image, label
    f = [s / c for s, c in zip(size, sp)]
    image = ndimage.zoom(image, [1, *f], order=order)
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
              rng: np.random.Generator, interpolation: str = "linear"):
    """The weak view of a training sample: geometry only.

    2D (UniMatch ACDC): p 0.5 rot90+flip, else p 0.5 rotation of up to 20
    degrees, then resize to ``size``; the image is rotated and resized with
    ``interpolation`` (``nearest``: the reference's order 0). 3D (UA-MT LA):
    rot90+flip of the whole volume, then a random crop to ``size`` (so any
    crop shape works).
    """
    if len(size) == 2:
        order = INTERPOLATIONS[interpolation]
        if rng.random() > 0.5:
            image, label = rot_flip(image, label, rng)
        elif rng.random() > 0.5:
            image, label = rotate(image, label, rng, order=order)
        return resize(image, label, size, order)
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


def quantize_8bit(x: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
    """``x`` floored to 256 levels of ``value_range``, as the 2D references'
    ``Image.fromarray((img * 255).astype(np.uint8))`` does to [0, 1] images."""
    lo, hi = value_range
    levels = torch.floor(((x - lo) / (hi - lo) * 255).clamp(0, 255))
    return levels / 255 * (hi - lo) + lo


def _pil_intensity(x: torch.Tensor, value_range: tuple[float, float], jitter: bool, bright: float,
                   contrast: float, contrast_first: bool, blur: bool, sigma: float) -> torch.Tensor:
    """One ``C x H x W`` strong view made by PIL, as the 2D references make it:
    an 8-bit image (``x`` is on the 8-bit grid, ``quantize_8bit``), ColorJitter's
    brightness and contrast (ImageEnhance, in the drawn order; its hue and
    saturation leave a grayscale image as it is), GaussianBlur."""
    lo, hi = value_range
    levels = ((x.detach().float().cpu() - lo) / (hi - lo) * 255).round().clamp(0, 255).to(torch.uint8)
    img = Image.fromarray(levels[0].numpy() if len(levels) == 1 else levels.permute(1, 2, 0).numpy())
    if jitter:
        steps = [ImageEnhance.Brightness, ImageEnhance.Contrast]
        factors = [bright, contrast]
        if contrast_first:
            steps, factors = steps[::-1], factors[::-1]
        for step, factor in zip(steps, factors):
            img = step(img).enhance(factor)
    if blur:
        img = img.filter(ImageFilter.GaussianBlur(radius=sigma))
    out = torch.from_numpy(np.asarray(img, dtype=np.float32).copy())
    out = out[None] if out.dim() == 2 else out.permute(2, 0, 1)
    return (out / 255 * (hi - lo) + lo).to(x.device, x.dtype)


def strong_intensity(x: torch.Tensor, gen: torch.Generator,
                     clip: tuple[float, float] | None = None, p_jitter: float = 0.8,
                     p_blur: float = 0.5, pil: bool = False) -> torch.Tensor:
    """Colour jitter (brightness and contrast in [0.5, 1.5]) with probability
    ``p_jitter`` and Gaussian blur (sigma in [0.1, 2]) with ``p_blur``, drawn
    independently per sample. Returns a new tensor. ``pil``: made by PIL on
    8-bit images of the range ``clip`` (``_pil_intensity``), the order of
    the two enhancements drawn per sample."""
    n = x.shape[0]
    draw = torch.rand(n, 2, generator=gen)
    bright, contrast, sigma = _rand(gen, n, 0.5, 1.5), _rand(gen, n, 0.5, 1.5), _rand(gen, n, 0.1, 2.0)
    if pil:
        if clip is None:
            raise ValueError("PIL strong views need the images' intensity range")
        contrast_first = torch.rand(n, generator=gen) < 0.5
        return torch.stack([_pil_intensity(x[i], clip, bool(draw[i, 0] < p_jitter), float(bright[i]),
                                           float(contrast[i]), bool(contrast_first[i]),
                                           bool(draw[i, 1] < p_blur), float(sigma[i])) for i in range(n)])
    out = []
    for i in range(n):
        xi = x[i]
        if draw[i, 0] < p_jitter:  # each enhancement clipped, as PIL's
            xi = xi * bright[i]
            if clip is not None:
                xi = xi.clamp(*clip)
            mean = xi.mean()
            xi = (xi - mean) * contrast[i] + mean
            if clip is not None:
                xi = xi.clamp(*clip)
        if draw[i, 1] < p_blur:
            xi = gaussian_blur(xi, float(sigma[i]))
        out.append(xi)
    return torch.stack(out)


def box_sides(volume: float, r: float, dims: int) -> list[int]:
    """Side lengths of the references' CutMix box of ``volume`` pixels and
    aspect ``r``: 2D (UniMatch / CrossMatch-ACDC) ``[sqrt(V r), sqrt(V / r)]``
    (rows, columns); 3D (CrossMatch-LA) ``[V^(1/3), (V r)^(1/3), (V / r)^(1/3)]``."""
    if dims == 2:
        return [int(math.sqrt(volume * r)), int(math.sqrt(volume / r))]
    if dims == 3:
        return [int(volume ** (1 / 3)), int((volume * r) ** (1 / 3)), int((volume / r) ** (1 / 3))]
    raise ValueError(f"CutMix boxes are 2D or 3D, got {dims} axes")


def cutmix_boxes(n: int, spatial: tuple[int, ...], gen: torch.Generator, p: float = 0.5,
                 area: tuple[float, float] = (0.02, 0.4), ratio: tuple[float, float] = (0.3, 1 / 0.3)
                 ) -> torch.Tensor:
    """Boolean masks ``N x *spatial``: one random box per sample, drawn with
    probability ``p`` (else empty), as the references draw it: a volume
    fraction in ``area``, then an aspect in ``ratio`` and a corner anywhere
    in the image, both drawn again until the box fits (``box_sides``). In 3D
    the LA code's own box indexes its axes inconsistently (its boxes can be
    cut at the border); here a 3D box always fits: sides are capped at the
    image, the corner drawn where the box fits (so is a 2D box after 1,000
    misses, in an image too narrow for the drawn volume)."""
    boxes = torch.zeros((n, *spatial), dtype=torch.bool)
    volume = math.prod(spatial)
    for i in range(n):
        if float(torch.rand(1, generator=gen)) >= p:
            continue
        v = float(_rand(gen, 1, *area)) * volume
        for attempt in range(1000):
            sides = box_sides(v, float(_rand(gen, 1, *ratio)), len(spatial))
            if len(spatial) == 3 or attempt == 999:  # (2D: an image too narrow for any aspect)
                sides = [max(1, min(s, z)) for s, z in zip(spatial, sides)]
                starts = [int(torch.randint(0, s - z + 1, (1,), generator=gen)) for s, z in zip(spatial, sides)]
            else:
                starts = [int(torch.randint(0, s, (1,), generator=gen)) for s in spatial]
            if all(a + z <= s for a, z, s in zip(starts, sides, spatial)):
                break
        boxes[(i, *[slice(a, a + z) for a, z in zip(starts, sides)])] = True
    return boxes


def apply_cutmix(a: torch.Tensor, b: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """``a`` with ``b`` pasted where ``box`` is True. ``a``/``b`` are images
    ``N x C x *spatial`` or labels/maps ``N x *spatial``; ``box`` is ``N x *spatial``."""
    m = box.to(a.device)
    if a.dim() == m.dim() + 1:
        m = m.unsqueeze(1)
    return torch.where(m, b, a)


def strong_views(u: torch.Tensor, u_mix: torch.Tensor, gen: torch.Generator, views: int,
                 clip: tuple[float, float] | None = None,
                 pil: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The FixMatch/UniMatch strong views of the unlabeled batch ``u``: per
    view, intensity jitter + blur of ``u`` and of the CutMix source batch
    ``u_mix``, then a CutMix box pasting the source's own strong view.
    Returns the views and their boxes (on ``u``'s device), in the order the
    random numbers are drawn from ``gen``. ``pil``: ``strong_intensity``'s."""
    n, spatial = u.shape[0], tuple(u.shape[2:])
    strong, boxes = [], []
    for _ in range(views):
        s, s_mix = strong_intensity(u, gen, clip, pil=pil), strong_intensity(u_mix, gen, clip, pil=pil)
        box = cutmix_boxes(n, spatial, gen).to(u.device)
        strong.append(apply_cutmix(s, s_mix, box))
        boxes.append(box)
    return strong, boxes
