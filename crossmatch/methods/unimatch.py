"""UniMatch (Yang et al., CVPR 2023), as its medical code trains it
(LiheYoung/UniMatch, ``more-scenarios/medical/unimatch.py``; read, not
copied): weak-to-strong consistency with two strong views and one
feature-perturbation (FP) stream. The base CrossMatch and SemSim build on.

Teacher: the prediction on the weak view, detached; its hard labels are the
pseudo-labels, masked where its confidence is below ``tau``. Strong views:
colour jitter and blur, then a CutMix box pasting another unlabeled batch's
strong view (its pseudo-label pasted the same way, from a no-grad pass in
eval mode). FP: channel dropout p ``fp_p`` (0.5) on every encoder feature of
the weak view, decoded with the clean batch in one stacked decoder call.
Unlabeled terms are Dice against the pseudo-labels (the medical code's loss).

Loss: (L_s + w_u (0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp)) / 2, L_s = (CE + Dice) / 2
on the labeled batch; w_u is 1 in UniMatch.

One step, two passes (the graph of the first is freed before the second;
every target is detached, so back-propagating the first part early gives
the same gradient):
  1. no grad, eval mode: the teacher on the CutMix source batch;
  2. encoder on [x, u_w], decoder on [x, u_w, drop(u_w)] -> L_s, L_fp, teacher;
  3. both strong views in one pass -> L_s1, L_s2.

A method built on this one (SemSim) adds terms through three hooks:
``first_pass`` (after pass 2: targets from its decoder stages),
``strong_features`` (inside pass 3's autocast) and ``strong_terms`` (after
pass 3's own terms); ``weights`` names its terms.

Against CrossMatch: CrossMatch replaces the FP stream by a weak (p 0.25) and
a strong (p 0.75) dropout stream on both the weak and the second strong
view, with teacher-to-student and dropout-to-dropout distillation; with
both of those streams off the two methods compute the same supervised and
strong-view terms (tests/test_unimatch.py).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..data.augment import apply_cutmix, strong_views
from ..losses import masked_dice, pseudo_label, supervised_loss
from ..models import FeatureDropout
from .base import Method, StepContext, TwoPassBackward, mask_ratio, register, source_predictions, term_logs


@register
class UniMatch(Method):
    name = "unimatch"

    def __init__(self, model, spec, hp: dict):
        super().__init__(model, spec, hp)
        self.fp_drop = FeatureDropout(hp["fp_p"])  # parameter-free, always active

    def weights(self, iteration: int) -> dict[str, float]:
        """Linear weight of every named loss term (constant over iterations)."""
        w_u = self.hp.get("w_u", 1.0)  # a method built on this one may weigh the unlabeled part (SemSim)
        w = {"sup": 1.0, "u_s1": 0.25 * w_u, "u_s2": 0.25 * w_u, "u_fp": 0.5 * w_u}
        return {k: v / 2 for k, v in w.items()}

    # ------------------------------------------------ what a method built on UniMatch adds

    def first_pass(self, stages: list[torch.Tensor], y: torch.Tensor, spatial: Sequence[int],
                   ctx: StepContext) -> Any:
        """After pass 2 (decoder stages of [x, u_w, drop(u_w)]): detached targets for pass 3."""
        return None

    def strong_features(self, stages: list[torch.Tensor], spatial: Sequence[int]) -> Any:
        """Inside pass 3's autocast: features of the strong views' decoder stages."""
        return None

    def strong_terms(self, logits: torch.Tensor, feats: Any, teacher: torch.Tensor, conf: torch.Tensor,
                     labels: torch.Tensor, targets: Any, logs: dict[str, float]) -> dict[str, torch.Tensor]:
        """Pass 3's further loss terms (``logs``: values to log besides them)."""
        return {}

    # ------------------------------------------------ the step

    def training_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        model, hp, tau = self.model, self.hp, self.hp["tau"]
        dice = dict(from_class=self.spec.dice_from_class, smooth=self.spec.dice_smooth)
        x, y, u, u_mix = batch["x"], batch["y"], batch["u"], batch["u_mix"]
        nx, n, spatial = len(x), len(u), tuple(u.shape[2:])
        strong, boxes = strong_views(u, u_mix, ctx.gen, 2, self.spec.intensity_range, pil=ctx.pil_views)

        # 1. teacher on the CutMix source batch, for the mixed regions of the pseudo-labels
        (mix,) = source_predictions(model, u_mix, ctx)

        # 2. labeled + weak view + FP stream: one encoder pass, one stacked decoder pass
        terms: dict[str, torch.Tensor] = {}
        with ctx.autocast():
            feats = [torch.cat((f, self.fp_drop(f[nx:]))) for f in model.encoder(torch.cat((x, u)))]
            logits, stages = model.decoder(feats, return_features=True, drop=False)  # a stacked stream batch
        pred_x, pred_w, pred_fp = logits.split([nx, n, n])
        ce, dice_x = supervised_loss(pred_x, y, **dice)
        terms["sup"] = (ce + dice_x) / 2
        p_w = pred_w.detach().float().softmax(1)
        conf_w, y_w = pseudo_label(p_w)
        terms["u_fp"] = masked_dice(pred_fp, y_w, conf_w, tau, **dice)
        targets = self.first_pass([s[:nx] for s in stages], y, spatial, ctx)
        weights = self.weights(ctx.iteration)
        loss = TwoPassBackward(ctx, weights, hp["split_backward"])
        loss.first(terms)
        del feats, logits, stages, pred_x, pred_w, pred_fp

        # 3. both strong views, against the teacher with the source's prediction pasted in the box
        teacher = torch.cat([apply_cutmix(p_w, mix, b) for b in boxes])
        conf_s, y_s = pseudo_label(teacher)
        part: dict[str, torch.Tensor] = {}
        with ctx.autocast():
            logits, stages = model(torch.cat(strong), features=True)
            feats_s = self.strong_features(stages, spatial)
        for i, (pred, conf, lab) in enumerate(zip(logits.split(n), conf_s.split(n), y_s.split(n))):
            part[f"u_s{i + 1}"] = masked_dice(pred, lab, conf, tau, **dice)
        logs: dict[str, float] = {}
        part.update(self.strong_terms(logits, feats_s, teacher, conf_s, y_s, targets, logs))
        loss.second(part)

        terms.update(part)
        logs = {**term_logs(terms, weights, ce, dice_x), "mask_ratio": mask_ratio(conf_w, tau), **logs}
        return logs
