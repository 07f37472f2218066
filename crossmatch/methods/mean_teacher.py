"""What the mean-teacher methods share (UA-MT, SimCVD): the EMA teacher's
decay and update, the teacher's input noise, and the sigmoid ramp-up of
Laine & Aila that UA-MT's code (yulequan/UA-MT, ``code/utils/ramps.py``)
and the methods built on it use for consistency weights and thresholds.

The teacher stays in training mode, as in UA-MT's code (its ``ema_model``
is never put in eval mode): its dropout draws masks independent of the
student's, and its batch-norm layers use batch statistics.
"""
from __future__ import annotations

import copy
import math
from typing import Iterable

import torch
from torch import nn

from .base import Method


def sigmoid_rampup(iteration: float, length: float) -> float:
    """exp(-5 (1 - t)^2) with t = iteration / length clipped to [0, 1]; 1 when length is 0."""
    if length == 0:
        return 1.0
    t = min(max(iteration / length, 0.0), 1.0)
    return math.exp(-5 * (1 - t) ** 2)


def ema_decay(iteration: int, ceiling: float) -> float:
    """Mean teacher's decay after ``iteration + 1`` optimiser steps:
    min(1 - 1/(steps + 1), ceiling), so early teachers follow the student."""
    return min(1 - 1 / (iteration + 2), ceiling)


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen copy of ``student`` (its parameters follow by ``update_teacher``)."""
    return copy.deepcopy(student).requires_grad_(False)


def update_teacher(teacher: nn.Module, student_params: Iterable[nn.Parameter], decay: float) -> None:
    """teacher <- decay teacher + (1 - decay) student, parameters only (as UA-MT:
    the teacher's batch-norm statistics come from its own forward passes)."""
    with torch.no_grad():
        for t, s in zip(teacher.parameters(), student_params):
            t.mul_(decay).add_(s, alpha=1 - decay)


def input_noise(shape: torch.Size, std: float, clip: float, gen: torch.Generator) -> torch.Tensor:
    """UA-MT's teacher input noise clip(N(0, std), -clip, clip), drawn on the CPU
    from the step's generator (a resumed run draws the same noise)."""
    return (torch.randn(shape, generator=gen) * std).clamp(-clip, clip)


class TeacherMethod(Method):
    """A method with an EMA teacher of the network in ``extra["teacher"]``
    (checkpointed with the method's state; never optimised)."""

    def __init__(self, model: nn.Module, spec, hp: dict):
        super().__init__(model, spec, hp)
        self.extra["teacher"] = make_teacher(model)

    @property
    def teacher(self) -> nn.Module:
        return self.extra["teacher"]
