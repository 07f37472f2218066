"""The encoder/decoder contract both networks follow, and ``need_fp``."""
from __future__ import annotations

import torch
from torch import nn

from .perturb import FeaturePerturbation, decode_streams


class EncoderDecoder(nn.Module):
    """Segmentation network with CrossMatch's feature-perturbation streams.

    Subclasses set ``self.encoder`` (input -> list of skip features, shallow
    to deep) and ``self.decoder`` (list of skip features -> logits).

    ``forward(x)`` returns logits ``N x K x *spatial``.
    ``forward(x, need_fp=True)`` treats ``x`` as two parts ``[a; b]`` (``a`` is
    the first ``split`` samples, by default half the batch), runs the encoder
    once, and decodes ``[a; b; weak_drop(b); strong_drop(b)]`` in one decoder
    call; it returns the four logit tensors ``(pred_a, pred_b, pred_b_weak,
    pred_b_strong)``. ``split=0`` perturbs the whole batch (``pred_a`` empty).
    Decoders take ``drop`` (default True): their own dropout, where the
    network has one (the V-Net's last stage), is skipped for the stacked
    perturbation streams, as in the reference code; ``forward(x, drop=False)``
    skips it in a plain pass (CrossMatch with both streams off decodes its
    passes as it would with them on).
    ``forward(x, features=True)`` returns ``(logits, stages)``: the decoder's
    stage outputs, deepest first; the last one is what the output conv sees
    (the other methods' extra heads and feature losses use them).
    """

    encoder: nn.Module
    decoder: nn.Module

    def __init__(self, dropout_type: str = "dropout", fp_gap: float = 0.5,
                 stack_streams: bool = True):
        super().__init__()
        self.perturb = FeaturePerturbation(dropout_type, fp_gap)
        self.stack_streams = stack_streams

    def forward(self, x: torch.Tensor, need_fp: bool = False, split: int | None = None,
                features: bool = False, drop: bool = True):
        feats = self.encoder(x)
        if features and need_fp:
            raise ValueError("features=True and need_fp=True cannot be combined")
        if not need_fp:
            return self.decoder(feats, return_features=features, drop=drop)
        n = x.shape[0]
        split = n // 2 if split is None else split
        if not 0 <= split <= n:
            raise ValueError(f"split must be in [0, {n}], got {split}")
        m = n - split
        feats = self.perturb(feats, split)
        return tuple(decode_streams(self.decoder, feats, (split, m, m, m), self.stack_streams))
