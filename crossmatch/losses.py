"""Losses shared by every method. Shapes: logits/probabilities ``N x K x
*spatial``, integer targets ``N x *spatial``, masks ``N x *spatial`` (bool,
True = pixel counts)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .data.augment import apply_cutmix


def dice_loss(probs: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None,
              smooth: float = 1e-5, from_class: int = 0) -> torch.Tensor:
    """Soft Dice loss averaged over classes ``from_class .. K-1``: 0 counts the
    background too (UniMatch's DiceLoss, 2D), 1 only the foreground (UA-MT's
    dice_loss, 3D). Pixels where ``valid`` is False contribute nothing:
    neither to the intersection nor to either denominator term."""
    k = probs.shape[1]
    onehot = F.one_hot(target.long(), k).movedim(-1, 1).to(probs.dtype)
    probs, onehot = probs[:, from_class:], onehot[:, from_class:]
    if valid is not None:
        w = valid.unsqueeze(1).to(probs.dtype)
        probs, onehot = probs * w, onehot * w
    dims = (0, *range(2, probs.dim()))
    inter = (probs * onehot).sum(dims)
    denom = (probs * probs).sum(dims) + (onehot * onehot).sum(dims)
    return (1 - (2 * inter + smooth) / (denom + smooth)).mean()


def supervised_loss(logits: torch.Tensor, target: torch.Tensor, from_class: int = 0,
                    smooth: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and Dice on labeled data; the methods combine them as (CE + Dice) / 2."""
    logits = logits.float()
    return F.cross_entropy(logits, target), dice_loss(logits.softmax(1), target, None, smooth, from_class)


def pseudo_label(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Confidence and hard label per pixel of detached probabilities."""
    conf, label = probs.detach().max(1)
    return conf, label


def mixed_pseudo_label(probs: torch.Tensor, probs_mix: torch.Tensor,
                       box: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo-label of a CutMix view: the teacher's probabilities of the
    unlabeled batch with those of the CutMix source pasted inside ``box``."""
    return pseudo_label(apply_cutmix(probs, probs_mix, box))


def masked_dice(logits: torch.Tensor, target: torch.Tensor, conf: torch.Tensor,
                tau: float, from_class: int = 0, smooth: float = 1e-5) -> torch.Tensor:
    """Dice of ``logits`` against a pseudo-label, ignoring pixels whose teacher
    confidence is below ``tau``."""
    return dice_loss(logits.float().softmax(1), target, conf >= tau, smooth, from_class)
