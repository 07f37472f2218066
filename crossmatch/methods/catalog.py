"""What every method declares, without torch: its hyperparameters and their
defaults (per dataset too), which of them the experiment id spells, the
dataset dimensions it supports, whether it reads unlabeled data, and the
checks on its values. Config resolution and the Snakemake workflow read
this module only; the implementation (``crossmatch/methods/<module>.py``, a
``Method`` subclass registered under the same name) is imported when a run
trains (``MethodInfo.load``).

A new method: its implementation file, and its ``MethodInfo`` here (or,
from your own package, ``declare(MethodInfo(...))``): docs/adding-a-method.md.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import ConfigError


def _no_check(hp: dict[str, Any]) -> None:
    pass


@dataclass(frozen=True)
class MethodInfo:
    name: str
    module: str                         # the module that implements it (imported by load())
    defaults: dict[str, Any] = field(default_factory=dict)
    dataset_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    id_keys: tuple[str, ...] = ()       # hyperparameters spelled in the experiment id (ablation axes)
    dims: tuple[int, ...] = (2, 3)      # dataset dimensions the method supports
    uses_unlabeled: bool = False
    labels_all: bool = False            # train on every training case labeled (upper bound)
    check: Callable[[dict[str, Any]], None] = _no_check  # raise ConfigError on a bad value
    runner: str = ""                    # a module whose train(cfg, run_dir) replaces our Trainer (other code)
    unspelled: tuple[str, ...] = ()     # hyperparameters that do not change the run (where code is read from)
    display: str = ""                   # the name figures and reports show (default: name)

    def hyperparameters(self, dataset: str, given: dict[str, Any]) -> dict[str, Any]:
        """Defaults, then per-dataset defaults, then ``given`` (unknown keys rejected).
        A dataset of a dimension the method does not support is rejected here,
        when the config is resolved, before any data is read."""
        from ..data.specs import get_spec
        dim = get_spec(dataset).dim
        if dim not in self.dims:
            raise ConfigError(f"method.name: {self.name} supports {'/'.join(f'{d}D' for d in self.dims)} "
                              f"datasets only; {dataset} is {dim}D")
        hp = {**self.defaults, **self.dataset_defaults.get(dataset, {})}
        for k, v in given.items():
            if k not in hp:
                raise ConfigError(f"method.{k}: not a hyperparameter of {self.name!r}; "
                                  f"valid keys: {sorted(hp)}")
            hp[k] = v
        self.check(hp)
        return hp

    def load(self) -> type:
        """The implementing ``Method`` class (imports torch)."""
        from .base import IMPLEMENTATIONS
        importlib.import_module(self.module)
        try:
            return IMPLEMENTATIONS[self.name]
        except KeyError:
            raise ConfigError(f"method {self.name!r}: {self.module} registers no implementation under "
                              "that name (a Method subclass with @register and name = "
                              f"{self.name!r})") from None


# ---------------------------------------------------------------- CrossMatch

LOSS_FORMS = ("reference", "paper")
TAU_SCHEDULES = ("constant", "reference_ramp")
SOURCE_PASSES = ("eval", "train")


def _one_of(hp: dict[str, Any], key: str, choices: tuple) -> None:
    if hp[key] not in choices:
        raise ConfigError(f"method.{key} must be one of {choices}, got {hp[key]!r}")


def _in_range(hp: dict[str, Any], key: str, low: float, high: float, closed_high: bool = False) -> None:
    if not (low <= hp[key] <= high if closed_high else low <= hp[key] < high):
        raise ConfigError(f"method.{key} must be in [{low:g}, {high:g}{']' if closed_high else ')'}, "
                          f"got {hp[key]}")


def _at_least(hp: dict[str, Any], keys: tuple[str, ...], low: float) -> None:
    for key in keys:
        if hp[key] < low:
            raise ConfigError(f"method.{key} must be >= {low:g}, got {hp[key]}")


def _check_crossmatch(hp: dict[str, Any]) -> None:
    _in_range(hp, "tau", 0.0, 1.0)
    _in_range(hp, "eta", 0.0, 1.0, closed_high=True)
    if hp["strong_views"] not in (1, 2):
        raise ConfigError(f"method.strong_views must be 1 or 2, got {hp['strong_views']}")
    _one_of(hp, "tau_schedule", TAU_SCHEDULES)
    _one_of(hp, "source_pass", SOURCE_PASSES)
    _one_of(hp, "loss_form", LOSS_FORMS)


CROSSMATCH = MethodInfo(
    name="crossmatch", display="CrossMatch", module="crossmatch.methods.crossmatch", uses_unlabeled=True,
    defaults={
        "tau": 0.95,            # confidence threshold of the pseudo-labels
        "eta": 0.3,             # kd = (1 - eta) tkd + eta dkd
        "w_kd": 0.5,            # weight of kd in the reference loss form (2D 0.5, 3D 1.0)
        "strong_views": 2,      # 1 or 2 strong image views
        "tkd": True,            # teacher -> perturbed-student distillation stream
        "dkd": True,            # dropout-to-dropout cross distillation stream
        "loss_form": "reference",  # reference: (sup + .25 s1 + .25 s2 + w_kd kd) / 2; paper: sup + ip + kd
        "split_backward": True,  # back-propagate pass 2 before pass 3 (same gradient, ~half the memory)
        "tau_schedule": "constant",  # constant | reference_ramp (LA reference code, ramp over ramp_length)
        "source_pass": "train",  # train (the reference's CutMix-source passes) | eval (see its module doc)
        "ramp_length": 17000,
    },
    # the 3D settings of the LA reference code (--conf_thresh 0.75, ramped; kd weight 1);
    # Pancreas-CT (3D, no reference) takes them too
    dataset_defaults={"la": {"tau": 0.75, "tau_schedule": "reference_ramp", "w_kd": 1.0},
                      "pancreas": {"tau": 0.75, "tau_schedule": "reference_ramp", "w_kd": 1.0}},
    id_keys=("tau", "eta"), check=_check_crossmatch)


# ---------------------------------------------------------------- UniMatch

def _check_unimatch(hp: dict[str, Any]) -> None:
    _in_range(hp, "tau", 0.0, 1.0)
    _in_range(hp, "fp_p", 0.0, 1.0)


UNIMATCH = MethodInfo(
    name="unimatch", display="UniMatch", module="crossmatch.methods.unimatch", uses_unlabeled=True,
    defaults={  # LiheYoung/UniMatch, more-scenarios/medical (configs/acdc.yaml, unimatch.py)
        "tau": 0.95,            # confidence threshold of the pseudo-labels (conf_thresh)
        "fp_p": 0.5,            # channel dropout of the FP stream (nn.Dropout2d(0.5); 3D: Dropout3d)
        "split_backward": True,  # back-propagate pass 2 before pass 3 (same gradient, less memory)
    },
    id_keys=("tau",), check=_check_unimatch)


# ---------------------------------------------------------------- SemSim

FEATURE_SCALES = (4, 8, 16)


def _check_semsim(hp: dict[str, Any]) -> None:
    _in_range(hp, "tau", 0.0, 1.0)
    _at_least(hp, ("w_u", "w_intra", "w_cross", "r"), 0)
    n = hp["n_regions"]
    if n < 1 or math.isqrt(n) ** 2 != n:
        raise ConfigError(f"method.n_regions must be a square (1, 4, 9, ...), got {n}")
    _one_of(hp, "feature_scale", FEATURE_SCALES)
    if hp["temperature"] <= 0:
        raise ConfigError(f"method.temperature must be > 0, got {hp['temperature']}")
    _in_range(hp, "fp_p", 0.0, 1.0)
    if hp["sfm_window"] < 1 or hp["sfm_heads"] < 1:
        raise ConfigError("method.sfm_window and method.sfm_heads must be >= 1")
    if hp["sfm_dim"] < 1 or hp["sfm_dim"] % hp["sfm_heads"]:
        raise ConfigError(f"method.sfm_dim must be a positive multiple of method.sfm_heads "
                          f"({hp['sfm_heads']}), got {hp['sfm_dim']}")


SEMSIM = MethodInfo(
    name="semsim", display="SemSim", module="crossmatch.methods.semsim", uses_unlabeled=True, dims=(2,),
    defaults={
        "tau": 0.95,            # confidence threshold of the pseudo-labels
        "w_u": 0.5,             # weight of L_u = .25 s1 + .25 s2 + .5 fp
        "w_intra": 0.25,        # weight of the intra-image (affinity) term
        "w_cross": 0.25,        # weight of the cross-image (prototype) term
        "r": 1000.0,            # uncertainty weight exp(-r KL) of L_cross
        "n_regions": 4,         # prototype sub-regions (a square: 4 = 2x2)
        "feature_scale": 8,     # SFM / affinity grid: 1/8 of the input (4, 8 or 16)
        "temperature": 0.1,     # of the cosine softmaxes (affinity and prototype query)
        "fp_p": 0.5,            # channel dropout of the FP stream (UniMatch: 0.5)
        "sfm_dim": 64,          # SFM token width
        "sfm_window": 4,        # SFM matching window (positions of the feature grid)
        "sfm_heads": 4,
        "split_backward": True,  # back-propagate pass 2 before pass 3 (same gradient, less memory)
    },
    id_keys=("tau",), check=_check_semsim)


# ---------------------------------------------------------------- SimCVD

def _check_simcvd(hp: dict[str, Any]) -> None:
    _in_range(hp, "ema_decay", 0.0, 1.0)
    _at_least(hp, ("alpha", "lambda", "beta", "gamma", "noise_std", "noise_clip"), 0)
    if hp["temperature"] <= 0:
        raise ConfigError(f"method.temperature must be > 0, got {hp['temperature']}")
    _in_range(hp, "boundary_fraction", 0.0, 1.0, closed_high=True)
    _at_least(hp, ("n_voxels",), 2)
    _at_least(hp, ("proj_dim",), 1)
    _at_least(hp, ("ramp_length",), 0)


SIMCVD = MethodInfo(
    name="simcvd", display="SimCVD", module="crossmatch.methods.simcvd", uses_unlabeled=True,
    dims=(3,),  # V-Net with a signed distance head
    defaults={
        "ema_decay": 0.999,       # ceiling of the teacher's EMA decay
        "alpha": 0.1,             # weight of the SDM regression (labeled)
        "lambda": 0.5,            # weight of the contrastive InfoNCE
        "beta": 0.1,              # weight of the pairwise structural distillation
        "gamma": 0.1,             # weight of the student-teacher consistency (unlabeled)
        "temperature": 0.5,       # InfoNCE temperature
        "n_voxels": 1024,         # voxels sampled per volume for contrast and distillation
        "boundary_fraction": 0.5,  # share of them drawn near the predicted boundary
        "proj_dim": 32,           # projection head output size
        "noise_std": 0.1,         # teacher input noise: clip(N(0, std), -clip, clip) (UA-MT)
        "noise_clip": 0.2,
        "ramp_length": 6000,      # iterations of the consistency ramp-up (UA-MT: 40 x 150); 0: none
    },
    check=_check_simcvd)


# ---------------------------------------------------------------- UA-MT

def _check_uamt(hp: dict[str, Any]) -> None:
    _in_range(hp, "ema_decay", 0.0, 1.0)
    _in_range(hp, "threshold_start", 0.0, 1.0, closed_high=True)
    _at_least(hp, ("consistency", "noise_std", "noise_clip", "ramp_length"), 0)
    if hp["passes"] < 2 or hp["passes"] % 2:
        raise ConfigError(f"method.passes must be an even number >= 2 (run as passes/2 batches of [u; u]), "
                          f"got {hp['passes']}")


# 3D: yulequan/UA-MT code/train_LA_meanteacher_certainty_unlabel.py;
# 2D: HiLab-git/SSL4MIS code/train_uncertainty_aware_mean_teacher_2D.py
_UAMT_3D = {"ramp_length": 6000}   # 40 epochs of 150 iterations
UAMT = MethodInfo(
    name="uamt", display="UA-MT", module="crossmatch.methods.uamt", uses_unlabeled=True,
    defaults={
        "ema_decay": 0.99,        # ceiling of the teacher's EMA decay
        "consistency": 0.1,       # weight of the uncertainty-masked consistency, after its ramp
        "ramp_length": 30000,     # iterations of the consistency ramp-up (2D: 200 epochs of 150)
        "passes": 8,              # T, stochastic teacher passes for the uncertainty
        "threshold_start": 0.75,  # entropy threshold (start + (1 - start) ramp) ln 2, ramped over the run
        "noise_std": 0.1,         # teacher input noise clip(N(0, std), -clip, clip)
        "noise_clip": 0.2,
    },
    dataset_defaults={"la": _UAMT_3D, "pancreas": _UAMT_3D},
    check=_check_uamt)


# ---------------------------------------------------------------- MC-Net

def _check_mcnet(hp: dict[str, Any]) -> None:
    _at_least(hp, ("lamda", "consistency", "ramp_length"), 0)
    if hp["temperature"] <= 0:
        raise ConfigError(f"method.temperature must be > 0, got {hp['temperature']}")


# ycwu1997/MC-Net code/train_mcnet_2d.py (2D) and code/train_mcnet_3d.py (3D)
_MCNET_3D = {"lamda": 0.5, "consistency": 1.0, "ramp_length": 6000}  # 40 epochs of 150
MCNET = MethodInfo(
    name="mcnet", display="MC-Net", module="crossmatch.methods.mcnet", uses_unlabeled=True,
    defaults={
        "lamda": 1.0,             # weight of the two decoders' Dice on labeled data ("lamda" in the code)
        "consistency": 0.1,       # weight of the mutual consistency, after its ramp
        "ramp_length": 30000,     # iterations of the consistency ramp-up (2D: 200 epochs of 150)
        "temperature": 0.1,       # sharpening temperature
    },
    dataset_defaults={"la": _MCNET_3D, "pancreas": _MCNET_3D},
    check=_check_mcnet)


# ---------------------------------------------------------------- BCP

def _check_bcp(hp: dict[str, Any]) -> None:
    for key in ("pretrain_fraction", "mask_ratio"):
        if not 0 < hp[key] < 1:
            raise ConfigError(f"method.{key} must be in (0, 1), got {hp[key]}")
    _in_range(hp, "ema_decay", 0.0, 1.0)
    _at_least(hp, ("u_weight",), 0)


# DeepMed-Lab-ECNU/BCP code/ACDC_BCP_train.py (2D) and code/LA_BCP_train.py (3D)
BCP = MethodInfo(
    name="bcp", display="BCP", module="crossmatch.methods.bcp", uses_unlabeled=True,
    defaults={
        "pretrain_fraction": 0.25,  # stage 1 (supervised copy-paste) share of train.iterations: 10k of 10k + 30k
        "u_weight": 0.5,            # weight of the pseudo-labeled region of a mixed image
        "mask_ratio": 0.6667,       # the pasted box's side, per axis, as a share of the crop (2/3)
        "ema_decay": 0.99,          # the teacher's EMA decay in stage 2 (constant)
        "largest_component": True,  # pseudo-labels keep each class's largest connected component
    },
    dataset_defaults={"la": {"pretrain_fraction": 0.12},         # 2k of 2k + 15k
                      "pancreas": {"pretrain_fraction": 0.23}},  # code/pancreas: 60 of 60 + 200 epochs
    check=_check_bcp)


# ---------------------------------------------------------------- the authors' code

def _check_authors(hp: dict[str, Any]) -> None:
    from ..authors import COMMITS
    if hp["commit"] not in COMMITS:
        raise ConfigError(f"method.commit must be one of {sorted(COMMITS)} (the pinned commits of "
                          f"AiEson/CrossMatch), got {hp['commit']!r}")
    _in_range(hp, "tau", 0.0, 1.0)
    _in_range(hp, "eta", 0.0, 1.0, closed_high=True)
    if not isinstance(hp["code"], str):
        raise ConfigError(f"method.code must be a folder path or empty, got {hp['code']!r}")


# AiEson/CrossMatch's own ACDC training script, run by crossmatch/authors/ (nothing of it copied here)
CROSSMATCH_AUTHORS = MethodInfo(
    name="crossmatch_authors", display="CrossMatch (authors' code)", module="", runner="crossmatch.authors.run", uses_unlabeled=True, dims=(2,),
    defaults={
        "commit": "d00de40",  # d00de40 (the paper's numbers were made with it) | 59772e0 (today's)
        "tau": 0.95,          # its conf_thresh
        "eta": 0.3,           # its --eta
        "code": "",           # a local checkout of that commit (checked file by file); empty: download it
    },
    id_keys=("commit",), unspelled=("code",), check=_check_authors)


# ---------------------------------------------------------------- supervised baselines

SUPERVISED = MethodInfo(name="supervised", display="Supervised", module="crossmatch.methods.supervised")
FULLY_SUPERVISED = MethodInfo(name="fully_supervised", display="Fully supervised",
                              module="crossmatch.methods.supervised", labels_all=True)

METHODS: dict[str, MethodInfo] = {m.name: m for m in (CROSSMATCH, UNIMATCH, SEMSIM, SIMCVD, UAMT, MCNET, BCP,
                                                       SUPERVISED, FULLY_SUPERVISED, CROSSMATCH_AUTHORS)}


def declare(info: MethodInfo) -> MethodInfo:
    """Add a method to the catalog (a method of your own package: ``module`` is
    its dotted path); see docs/adding-a-method.md."""
    if info.name in METHODS:
        raise ValueError(f"method {info.name!r} is declared already")
    METHODS[info.name] = info
    return info


def get_method(name: str) -> MethodInfo:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {sorted(METHODS)}") from None
