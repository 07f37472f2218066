"""The method interface and registry.

A method is one class in one file: it declares its hyperparameters with
defaults (``defaults``, optionally overridden per dataset in
``dataset_defaults``) and implements ``training_step``. The shared trainer
(``crossmatch.train``) owns everything else.

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

METHODS: dict[str, type["Method"]] = {}


def register(cls: type["Method"]) -> type["Method"]:
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type["Method"]:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {sorted(METHODS)}") from None


@dataclass
class StepContext:
    """What the trainer hands a method for one iteration.

    ``backward(loss)`` back-propagates a (partial) loss through the AMP
    scaler and checks it is finite; a method may call it several times per
    step (gradients accumulate), which lets it free one forward graph before
    building the next. ``gen`` draws the step's augmentations.
    """
    iteration: int
    device: torch.device
    gen: torch.Generator
    backward: Callable[[torch.Tensor], None]
    autocast: Callable[[], AbstractContextManager]


class Method:
    name: ClassVar[str]
    uses_unlabeled: ClassVar[bool] = False
    labels_all: ClassVar[bool] = False   # train on every training case labeled (upper bound)
    dims: ClassVar[tuple[int, ...]] = (2, 3)  # dataset dimensions the method supports
    defaults: ClassVar[dict[str, Any]] = {}
    dataset_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    # hyperparameters spelled in the experiment id (ablation axes)
    id_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: nn.Module, spec: DatasetSpec, hp: dict[str, Any]):
        self.model, self.spec, self.hp = model, spec, hp
        self.extra = nn.ModuleDict()

    def parameters(self) -> list[nn.Parameter]:
        """What the optimiser updates: the network and the trainable extras."""
        return list(self.model.parameters()) + [p for p in self.extra.parameters() if p.requires_grad]

    def train(self) -> None:
        self.model.train()
        self.extra.train()

    def after_step(self, ctx: "StepContext") -> None:
        """Called after each optimiser step (e.g. to update an EMA teacher)."""

    @classmethod
    def hyperparameters(cls, dataset: str, given: dict[str, Any]) -> dict[str, Any]:
        """Defaults, then per-dataset defaults, then ``given`` (unknown keys rejected).
        A dataset of a dimension the method does not support is rejected here,
        when the config is resolved, before any data is read."""
        from ..data.specs import get_spec
        from ..errors import ConfigError
        dim = get_spec(dataset).dim
        if dim not in cls.dims:
            raise ConfigError(f"method.name: {cls.name} supports {'/'.join(f'{d}D' for d in cls.dims)} "
                              f"datasets only; {dataset} is {dim}D")
        hp = {**cls.defaults, **cls.dataset_defaults.get(dataset, {})}
        for k, v in given.items():
            if k not in hp:
                raise ConfigError(f"method.{k}: not a hyperparameter of {cls.name!r}; "
                                  f"valid keys: {sorted(hp)}")
            hp[k] = v
        cls.check(hp)
        return hp

    @classmethod
    def check(cls, hp: dict[str, Any]) -> None:
        """Raise ConfigError on an invalid hyperparameter value."""

    def training_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        """Run one iteration's forward/backward; return named values to log."""
        raise NotImplementedError

    # for methods whose loss is a weighted sum of named terms
    def weights(self) -> dict[str, float]:
        """Linear weight of every named loss term in the total loss."""
        raise NotImplementedError

    def combine(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        w = self.weights()
        return sum(w[k] * v for k, v in terms.items())

    def log_row(self, terms: dict[str, torch.Tensor], sup_ce: torch.Tensor, sup_dice: torch.Tensor,
                conf: torch.Tensor, tau: float) -> dict[str, float]:
        """Every term, the weighted total, the supervised CE and Dice, and the
        share of unlabeled pixels whose teacher confidence reaches ``tau``."""
        logs = {k: v.item() for k, v in terms.items()}
        w = self.weights()
        logs["loss"] = sum(w[k] * v for k, v in logs.items())
        logs["sup_ce"], logs["sup_dice"] = sup_ce.item(), sup_dice.item()
        logs["mask_ratio"] = (conf >= tau).float().mean().item()
        return logs
