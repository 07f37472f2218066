"""MC-Net (Wu et al., MICCAI 2021): one encoder, two decoders that differ
only in their upsampling, trained for mutual consistency. Read, not copied:
ycwu1997/MC-Net, ``code/train_mcnet_3d.py`` and ``code/train_mcnet_2d.py``
(``mcnet3d_v1`` / ``mcnet2d_v1`` in ``code/networks/``).

Networks: the segmentation network's decoder is MC-Net's first (3D:
transposed convolutions, the V-Net's; 2D: bilinear, the UNet's); the second,
``extra["decoder2"]``, is the same with the other upsampling (3D:
trilinear + 3x3x3 conv; 2D: transposed convolution). As in MC-Net's test
code, only the first is evaluated (``best.pt`` / ``final.pt`` hold the
network alone).

One step on [x; u] (labeled and unlabeled, one encoder pass, each decoder in
training mode with its dropout):
  p_d = softmax(decoder_d), d = 1, 2, on the whole batch;
  sharpen(p) = p^(1/T) / (p^(1/T) + (1 - p)^(1/T)) per class, T = ``temperature``.
Loss:
  sup   Dice(p_1 on x, y) + Dice(p_2 on x, y)                        x lamda
  cons  mean((p_1 - sharpen(p_2))^2) + mean((p_2 - sharpen(p_1))^2)  x consistency ramp(i)
Both sides of each consistency term carry gradients, as in the codes (their
targets are copied into a tensor that stays in the graph). The codes compute
a cross-entropy on x but leave it out of the loss; it is logged here
(``sup_ce``) and left out too. ramp(i) = sigmoid_rampup(i, ``ramp_length``):
the codes ramp over epochs of 150 iterations (3D 40, 2D 200), here
continuously over as many iterations. Departure: Dice is the shared one
(squared denominators, the dataset's classes and smoothing); MC-Net's 3D
code divides by the plain sums.
"""
from __future__ import annotations

import torch

from ..factories import memory_format
from ..losses import dice_loss
from .base import Method, StepContext, register, term_logs, weighted_sum
from .mean_teacher import sigmoid_rampup


def sharpen(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """MC-Net's sharpening, per class: p^(1/T) / (p^(1/T) + (1 - p)^(1/T))."""
    a, b = probs.pow(1 / temperature), (1 - probs).pow(1 / temperature)
    return a / (a + b)


@register
class MCNet(Method):
    name = "mcnet"

    def __init__(self, model, spec, hp: dict):
        super().__init__(model, spec, hp)
        self.extra["decoder2"] = model.twin_decoder().to(memory_format=memory_format(spec.dim))

    def weights(self, iteration: int) -> dict[str, float]:
        """Linear weight of every named loss term at ``iteration``."""
        hp = self.hp
        return {"sup": hp["lamda"], "cons": hp["consistency"] * sigmoid_rampup(iteration, hp["ramp_length"])}

    def training_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        x, y, u = batch["x"], batch["y"], batch["u"]
        n_l, spec = len(x), self.spec
        with ctx.autocast():
            feats = self.model.encoder(torch.cat((x, u)))
            logits = [self.model.decoder(feats), self.extra["decoder2"](feats)]
        probs = [lg.float().softmax(1) for lg in logits]
        dice = [dice_loss(p[:n_l], y, None, spec.dice_smooth, spec.dice_from_class) for p in probs]
        sharp = [sharpen(p, self.hp["temperature"]) for p in probs]
        terms = {"sup": dice[0] + dice[1],
                 "cons": (probs[0] - sharp[1]).pow(2).mean() + (probs[1] - sharp[0]).pow(2).mean()}
        w = self.weights(ctx.iteration)
        ctx.backward(weighted_sum(w, terms))
        with torch.no_grad():  # logged only: MC-Net's codes leave it out of the loss
            ce = torch.nn.functional.cross_entropy(logits[0][:n_l].float(), y)
        logs = term_logs(terms, w, ce, dice[0])
        logs.update(w_cons=w["cons"], sup_dice2=dice[1].item())
        return logs
