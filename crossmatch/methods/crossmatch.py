"""CrossMatch (Zhao et al., IEEE JBHI): FixMatch-style image perturbation
plus feature perturbation with cross knowledge distillation.

Streams: the encoder sees the weak view (ew) or a strong view (es); the
decoder sees clean (dn), weakly dropped (dw) or strongly dropped (ds)
features. All decoder streams of one forward pass are batch-stacked
(``need_fp``). Unlabeled losses are Dice against hard pseudo-labels, masked
where the teacher's confidence is below ``tau``.

One step (docs/methods.md, CrossMatch):
  1. no grad: predictions on the CutMix source batch (dn, dw, ds), to fill
     the mixed regions of the pseudo-labels. ``source_pass: train``
     (default) is the reference code's (its ``model.eval()`` is commented
     out): two passes in train mode, ``model(u_mix)`` for dn and
     ``model([x; u_mix], need_fp)`` for dw/ds, with batch statistics, encoder
     dropout and two more running-statistics updates per step; the
     pseudo-labels of the mixed regions then come from the same mode as the
     teacher's own (pass 2). ``source_pass: eval``: one pass in eval mode
     (running statistics, no encoder dropout; the feature dropout of dw/ds
     stays on), cheaper, but on ACDC its strong-view losses stay about 1.5x
     the reference's (docs/fidelity.md);
  2. ``model([x, u_w], need_fp)`` -> sup on x, teacher p_w, and p_w^dw, p_w^ds;
  3. ``model([u_s1, u_s2], need_fp)`` -> p_s1, p_s2, p_s2^dw, p_s2^ds.
Every target is a detached hard label, so the total loss is a sum of a part
that depends only on pass 2 and a part that depends only on pass 3. We
back-propagate pass 2's part before running pass 3: the gradient is the
same as one backward of the total, and only one pass's activations are
alive at a time (about half the peak memory).
"""
from __future__ import annotations

import math

import torch

from ..data.augment import strong_views
from ..losses import masked_dice, mixed_pseudo_label, pseudo_label, supervised_loss
from .base import Method, StepContext, TwoPassBackward, mask_ratio, register, source_predictions, term_logs
from .mean_teacher import sigmoid_rampup

def reference_ramp(tau: float, iteration: int, length: int) -> float:
    """The LA reference code's threshold (its ``train_cross_match.py``, with
    ``--conf_thresh tau``): (tau + (1 - tau) * sigmoid_rampup(i)) * ln 2, with
    sigmoid_rampup(i) = exp(-5 (1 - i/length)^2), computed at the end of
    iteration i for the next one; the first iteration uses ``tau`` itself. For
    tau 0.75 it rises from about 0.52 to ln 2 = 0.69 (the ln 2 factor is that
    code's: with two classes it keeps the threshold under any confidence a
    softmax can have, 0.5 to 1, only near the end of the ramp)."""
    if iteration == 0:
        return tau
    return (tau + (1 - tau) * sigmoid_rampup(iteration - 1, length)) * math.log(2)


@register
class CrossMatch(Method):
    name = "crossmatch"

    def weights(self, iteration: int) -> dict[str, float]:
        """Linear weight of every named loss term (constant over iterations)."""
        hp = self.hp
        ref = hp["loss_form"] == "reference"
        one_view = hp["strong_views"] == 1
        w_ip = (0.5 if one_view else 0.25) if ref else 1.0
        n_tkd = 2 if one_view else 4
        w_tkd = (1 - hp["eta"]) / 4 * (hp["w_kd"] if ref else 1.0) if hp["tkd"] else 0.0
        w_dkd = hp["eta"] / 2 * (hp["w_kd"] if ref else 1.0) if hp["dkd"] else 0.0
        # single view: the two s2 tkd terms do not exist, so tkd is the mean of two terms
        w_tkd = w_tkd * 4 / n_tkd
        w = {"sup": 1.0, "ip_s1": w_ip, "ip_s2": w_ip,
             "tkd_w_dw": w_tkd, "tkd_w_ds": w_tkd, "tkd_s_dw": w_tkd, "tkd_s_ds": w_tkd,
             "dkd_dw": w_dkd, "dkd_ds": w_dkd}
        return {k: v / 2 if ref else v for k, v in w.items()}

    def training_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        model, hp, tau = self.model, self.hp, self.hp["tau"]
        if hp["tau_schedule"] == "reference_ramp":
            tau = reference_ramp(tau, ctx.iteration, hp["ramp_length"])
        # Dice options of the dataset's reference code: first class and smoothing
        dice = dict(from_class=self.spec.dice_from_class, smooth=self.spec.dice_smooth)
        x, y, u, u_mix = batch["x"], batch["y"], batch["u"], batch["u_mix"]
        n = u.shape[0]
        views = hp["strong_views"]
        use_fp = hp["tkd"] or hp["dkd"]

        # strong views: intensity jitter + blur, then CutMix from the mix batch's own strong view
        strong, boxes = strong_views(u, u_mix, ctx.gen, views, self.spec.intensity_range, pil=ctx.pil_views)

        # 1. pseudo-labels for the mixed regions (feature dropout stays on in eval mode)
        mix, *mix_streams = source_predictions(model, u_mix, ctx, use_fp, hp["source_pass"], x)
        if use_fp:
            mix_dw, mix_ds = mix_streams

        # 2. labeled + weak view
        terms: dict[str, torch.Tensor] = {}
        with ctx.autocast():
            xu = torch.cat((x, u))
            out = model(xu, need_fp=True, split=len(x)) if use_fp else model(xu, drop=False).split([len(x), n])
        pred_x, p_w = out[0], out[1]
        ce, dice_x = supervised_loss(pred_x, y, **dice)
        terms["sup"] = (ce + dice_x) / 2
        p_w = p_w.detach().float().softmax(1)
        conf_w, y_w = pseudo_label(p_w)
        if use_fp:
            p_w_dw, p_w_ds = out[2], out[3]
            if hp["tkd"]:
                terms["tkd_w_dw"] = masked_dice(p_w_dw, y_w, conf_w, tau, **dice)
                terms["tkd_w_ds"] = masked_dice(p_w_ds, y_w, conf_w, tau, **dice)
            if hp["dkd"]:  # the dropout streams' own predictions are dkd's targets
                targets_dw = p_w_dw.detach().float().softmax(1)
                targets_ds = p_w_ds.detach().float().softmax(1)
        weights = self.weights(ctx.iteration)
        loss = TwoPassBackward(ctx, weights, hp["split_backward"])
        loss.first(terms)
        del out, pred_x

        # 3. strong views; the last one also feeds the perturbed streams
        last = boxes[-1]
        mixed = [mixed_pseudo_label(p_w, mix, b) for b in boxes]  # (conf, label) per view
        part: dict[str, torch.Tensor] = {}
        with ctx.autocast():
            if use_fp:
                split = n * (views - 1)
                out = model(torch.cat(strong), need_fp=True, split=split)
                p_s = ([out[0]] if views == 2 else []) + [out[1]]
            else:
                p_s = list(model(torch.cat(strong), drop=False).split(n))
        for i, (pred, (conf, lab)) in enumerate(zip(p_s, mixed)):
            part[f"ip_s{i + 1}"] = masked_dice(pred, lab, conf, tau, **dice)
        if use_fp:
            conf_s, lab_s = mixed[-1]
            if hp["tkd"]:
                part["tkd_s_dw"] = masked_dice(out[2], lab_s, conf_s, tau, **dice)
                part["tkd_s_ds"] = masked_dice(out[3], lab_s, conf_s, tau, **dice)
            if hp["dkd"]:
                c, t = mixed_pseudo_label(targets_dw, mix_dw, last)
                part["dkd_dw"] = masked_dice(out[2], t, c, tau, **dice)
                c, t = mixed_pseudo_label(targets_ds, mix_ds, last)
                part["dkd_ds"] = masked_dice(out[3], t, c, tau, **dice)
        loss.second(part)

        terms.update(part)
        logs = term_logs(terms, weights, ce, dice_x)
        logs["mask_ratio"], logs["tau"] = mask_ratio(conf_w, tau), tau
        return logs
