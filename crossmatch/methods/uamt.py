"""UA-MT (Yu et al., MICCAI 2019): mean teacher with uncertainty-aware
consistency. Read, not copied: the 3D code of yulequan/UA-MT
(``code/train_LA_meanteacher_certainty_unlabel.py``) and its 2D port in
HiLab-git/SSL4MIS (``code/train_uncertainty_aware_mean_teacher_2D.py``).

Networks: the student is the segmentation network; the teacher is its EMA
(decay min(1 - 1/(step + 1), ``ema_decay``), parameters only), kept in
training mode as in both codes, so dropout makes its passes stochastic.

One step, labeled x (label y) and unlabeled u:
  student: [x; u] -> logits;
  teacher (no grad): u + noise -> the consistency target;
  uncertainty: ``passes`` (T = 8) teacher passes on u, each with fresh noise
  (run as T/2 passes over [u; u], as the codes batch them); the entropy of
  the mean softmax per pixel;
  mask: entropy < (0.75 + 0.25 sigmoid_rampup(i, run length)) ln 2, the
  threshold rising over the whole run (both codes: ``max_iterations``;
  the 2D code keeps ln 2 with four classes);
noise: clip(N(0, ``noise_std``), -``noise_clip``, ``noise_clip``).
Loss:
  sup   (CE + Dice) / 2 on x                                          x 1
  cons  sum(mask (softmax(student u) - softmax(teacher u))^2)
        / (2 sum(mask) + 1e-16)                                       x consistency ramp(i)
with ramp(i) = sigmoid_rampup(i, ``ramp_length``): the codes ramp over
epochs of 150 iterations (3D 40, 2D 200 of them), here continuously over the
same number of iterations.
"""
from __future__ import annotations

import math

import torch

from ..losses import supervised_loss
from .base import StepContext, register, term_logs, weighted_sum
from .mean_teacher import TeacherMethod, ema_decay, input_noise, sigmoid_rampup, update_teacher


def uncertainty_threshold(iteration: int, iterations: int, start: float = 0.75) -> float:
    """UA-MT's entropy threshold: (start + (1 - start) sigmoid_rampup(i, run length)) ln 2."""
    return (start + (1 - start) * sigmoid_rampup(iteration, iterations)) * math.log(2)


def predictive_entropy(probs: torch.Tensor) -> torch.Tensor:
    """``T x N x K x *spatial`` softmax samples -> ``N x 1 x *spatial`` entropy of their mean."""
    mean = probs.mean(0)
    return -(mean * torch.log(mean + 1e-6)).sum(1, keepdim=True)


@register
class UAMT(TeacherMethod):
    name = "uamt"

    def after_step(self, ctx: StepContext) -> None:
        update_teacher(self.teacher, self.model.parameters(),
                       ema_decay(ctx.iteration, self.hp["ema_decay"]))

    def weights(self, iteration: int) -> dict[str, float]:
        """Linear weight of every named loss term at ``iteration``."""
        return {"sup": 1.0, "cons": self.hp["consistency"] * sigmoid_rampup(iteration, self.hp["ramp_length"])}

    def _noisy(self, u: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return u + input_noise(u.shape, self.hp["noise_std"], self.hp["noise_clip"], ctx.gen).to(u.device)

    def uncertainty(self, u: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """Entropy of the teacher's mean softmax over ``passes`` noisy passes of ``u``."""
        teacher, n = self.teacher, len(u)
        twice = torch.cat((u, u))
        with torch.no_grad(), ctx.autocast():
            probs = [teacher(self._noisy(twice, ctx)).float().softmax(1) for _ in range(self.hp["passes"] // 2)]
        return predictive_entropy(torch.cat(probs).unflatten(0, (-1, n)))

    def training_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        x, y, u = batch["x"], batch["y"], batch["u"]
        n_l = len(x)
        with torch.no_grad(), ctx.autocast():
            target = self.teacher(self._noisy(u, ctx)).float().softmax(1)
        uncertainty = self.uncertainty(u, ctx)
        threshold = uncertainty_threshold(ctx.iteration, ctx.iterations, self.hp["threshold_start"])
        mask = (uncertainty < threshold).float()
        with ctx.autocast():
            logits = self.model(torch.cat((x, u)))
        ce, dice = supervised_loss(logits[:n_l], y, self.spec.dice_from_class, self.spec.dice_smooth)
        dist = (logits[n_l:].float().softmax(1) - target).pow(2)
        terms = {"sup": (ce + dice) / 2, "cons": (mask * dist).sum() / (2 * mask.sum() + 1e-16)}
        w = self.weights(ctx.iteration)
        ctx.backward(weighted_sum(w, terms))
        return {**term_logs(terms, w, ce, dice), "w_cons": w["cons"], "threshold": threshold,
                "mask_ratio": mask.mean().item()}
