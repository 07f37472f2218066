"""SemSim (Xie et al., 2024): weak-to-strong consistency from a semantic
similarity perspective. 2D only.

Base: UniMatch's step (``crossmatch.methods.unimatch``): a teacher
prediction on the weak view (detached), two strong views (colour jitter,
blur, CutMix) and a feature-perturbation (FP) stream: channel dropout p=0.5
on the weak view's encoder features, then the decoder. Unlabeled terms are
Dice against hard pseudo-labels, masked where the teacher's confidence is
below ``tau`` (UniMatch's ACDC loss).

On top, computed on the features of the spatial-aware fusion module (SFM,
a method-owned module in ``self.extra``; evaluation uses the network only)
at 1/``feature_scale`` of the input:
  - intra-image similarity: the affinity M = softmax_j(cos(f_i, f_j) / T)
    aggregates each strong view's prediction over similar positions; the
    rectified prediction (p + M p) / 2 must match the pseudo-label (L_intra);
  - cross-image similarity: class prototypes from the labeled features
    (masked average pooling with the labels) per sub-region of a
    ``sqrt(n_regions)`` grid, the whole labeled batch's prototype standing in
    for a class absent from a sub-region; the strong views' features query
    them (cosine / T -> class prediction), supervised by the pseudo-label
    with the per-pixel weight exp(-r KL(teacher || query)) (L_cross).

Loss: (L_s + w_u L_u + w_intra L_intra + w_cross L_cross) / 2 with
L_u = 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp (UniMatch's weights within L_u);
with w_u = 1 and no similarity terms this is exactly UniMatch's loss.

UniMatch's step, two passes, with the hooks filled in: after pass 2 the
prototypes from the labeled features (no grad: targets); pass 3 (``model([u_s1,
u_s2], features=True)``) adds L_intra and L_cross to L_s1 and L_s2.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import dice_loss
from .base import register
from .unimatch import UniMatch

ABSENT = -1e4  # query logit of a class no labeled pixel of the batch shows


class SpatialFusion(nn.Module):
    """Spatial-aware fusion module: fuses decoder stages into one feature map.

    Each stage is average-pooled to the target grid and projected to ``dim``
    channels (pooling first: a 1x1 projection commutes with it and is then
    cheap). Windows of ``window x window`` target positions are matched
    across the stages: the tokens of one window (every stage, every
    position, tagged with learned stage and in-window position embeddings)
    attend to each other in one pre-norm transformer block (LN, multi-head
    attention, LN, MLP). The output at a position is the mean of its stage
    tokens. A grid side not divisible by ``window`` uses gcd(window, side).
    """

    def __init__(self, in_channels: Sequence[int], dim: int = 64, window: int = 4, heads: int = 4):
        super().__init__()
        self.dim, self.window = dim, window
        self.proj = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in in_channels)
        self.level = nn.Parameter(torch.randn(len(in_channels), dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(window, window, dim) * 0.02)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, stages: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        maps = [proj(F.adaptive_avg_pool2d(s, size)) for proj, s in zip(self.proj, stages)]
        n, k, d, (h, w) = maps[0].shape[0], len(maps), self.dim, size
        wh, ww = math.gcd(self.window, h), math.gcd(self.window, w)
        x = torch.stack(maps, 1).reshape(n, k, d, h // wh, wh, w // ww, ww)
        x = x.permute(0, 3, 5, 1, 4, 6, 2)  # n, rows, cols, stage, wh, ww, d
        x = x + self.level.view(k, 1, 1, d) + self.pos[:wh, :ww]
        t = x.reshape(-1, k * wh * ww, d)  # one sequence per window
        y = self.norm1(t)
        t = t + self.attn(y, y, y, need_weights=False)[0]
        t = t + self.mlp(self.norm2(t))
        t = t.view(n, h // wh, w // ww, k, wh, ww, d).mean(3)
        return t.permute(0, 5, 1, 3, 2, 4).reshape(n, d, h, w)


def affinity(feats: torch.Tensor, temperature: float) -> torch.Tensor:
    """Row-stochastic ``N x P x P`` affinity of ``N x C x h x w`` features
    (P = h w): softmax over positions j of cos(f_i, f_j) / temperature."""
    f = F.normalize(feats.float().flatten(2), dim=1)
    return torch.softmax(f.transpose(1, 2) @ f / temperature, dim=-1)


def rectify(probs: torch.Tensor, feats: torch.Tensor, temperature: float) -> torch.Tensor:
    """(p + M p) / 2: the prediction plus its affinity-weighted aggregate,
    computed on the feature grid and upsampled. Halving keeps it a
    distribution (M's rows sum to 1)."""
    n, k = probs.shape[:2]
    size = feats.shape[2:]
    low = F.adaptive_avg_pool2d(probs, size).flatten(2)               # n x k x P
    agg = (low @ affinity(feats, temperature).transpose(1, 2)).view(n, k, *size)
    agg = F.interpolate(agg, size=probs.shape[2:], mode="bilinear", align_corners=False)
    return (probs + agg) / 2


def region_index(size: Sequence[int], grid: int, device: torch.device) -> torch.Tensor:
    """Sub-region (of a ``grid x grid`` partition) of every position of a ``size`` map, flattened."""
    rows = torch.arange(size[0], device=device) * grid // size[0]
    cols = torch.arange(size[1], device=device) * grid // size[1]
    return (rows[:, None] * grid + cols[None, :]).flatten()


def region_prototypes(feats: torch.Tensor, labels: torch.Tensor, n_classes: int,
                      grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class prototypes per sub-region by masked average pooling.

    ``feats`` ``N x C x h x w``; ``labels`` ``N x H x W`` (any multiple of the
    feature grid: the one-hot labels are area-pooled to it, so small
    structures keep a fractional weight). Returns prototypes ``R x K x C``
    (R = grid^2), where a class absent from a sub-region gets its prototype
    over the whole images, and ``present`` (``K`` bool): the class occurs at all.
    """
    size = feats.shape[2:]
    onehot = F.one_hot(labels.long(), n_classes).movedim(-1, 1).float()
    weight = F.adaptive_avg_pool2d(onehot, size).flatten(2)           # N x K x P
    f = feats.float().flatten(2)                                      # N x C x P
    region = F.one_hot(region_index(size, grid, feats.device), grid * grid).float()  # P x R
    sums = torch.einsum("pr,nkp,ncp->rkc", region, weight, f)
    counts = torch.einsum("pr,nkp->rk", region, weight)
    total, total_counts = sums.sum(0), counts.sum(0)
    image = total / total_counts.clamp(min=1e-6)[:, None]
    local = sums / counts.clamp(min=1e-6)[..., None]
    protos = torch.where((counts > 1e-6)[..., None], local, image)
    return protos, total_counts > 1e-6


def query_logits(feats: torch.Tensor, protos: torch.Tensor, present: torch.Tensor, grid: int,
                 temperature: float) -> torch.Tensor:
    """``N x K x h x w`` logits: cosine similarity / temperature of each
    position's feature to the class prototypes of its own sub-region."""
    size = feats.shape[2:]
    f = F.normalize(feats.float().flatten(2), dim=1)                  # N x C x P
    r, k, c = protos.shape
    # similarity to every region's prototypes in one matmul, then each position's own region
    # (a per-position batched matmul is ~50x slower on CPU)
    sim = (F.normalize(protos, dim=-1).reshape(r * k, c) @ f).view(len(f), r, k, -1)
    index = region_index(size, grid, feats.device).view(1, 1, 1, -1).expand(len(f), 1, k, -1)
    logits = sim.gather(1, index).squeeze(1) / temperature
    logits = logits.masked_fill(~present[None, :, None], ABSENT)
    return logits.view(*logits.shape[:2], *size)


def uncertainty_weight(log_query: torch.Tensor, teacher: torch.Tensor, r: float,
                       present: torch.Tensor | None = None) -> torch.Tensor:
    """exp(-r KL(teacher || query)) per pixel (class axis 1): 1 where the two
    distributions agree, towards 0 as they diverge.

    The KL runs over the classes the prototypes know (``present``), with the
    teacher renormalised over them: the query gives an absent class the logit
    ``ABSENT``, so any teacher mass on it (softmax mass is never 0) would
    otherwise add ~1e4 x that mass and zero the weight of every pixel of the
    batch whenever one class is missing from the labeled slices."""
    if present is not None:
        mask = present.view(1, -1, *([1] * (teacher.dim() - 2))).to(teacher.dtype)
        teacher = teacher * mask
        teacher = teacher / teacher.sum(1, keepdim=True).clamp(min=1e-12)
    kl = (torch.xlogy(teacher, teacher) - teacher * log_query).sum(1)
    return torch.exp(-r * kl.clamp(min=0))


def cross_loss(logits: torch.Tensor, target: torch.Tensor, conf: torch.Tensor, tau: float,
               teacher: torch.Tensor, r: float, present: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Uncertainty-weighted cross-entropy of the query prediction against the
    pseudo-label, averaged over confident pixels (teacher confidence >= tau,
    label a class the prototypes know). The weight is detached: it ranks
    pixels, it is not a quantity to optimise. Returns (loss, weights)."""
    log_q = F.log_softmax(logits.float(), 1)
    ce = -log_q.gather(1, target[:, None].long())[:, 0]
    w = uncertainty_weight(log_q.detach(), teacher, r, present)
    valid = (conf >= tau) & present[target.long()]
    return (w * ce * valid).sum() / valid.sum().clamp(min=1), w


def stage_channels(model: nn.Module) -> list[int]:
    """Output channels of the 2D UNet's decoder stages, deepest first."""
    return [up.conv[0].out_channels for up in model.decoder.ups]


@register
class SemSim(UniMatch):
    """UniMatch's step (``crossmatch.methods.unimatch``) with the two
    similarity terms added through its hooks."""
    name = "semsim"

    def __init__(self, model: nn.Module, spec, hp: dict):
        super().__init__(model, spec, hp)
        self.grid = math.isqrt(hp["n_regions"])
        # decoder stages 2-4 (1/4, 1/2, 1/1 of the input) feed the SFM
        self.extra["sfm"] = SpatialFusion(stage_channels(model)[1:], hp["sfm_dim"], hp["sfm_window"],
                                          hp["sfm_heads"])

    def weights(self, iteration: int) -> dict[str, float]:
        """UniMatch's terms and the two similarity terms (constant over iterations)."""
        return {**super().weights(iteration), "intra": self.hp["w_intra"] / 2, "cross": self.hp["w_cross"] / 2}

    def features(self, stages: list[torch.Tensor], spatial: Sequence[int]) -> torch.Tensor:
        size = tuple(s // self.hp["feature_scale"] for s in spatial)
        return self.extra["sfm"](stages[1:], size)

    def first_pass(self, stages, y, spatial, ctx):
        """Class prototypes of the labeled features: targets, so detached."""
        with torch.no_grad(), ctx.autocast():
            feats_x = self.features(stages, spatial)
        return region_prototypes(feats_x, y, self.spec.n_classes, self.grid)

    def strong_features(self, stages, spatial):
        return self.features(stages, spatial)

    def strong_terms(self, logits, feats, teacher, conf, labels, targets, logs):
        hp, tau, temp = self.hp, self.hp["tau"], self.hp["temperature"]
        dice = dict(from_class=self.spec.dice_from_class, smooth=self.spec.dice_smooth)
        protos, present = targets
        rect = rectify(logits.float().softmax(1), feats, temp)
        intra = dice_loss(rect, labels, conf >= tau, **dice)
        query = F.interpolate(query_logits(feats, protos, present, self.grid, temp), size=tuple(labels.shape[1:]),
                              mode="bilinear", align_corners=False)
        cross, w = cross_loss(query, labels, conf, tau, teacher, hp["r"], present)
        logs["cross_weight"] = w[conf >= tau].mean().item() if (conf >= tau).any() else 0.0
        return {"intra": intra, "cross": cross}
