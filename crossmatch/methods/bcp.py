"""BCP, bidirectional copy-paste (Bai et al., CVPR 2023). Read, not copied:
DeepMed-Lab-ECNU/BCP, ``code/ACDC_BCP_train.py`` (2D) and
``code/LA_BCP_train.py`` with ``code/utils/BCP_utils.py`` (3D).

Two stages in one run (``stages``: the trainer logs the stage and calls
``begin_stage`` at the boundary; a resumed run continues inside its stage):
  1. pre-training, the first ``pretrain_fraction`` of the iterations, on
     labeled data only: two labeled halves a, b; the image a * M + b * (1 - M)
     with the label pasted the same way;
  2. self-training: the network and an EMA teacher both start from the best
     validation weights of stage 1 (as BCP loads its pre-training's best
     model; the last weights where no validation ran). The teacher (train
     mode, no grad) predicts the unlabeled halves; the hard pseudo-labels
     keep each class's largest connected component (BCP's ``nms=1``). Two
     mixed images, each its own forward pass:
       x_a * M + u_a * (1 - M)   labeled outside the box, unlabeled inside
       u_b * M + x_b * (1 - M)   unlabeled outside, labeled inside
     each against its pasted label (ground truth where labeled, pseudo-label
     where not), unlabeled pixels weighted ``u_weight`` (0.5).
M is 1 outside one box per step (shared by the batch), 0 inside; the box
spans ``mask_ratio`` (2/3) of every axis at a uniform position.
Mixed loss, per image: (Dice + CE) / 2, each term the weighted sum of its
masked parts (Dice over the region, CE averaged over the region). Loss of a
step: pre-training the one mixed loss (both regions weight 1); self-training
the sum of the two. Teacher update after each self-training step:
t <- 0.99 t + 0.01 s (constant, no warm-up), parameters only.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..errors import ConfigError
from ..losses import dice_loss
from .base import StepContext, register
from .mean_teacher import TeacherMethod, update_teacher


def paste_mask(spatial: tuple[int, ...], ratio: float, gen: torch.Generator) -> torch.Tensor:
    """1 outside, 0 inside a box of ``int(ratio * size)`` per axis at a uniform
    position (BCP's ``generate_mask`` / ``context_mask``)."""
    mask = torch.ones(spatial)
    box = []
    for size in spatial:
        side = int(size * ratio)
        start = int(torch.randint(0, max(size - side, 1), (1,), generator=gen))
        box.append(slice(start, start + side))
    mask[tuple(box)] = 0
    return mask


def largest_components(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Per sample and foreground class, only the largest connected component
    keeps its label; the rest becomes background (BCP's ``nms=1``)."""
    out = np.zeros(labels.shape, np.int64)
    for i, lab in enumerate(labels.cpu().numpy()):
        for c in range(1, n_classes):
            parts, n = ndimage.label(lab == c)
            if n:
                largest = np.bincount(parts.ravel())[1:].argmax() + 1
                out[i][parts == largest] = c
    return torch.from_numpy(out).to(labels.device)


def mixed_loss(logits: torch.Tensor, outside: torch.Tensor, inside: torch.Tensor, mask: torch.Tensor,
               w_out: float, w_in: float, from_class: int, smooth: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice and CE of a pasted image against the labels of its two regions
    (``mask`` 1: outside the box), each region's part weighted."""
    logits = logits.float()
    probs = logits.softmax(1)
    keep = mask.bool().expand_as(outside)
    dice = w_out * dice_loss(probs, outside, keep, smooth, from_class) \
        + w_in * dice_loss(probs, inside, ~keep, smooth, from_class)
    m = keep.float()
    ce = w_out * (F.cross_entropy(logits, outside, reduction="none") * m).sum() / (m.sum() + 1e-16) \
        + w_in * (F.cross_entropy(logits, inside, reduction="none") * (1 - m)).sum() / ((1 - m).sum() + 1e-16)
    return dice, ce


@register
class BCP(TeacherMethod):
    name = "bcp"

    def stages(self, iterations: int) -> list[tuple[str, int]]:
        first = round(self.hp["pretrain_fraction"] * iterations)
        if not 0 < first < iterations:
            raise ConfigError(f"method.pretrain_fraction: {self.hp['pretrain_fraction']} of train.iterations "
                              f"({iterations}) leaves a stage without iterations; choose a fraction that "
                              "gives both pre-training and self-training at least one")
        return [("pretrain", 0), ("selftrain", first)]

    def begin_stage(self, name: str, best: dict[str, torch.Tensor] | None) -> None:
        if best is not None:
            self.model.load_state_dict(best)
        self.teacher.load_state_dict(self.model.state_dict())

    def after_step(self, ctx: StepContext) -> None:
        if ctx.stage == "selftrain":
            update_teacher(self.teacher, self.model.parameters(), self.hp["ema_decay"])

    def _loss(self, logits, outside, inside, mask, w_out, w_in):
        dice, ce = mixed_loss(logits, outside, inside, mask, w_out, w_in, self.spec.dice_from_class,
                              self.spec.dice_smooth)
        return (dice + ce) / 2, dice, ce

    def training_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        x, y, u = batch["x"], batch["y"], batch["u"]
        if len(x) % 2 or len(u) != len(x):
            raise ConfigError(f"train.batch_size must be even for bcp (its halves are pasted pairwise), "
                              f"got {len(x)}")
        if ctx.stage not in ("pretrain", "selftrain"):
            raise ValueError(f"bcp: a step of stage {ctx.stage!r}; the trainer names one of its stages() "
                             "in StepContext.stage")
        k, hp = len(x) // 2, self.hp
        mask = paste_mask(tuple(x.shape[2:]), hp["mask_ratio"], ctx.gen).to(x.device)
        img = mask[None, None]  # broadcast over batch and channels
        x_a, x_b, y_a, y_b = x[:k], x[k:], y[:k], y[k:]
        if ctx.stage == "pretrain":
            with ctx.autocast():
                logits = self.model(x_a * img + x_b * (1 - img))
            loss, dice, ce = self._loss(logits, y_a, y_b, mask, 1.0, 1.0)
            ctx.backward(loss)
            return {"loss": loss.item(), "loss_l": loss.item(), "sup_ce": ce.item(), "sup_dice": dice.item()}

        u_a, u_b = u[:k], u[k:]
        with torch.no_grad(), ctx.autocast():
            teacher = self.teacher
            plab = [teacher(v).float().argmax(1) for v in (u_a, u_b)]
        if hp["largest_component"]:
            plab = [largest_components(p, self.spec.n_classes) for p in plab]
        w_u = hp["u_weight"]
        with ctx.autocast():
            out_l = self.model(x_a * img + u_a * (1 - img))
            out_u = self.model(u_b * img + x_b * (1 - img))
        loss_l, dice_l, ce_l = self._loss(out_l, y_a, plab[0], mask, 1.0, w_u)
        loss_u, _, _ = self._loss(out_u, plab[1], y_b, mask, w_u, 1.0)
        loss = loss_l + loss_u
        ctx.backward(loss)
        return {"loss": loss.item(), "loss_l": loss_l.item(), "loss_u": loss_u.item(), "sup_ce": ce_l.item(),
                "sup_dice": dice_l.item(), "pseudo_fg": float(np.mean([(p > 0).float().mean().item() for p in plab]))}
