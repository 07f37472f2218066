"""SimCVD (You et al., IEEE TMI 2022): mean teacher with a signed distance
map (SDM) head, voxel-wise contrastive learning between two dropout views,
and pairwise structural distillation. 3D only (V-Net).

Networks: the student is the V-Net plus two method-owned heads on its last
decoder stage (16 channels at full resolution): an SDM head (1x1x1 conv +
tanh, as DTC) and a per-voxel projection head. The teacher is an EMA copy of
all three (``extra["teacher"]``); it stays in train mode, as UA-MT's, so its
dropout (bottleneck and last decoder stage, the features the heads read)
draws masks independent of the student's: student and teacher outputs are
SimCVD's two dropout views of one input.

One step, labeled x (with label y) and unlabeled u, both streams batched:
  teacher (no grad): [x; u] + clipped Gaussian noise -> logits, features, SDM;
  student: [x; u] -> logits, features, SDM;
  voxels: ``n_voxels`` per volume, ``boundary_fraction`` of them drawn near
  the teacher's predicted boundary (smallest |SDM|), the rest uniformly;
  embeddings = proj([features, SDM]) at those voxels, L2-normalised.
Loss (weights as docs/methods.md, SimCVD, maps them):
  sup        (CE + Dice) / 2 on x                                     x 1
  sdm        MSE(student SDM, exact SDM of y) on x                    x alpha
  contrast   InfoNCE, student vs teacher embedding of the same voxel
             (positive) against every other sampled voxel (negatives)  x lambda
  pd         mean squared difference of the student's and teacher's
             voxel-to-voxel cosine similarity matrices (per volume)   x beta
  cons       MSE of student and teacher probabilities on u            x gamma * ramp
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.specs import DatasetSpec
from ..losses import supervised_loss
from ..sdm import signed_distance_map
from .base import Method, StepContext, register, term_logs, weighted_sum
from .mean_teacher import ema_decay, input_noise, make_teacher, sigmoid_rampup, update_teacher


class SDMHead(nn.Module):
    """Signed distance map in [-1, 1] from the last decoder stage (DTC's head)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv3d(channels, 1, 1)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(feat))


def sample_voxels(sdm: torch.Tensor, n: int, boundary_fraction: float,
                  gen: torch.Generator) -> torch.Tensor:
    """``B x n`` flat voxel indices per volume of a ``B x 1 x *spatial`` SDM:
    ``round(boundary_fraction * n)`` drawn among the ``4x`` as many voxels
    closest to the predicted boundary, the rest uniformly without
    replacement. Randomness comes from ``gen`` (CPU) only, so a resumed run
    draws the same voxels."""
    flat = sdm.detach().float().flatten(1).abs()
    n_vox = flat.shape[1]
    n = min(n, n_vox)
    n_b = round(boundary_fraction * n)
    k = min(n_vox, 4 * n_b)
    rows = []
    for dist in flat:
        parts = [torch.randperm(n_vox, generator=gen)[:n - n_b].to(sdm.device)]
        if n_b:
            # sorted: the candidate set, not topk's order, decides which voxels are drawn
            near = dist.topk(k, largest=False).indices.sort().values
            parts.append(near[torch.randperm(k, generator=gen)[:n_b].to(sdm.device)])
        rows.append(torch.cat(parts))
    return torch.stack(rows)


def gather_voxels(feat: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``B x C x *spatial`` features at ``B x n`` flat indices -> ``B x n x C``."""
    flat = feat.flatten(2)
    return flat.gather(2, idx.unsqueeze(1).expand(-1, flat.shape[1], -1)).transpose(1, 2)


def info_nce(query: torch.Tensor, key: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE of ``M x d`` L2-normalised embeddings: row i of ``key`` is the
    positive of row i of ``query``, every other row a negative (SimCSE's form)."""
    logits = query @ key.t() / temperature
    return F.cross_entropy(logits, torch.arange(len(query), device=query.device))


def pairwise_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the ``n x n`` cosine similarity matrices of
    ``B x n x C`` student and teacher voxel features (Liu et al.'s pairwise
    distillation, per volume)."""
    s, t = F.normalize(student, dim=-1), F.normalize(teacher, dim=-1)
    return (s @ s.transpose(1, 2) - t @ t.transpose(1, 2)).pow(2).mean()


@register
class SimCVD(Method):
    name = "simcvd"

    def __init__(self, model: nn.Module, spec: DatasetSpec, hp: dict):
        super().__init__(model, spec, hp)
        channels = model.decoder.out.in_channels  # the last stage, what the output conv sees
        self.extra["sdm"] = SDMHead(channels)
        # per voxel (applied to the sampled voxels only): features + predicted SDM -> embedding
        self.extra["proj"] = nn.Sequential(nn.Linear(channels + 1, 64), nn.ReLU(inplace=True),
                                           nn.Linear(64, hp["proj_dim"]))
        self.extra["teacher"] = make_teacher(nn.ModuleDict({"net": model, "sdm": self.extra["sdm"],
                                                            "proj": self.extra["proj"]}))

    def _student(self) -> nn.ModuleDict:
        return nn.ModuleDict({"net": self.model, "sdm": self.extra["sdm"], "proj": self.extra["proj"]})

    def after_step(self, ctx: StepContext) -> None:
        update_teacher(self.extra["teacher"], self._student().parameters(),
                       ema_decay(ctx.iteration, self.hp["ema_decay"]))

    def _forward(self, nets: nn.Module, inputs: torch.Tensor):
        logits, stages = nets["net"](inputs, features=True)
        feat = stages[-1]
        return logits, feat, nets["sdm"](feat)

    def training_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        hp = self.hp
        x, y, u = batch["x"], batch["y"], batch["u"]
        n_l = len(x)
        inputs = torch.cat((x, u))
        noise = input_noise(inputs.shape, hp["noise_std"], hp["noise_clip"], ctx.gen)

        teacher = self.extra["teacher"]
        with torch.no_grad(), ctx.autocast():
            t_logits, t_feat, t_sdm = self._forward(teacher, inputs + noise.to(inputs.device))
        with ctx.autocast():
            logits, feat, sdm = self._forward(self._student(), inputs)

        idx = sample_voxels(t_sdm, hp["n_voxels"], hp["boundary_fraction"], ctx.gen)
        # gathered first, then cast: only the sampled voxels are copied to float32 under AMP
        f_s, f_t = gather_voxels(feat, idx).float(), gather_voxels(t_feat, idx).float()
        z_s = self.extra["proj"](torch.cat((f_s, gather_voxels(sdm, idx).float()), -1))
        with torch.no_grad():
            z_t = teacher["proj"](torch.cat((f_t, gather_voxels(t_sdm, idx).float()), -1))

        ce, dice = supervised_loss(logits[:n_l], y, self.spec.dice_from_class, self.spec.dice_smooth)
        target = torch.from_numpy(signed_distance_map(y.cpu().numpy())).to(sdm.device)
        probs, t_probs = logits[n_l:].float().softmax(1), t_logits[n_l:].float().softmax(1)
        terms = {
            "sup": (ce + dice) / 2,
            "sdm": F.mse_loss(sdm[:n_l, 0].float(), target),
            "contrast": info_nce(F.normalize(z_s.flatten(0, 1), dim=-1),
                                 F.normalize(z_t.flatten(0, 1), dim=-1), hp["temperature"]),
            "pd": pairwise_distillation(f_s, f_t),
            "cons": (probs - t_probs).pow(2).mean(),
        }
        w = self.weights(ctx.iteration)
        ctx.backward(weighted_sum(w, terms))
        logs = term_logs(terms, w, ce, dice)
        logs["w_cons"] = w["cons"]
        return logs

    def weights(self, iteration: int) -> dict[str, float]:
        """Linear weight of every named loss term at ``iteration``."""
        hp = self.hp
        return {"sup": 1.0, "sdm": hp["alpha"], "contrast": hp["lambda"], "pd": hp["beta"],
                "cons": hp["gamma"] * sigmoid_rampup(iteration, hp["ramp_length"])}
