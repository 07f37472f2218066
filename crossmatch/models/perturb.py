"""Feature perturbation shared by the 2D UNet and the 3D V-Net.

CrossMatch decodes the same encoder features several times: clean, with a
weak feature dropout (p = 0.25) and with a strong one (p = 0.75). The
perturbed streams are stacked along the batch axis so that the decoder runs
once on one large batch instead of once per stream (the paper's "no extra
cost" claim); ``stack_streams=False`` loops instead, for the benchmark.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..choices import DROPOUT_TYPES



class FeatureDropout(nn.Module):
    """Dropout of type ``kind`` with probability ``p`` that is ALWAYS active.

    It ignores ``self.training`` on purpose: CrossMatch asks for perturbed
    predictions of the CutMix source batch inside a no-grad pass with the
    network in eval mode, and those predictions must be perturbed exactly as
    in training. ``dropout`` and ``feature_alpha`` drop whole channels,
    ``alpha`` drops single elements (AlphaDropout keeps SELU statistics).
    """

    def __init__(self, p: float, kind: str = "dropout"):
        super().__init__()
        if kind not in DROPOUT_TYPES:
            raise ValueError(f"dropout_type must be one of {DROPOUT_TYPES}, got {kind!r}")
        if not 0.0 <= p < 1.0:
            raise ValueError(f"feature dropout p must be in [0, 1), got {p}")
        self.p, self.kind = p, kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "dropout":
            # channel dropout: dropout2d/3d for 4D/5D inputs
            fn = F.dropout2d if x.dim() == 4 else F.dropout3d
            return fn(x, self.p, training=True)
        if self.kind == "alpha":
            return F.alpha_dropout(x, self.p, training=True)
        return F.feature_alpha_dropout(x, self.p, training=True)

    def extra_repr(self) -> str:
        return f"p={self.p}, kind={self.kind}"


class FeaturePerturbation(nn.Module):
    """Builds the perturbed decoder streams from encoder features.

    Given skip features for a batch ``[a; b]`` (``split`` samples of ``a``
    first), returns features for ``[a; b; weak(b); strong(b)]``. Weak and
    strong probabilities are ``0.5 -/+ gap/2`` (0.25 / 0.75 for gap 0.5).
    """

    def __init__(self, kind: str = "dropout", gap: float = 0.5):
        super().__init__()
        self.weak = FeatureDropout(0.5 - gap / 2, kind)
        self.strong = FeatureDropout(0.5 + gap / 2, kind)

    def forward(self, feats: Sequence[torch.Tensor], split: int) -> list[torch.Tensor]:
        # every level's weak mask is drawn before the strong ones, in the
        # reference's order, so that equal seeds give both codes equal masks
        weak = [self.weak(f[split:]) for f in feats]
        strong = [self.strong(f[split:]) for f in feats]
        return [torch.cat((f, w, s)) for f, w, s in zip(feats, weak, strong)]


def decode_streams(decoder: nn.Module, feats: list[torch.Tensor], sizes: Sequence[int],
                   stack: bool) -> list[torch.Tensor]:
    """Run ``decoder`` on batch-stacked stream features and split the output.

    ``sizes`` are the stream batch sizes in the order they are stacked. With
    ``stack=False`` each stream is decoded in its own call: the looped
    baseline of the speed benchmark. The streams are decoded without the
    decoder's own dropout (``drop=False``, the reference's ``no_drop``): the
    feature dropout above is their perturbation. The results are equal in eval mode; in
    training mode batch norm then normalises each stream by its own
    statistics instead of the stacked batch's.
    """
    if stack:
        return list(decoder(feats, drop=False).split(list(sizes)))
    outs, start = [], 0
    for n in sizes:
        outs.append(decoder([f[start:start + n] for f in feats], drop=False))
        start += n
    return outs
