"""Supervised baselines: labeled data only (lower bound) and every training
case labeled (``fully_supervised``, upper bound; the trainer gives it the
full training list)."""
from __future__ import annotations

import torch

from ..losses import supervised_loss
from .base import Method, StepContext, register


@register
class Supervised(Method):
    name = "supervised"

    def training_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        with ctx.autocast():
            logits = self.model(batch["x"])
        ce, dice = supervised_loss(logits, batch["y"], self.spec.dice_from_class, self.spec.dice_smooth)
        loss = (ce + dice) / 2
        ctx.backward(loss)
        return {"loss": loss.item(), "sup_ce": ce.item(), "sup_dice": dice.item()}


@register
class FullySupervised(Supervised):
    name = "fully_supervised"   # labels_all (catalog): the trainer gives it every training case
