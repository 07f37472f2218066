"""The method interface: what a method implements on the shared trainer.

A method is one ``Method`` subclass in one file, registered (``@register``)
under the name its declaration has in ``crossmatch.methods.catalog`` (the
hyperparameters, their defaults and checks, torch-free); it implements
``training_step``. The shared trainer (``crossmatch.train``) owns everything
else.

Modules a method needs besides the segmentation network (extra heads, an
EMA teacher) go in ``self.extra``: the trainer moves them to the device,
optimises their trainable parameters with the network's, and saves and
restores them with the resumable checkpoint. Only the network itself is
evaluated and kept in ``best.pt`` / ``final.pt``.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from ..data.specs import DatasetSpec
from .catalog import MethodInfo, get_method

IMPLEMENTATIONS: dict[str, type["Method"]] = {}


def register(cls: type["Method"]) -> type["Method"]:
    """Register the implementation of the catalog's method ``cls.name``."""
    cls.info = get_method(cls.name)
    IMPLEMENTATIONS[cls.name] = cls
    return cls


@dataclass
class StepContext:
    """What the trainer hands a method for one iteration.

    ``backward(loss)`` back-propagates a (partial) loss through the AMP
    scaler and checks it is finite; a method may call it several times per
    step (gradients accumulate), which lets it free one forward graph before
    building the next. ``gen`` draws the step's augmentations.
    """
    iteration: int
    gen: torch.Generator
    backward: Callable[[torch.Tensor], None]
    autocast: Callable[[], AbstractContextManager]
    iterations: int = 0   # the run's length (train.iterations), for ramps over the whole run
    stage: str = "train"  # the name of the run's stage this iteration is in (Method.stages)
    pil_views: bool = False  # strong views made by PIL on 8-bit images (train.unlabeled_views: pil)


class Method:
    name: ClassVar[str]
    info: ClassVar[MethodInfo]   # the catalog's declaration (set by @register)

    def __init__(self, model: nn.Module, spec: DatasetSpec, hp: dict[str, Any]):
        self.model, self.spec, self.hp = model, spec, hp
        self.extra = nn.ModuleDict()

    @classmethod
    def hyperparameters(cls, dataset: str, given: dict[str, Any]) -> dict[str, Any]:
        return cls.info.hyperparameters(dataset, given)

    def parameters(self) -> list[nn.Parameter]:
        """What the optimiser updates: the network and the trainable extras."""
        return list(self.model.parameters()) + [p for p in self.extra.parameters() if p.requires_grad]

    def train(self) -> None:
        self.model.train()
        self.extra.train()

    def after_step(self, ctx: "StepContext") -> None:
        """Called after each optimiser step (e.g. to update an EMA teacher)."""

    def stages(self, iterations: int) -> list[tuple[str, int]]:
        """The run's stages as (name, first iteration), in order, for a run of
        ``iterations``: one by default. A method with several (BCP: supervised
        pre-training, then self-training) overrides it and ``begin_stage``; the
        trainer logs the stage number and calls ``begin_stage`` on entering each
        stage after the first (a resumed run inside a stage does not re-enter it:
        the method's state comes back with the checkpoint)."""
        return [("train", 0)]

    def begin_stage(self, name: str, best: dict[str, torch.Tensor] | None) -> None:
        """Entering stage ``name``; ``best``: the network's weights at its best
        validation so far (``best.pt``), None before any validation."""

    def training_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        """Run one iteration's forward/backward; return named values to log."""
        raise NotImplementedError

    # for methods whose loss is a weighted sum of named terms
    def weights(self, iteration: int) -> dict[str, float]:
        """Linear weight of every named loss term at ``iteration``."""
        raise NotImplementedError


# helpers for methods whose loss is a weighted sum of named terms

def weighted_sum(weights: dict[str, float], terms: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(weights[k] * v for k, v in terms.items())


def term_logs(terms: dict[str, torch.Tensor], weights: dict[str, float], sup_ce: torch.Tensor,
              sup_dice: torch.Tensor) -> dict[str, float]:
    """Every term, the weighted total, and the supervised CE and Dice, as floats to log."""
    logs = {k: v.item() for k, v in terms.items()}
    logs["loss"] = sum(weights[k] * v for k, v in logs.items())
    logs["sup_ce"], logs["sup_dice"] = sup_ce.item(), sup_dice.item()
    return logs


def mask_ratio(conf: torch.Tensor, tau: float) -> float:
    """The share of unlabeled pixels whose teacher confidence reaches ``tau``."""
    return (conf >= tau).float().mean().item()


def source_predictions(model: nn.Module, u_mix: torch.Tensor, ctx: StepContext, streams: bool = False,
                       mode: str = "eval", x: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """No-grad softmax predictions on the CutMix source batch, to fill the
    mixed regions of the pseudo-labels: ``(clean,)``, or with ``streams``
    ``(clean, weak dropout, strong dropout)``. ``mode`` ``eval``: one pass in
    eval mode (running statistics, no encoder dropout; the feature dropout of
    the streams stays on). ``train``: the CrossMatch reference's two train-mode
    passes, ``model(u_mix)``, then the streams of ``model([x; u_mix])``."""
    soft = lambda t: t.float().softmax(1)  # noqa: E731
    with torch.no_grad(), ctx.autocast():
        if mode == "train":
            clean = soft(model(u_mix))
            if not streams:
                return (clean,)
            _, _, dw, ds = model(torch.cat((x, u_mix)), need_fp=True, split=len(x))
            return clean, soft(dw), soft(ds)
        model.eval()
        try:
            if not streams:
                return (soft(model(u_mix, drop=False)),)
            _, clean, dw, ds = model(u_mix, need_fp=True, split=0)
            return soft(clean), soft(dw), soft(ds)
        finally:
            model.train()


class TwoPassBackward:
    """The backward of a step whose loss is a part that depends only on one
    forward pass plus a part that depends only on the next (every target
    detached): with ``split``, the first part is back-propagated before the
    second pass runs, so only one pass's activations are alive at a time; the
    gradient is that of one backward of the total (test_train checks it)."""

    def __init__(self, ctx: StepContext, weights: dict[str, float], split: bool):
        self.ctx, self.weights, self.split = ctx, weights, split
        self.pending: torch.Tensor | None = None

    def first(self, terms: dict[str, torch.Tensor]) -> None:
        loss = weighted_sum(self.weights, terms)
        if self.split:
            self.ctx.backward(loss)
        else:
            self.pending = loss

    def second(self, terms: dict[str, torch.Tensor]) -> None:
        loss = weighted_sum(self.weights, terms)
        self.ctx.backward(loss if self.pending is None else self.pending + loss)
