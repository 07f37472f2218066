"""Training batches indexed by iteration number.

Batch ``t`` is a pure function of ``(seed, t)``: which cases are drawn (each
stream walks through seeded permutations, epoch after epoch) and how they
are augmented. That is what makes a resumed run identical to an
uninterrupted one, whatever the number of loader workers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .augment import quantize_8bit, weak_view
from .h5 import read_case

STREAMS = {"labeled": 0, "unlabeled": 1, "mix": 2}


def draw(n_items: int, batch: int, t: int, seed: int, stream: int) -> list[int]:
    """Indices of batch ``t`` of a stream that shuffles ``n_items`` per epoch."""
    out = []
    for pos in range(t * batch, (t + 1) * batch):
        epoch, k = divmod(pos, n_items)
        perm = np.random.default_rng([seed, stream, epoch]).permutation(n_items)
        out.append(int(perm[k]))
    return out


class IterationBatches(Dataset):
    """Map-style dataset whose item ``t`` is the whole batch of iteration ``t``.

    Keys: ``x`` (B x C x *crop float32), ``y`` (B x *crop int64), and, when
    ``unlabeled`` is given, ``u`` and ``u_mix`` (weak views of two unlabeled
    batches; the second is CutMix's source). ``quantize`` (an intensity
    range): the unlabeled views floored to 256 levels of it, as the 2D
    reference codes make them 8-bit PIL images (``train.unlabeled_views: pil``).
    """

    def __init__(self, labeled: list[Path], unlabeled: list[Path] | None, batch_size: int,
                 crop: tuple[int, ...], n_classes: int, seed: int, interpolation: str = "linear",
                 quantize: tuple[float, float] | None = None):
        if not labeled:
            raise ValueError("no labeled training files")
        if unlabeled is not None and not unlabeled:
            raise ValueError("the method needs unlabeled data but the unlabeled split is empty")
        self.labeled, self.unlabeled = list(labeled), unlabeled
        self.batch_size, self.crop, self.n_classes, self.seed = batch_size, tuple(crop), n_classes, seed
        self.interpolation, self.quantize = interpolation, quantize

    def _sample(self, path: Path, t: int, stream: int, slot: int, with_label: bool):
        image, label, _ = read_case(path, self.n_classes, need_label=with_label)
        image = image[None] if image.ndim == len(self.crop) else np.moveaxis(image, -1, 0)
        rng = np.random.default_rng([self.seed, stream, t, slot, 1])
        return weak_view(image, label, self.crop, rng, self.interpolation)

    def _stream(self, files: list[Path], t: int, name: str, with_label: bool):
        s = STREAMS[name]
        idx = draw(len(files), self.batch_size, t, self.seed, s)
        samples = [self._sample(files[i], t, s, j, with_label) for j, i in enumerate(idx)]
        images = torch.from_numpy(np.stack([im for im, _ in samples]).astype(np.float32))
        labels = torch.from_numpy(np.stack([lb for _, lb in samples]).astype(np.int64)) if with_label else None
        return images, labels

    def __len__(self) -> int:  # iterations are addressed by index, no natural length
        return 2 ** 62

    def __getitem__(self, t: int) -> dict[str, torch.Tensor]:
        x, y = self._stream(self.labeled, t, "labeled", True)
        batch = {"x": x, "y": y}
        if self.unlabeled is not None:
            for key, stream in (("u", "unlabeled"), ("u_mix", "mix")):
                u = self._stream(self.unlabeled, t, stream, False)[0]
                batch[key] = u if self.quantize is None else quantize_8bit(u, self.quantize)
        return batch


def iteration_loader(dataset: IterationBatches, start: int, stop: int, workers: int,
                     pin_memory: bool = False) -> DataLoader:
    """Batches ``start .. stop-1`` in order, prepared by ``workers`` processes
    (``pin_memory``: in page-locked memory, so that the copy to a GPU can
    overlap the step)."""
    # an own generator: the loader must not draw its worker seed from the global
    # RNG, or a resumed run's dropout masks would shift
    gen = torch.Generator().manual_seed(dataset.seed)
    return DataLoader(dataset, batch_size=None, sampler=range(start, stop), num_workers=workers,
                      prefetch_factor=2 if workers else None, generator=gen, pin_memory=pin_memory)
