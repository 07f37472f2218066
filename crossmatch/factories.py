"""What a run is built from, in one place for training, evaluation and the
benchmarks: the device, the seeds, the network, the optimiser and its
schedule, the splits."""
from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .choices import LEGACY_AMP
from .data.specs import DatasetSpec, get_spec
from .data.splits import Splits, resolve_splits
from .errors import ConfigError
from .models import build_model


def pick_device(name: str) -> torch.device:
    """The device ``name`` (``auto``: CUDA where there is one). On CUDA, cuDNN's
    autotuner is switched on: training and inference shapes are fixed here, so
    its kernels are timed once and the fastest kept."""
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name} requested but CUDA is not available; use auto or cpu")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return dev


@dataclass(frozen=True)
class Precision:
    """What a run computes in: ``name`` fp32 | bf16 | fp16 on ``device_type``."""
    name: str
    device_type: str

    @property
    def scaler(self) -> bool:
        """fp16 needs the gradient scaler (its range underflows small gradients)."""
        return self.name == "fp16"

    def autocast(self):
        if self.name == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.name == "bf16" else torch.float16
        return torch.autocast(self.device_type, dtype=dtype)


def pick_precision(name: str, device: torch.device) -> Precision:
    """``train.precision`` on ``device``. ``auto``: on CUDA bf16 where the GPU
    has it, else fp16; on CPU fp32 (bf16 only when asked, until its accuracy
    parity with fp32 is measured). ``LEGACY_AMP``: a migrated ``amp: true``."""
    cuda = device.type == "cuda"
    if name == "auto":
        name = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    elif name == LEGACY_AMP:
        name = "fp16" if cuda else "fp32"
    if name == "fp16" and not cuda:
        raise ConfigError("train.precision: fp16 needs CUDA (with its gradient scaler); on CPU use bf16 or fp32")
    if name == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.precision: this GPU has no bf16; use fp16 or auto")
    return Precision(name, device.type)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def memory_format(dim: int) -> torch.memory_format:
    """The networks' memory format: channels-last convolutions are faster with
    oneDNN on CPU (2D ~20 %; the V-Net's step 0.78x its contiguous time in
    fp32, 0.81x in bf16, docs/benchmarks.md) and take the tensor-core path on CUDA."""
    return torch.channels_last if dim == 2 else torch.channels_last_3d


def make_model(cfg: dict[str, Any], spec: DatasetSpec) -> torch.nn.Module:
    model = build_model(spec.dim, spec.in_channels, spec.n_classes, **cfg["model"])
    return model.to(memory_format=memory_format(spec.dim))


def make_optimizer(cfg: dict[str, Any], params) -> torch.optim.Optimizer:
    t = cfg["train"]
    if t["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=t["lr"], momentum=t["momentum"], weight_decay=t["weight_decay"],
                               nesterov=t["nesterov"])
    return torch.optim.AdamW(params, lr=t["lr"], weight_decay=t["weight_decay"])


def poly_lr(cfg: dict[str, Any], it: int) -> float:
    t = cfg["train"]
    return t["lr"] * (1 - it / t["poly_iterations"]) ** t["poly_power"]


def splits_for(cfg: dict[str, Any]) -> Splits:
    """The experiment's splits (one place decides them for training and evaluation)."""
    d = cfg["dataset"]
    return resolve_splits(get_spec(d["name"]), d["root"], d["labeled"], d["missing_cases"], d["splits"],
                          d.get("split_dir") or None)
