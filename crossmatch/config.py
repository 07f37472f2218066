"""Experiment configuration: defaults, per-dataset presets, validation, ids.

An experiment config is YAML with four sections. Every key, its default and
its meaning is in ``DEFAULTS`` below (docs/configuration.md's table is
generated from the same text); method hyperparameters are declared in
``crossmatch.methods.catalog``.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from .choices import DROPOUT_TYPES, INTERPOLATIONS, LEGACY_AMP, PRECISIONS, UNLABELED_VIEWS, UPSAMPLE_MODES
from .data.specs import get_spec
from .data.splits import MISSING_POLICIES, SPLIT_ROLES
from .errors import ConfigError
from .methods.catalog import METHODS, get_method

# key: (default, help). None as default means "from the dataset spec".
DEFAULTS: dict[str, dict[str, tuple[Any, str]]] = {
    "dataset": {
        "name": ("acdc", "dataset: acdc | la | pancreas | isic"),
        "raw": ("../shared/data/ACDC", "raw data folder read by `crossmatch preprocess`"),
        "root": ("results/data/acdc", "preprocessed root written by `crossmatch preprocess`"),
        "labeled": (3, "labeled count of the standard lists (acdc 1/3/7/14 patients, la 4/8/16 cases, "
                       "default 8; pancreas 3/6/12 cases, default 6; isic 5/10/20 percent of the "
                       "training images, default 10); fully_supervised uses all"),
        "missing_cases": ("error", "cases named in a list but absent: error | subset (drop them)"),
        "splits": ({}, "optional list files replacing the standard ones, by role: "
                       "labeled, unlabeled, val, test, train (the full training list)"),
        "split_dir": ("", "folder of split lists laid out as crossmatch/splits/<name> "
                          "(empty: the shipped standard lists)"),
    },
    "model": {
        "width": (16, "channels of the first stage, doubled per stage (2D UNet 16-256, 3D V-Net 16-256, "
                       "the reference networks); smaller only for quick checks (the synthetic default: 8)"),
        "dropout_type": ("dropout", "feature perturbation: dropout | alpha | feature_alpha"),
        "fp_gap": (0.5, "weak/strong feature dropout p = 0.5 -/+ gap/2"),
        "stack_streams": (True, "decode perturbed streams in one stacked batch (false: loop)"),
        "upsample": ("bilinear", "2D UNet decoder upsampling: bilinear (1x1 conv + bilinear x2, the network "
                                 "the SSL4MIS/UniMatch/CrossMatch code trains) | transpose (ConvTranspose2d, "
                                 "not the references' network)"),
        "decoder_dropout": (0.5, "3D V-Net: Dropout3d p on the last decoder stage in plain training passes, "
                                 "as UA-MT / CrossMatch-LA (0: off, as runs without this key)"),
    },
    "train": {
        "iterations": (30000, "training iterations"),
        "batch_size": (12, "labeled batch size (unlabeled and mix batches are the same size)"),
        "crop": (None, "training size: 2D resize / 3D random crop (default: the dataset's)"),
        "interpolation": ("linear", "2D weak view: the image's rotation and resize, linear | nearest "
                                    "(order 0, as the ACDC reference codes; ACDC's default); labels are "
                                    "always nearest"),
        "unlabeled_views": ("float", "2D unlabeled views: float | pil (the 2D reference codes' 8-bit PIL "
                                     "views: the weak view floored to 1/255, brightness and contrast in a "
                                     "random order by PIL's ImageEnhance, PIL's GaussianBlur, every result "
                                     "8-bit; departures 4-6 of docs/fidelity.md; methods without strong "
                                     "views see the floored weak view)"),
        "optimizer": ("sgd", "sgd | adamw"),
        "lr": (0.01, "base learning rate"),
        "momentum": (0.9, "SGD momentum"),
        "nesterov": (True, "SGD with Nesterov momentum (as the CrossMatch reference code)"),
        "weight_decay": (1e-4, "weight decay"),
        "poly_power": (0.9, "poly schedule: lr * (1 - it / poly_iterations) ** power"),
        "poly_iterations": (None, "length of the poly schedule (default: iterations)"),
        "seed": (0, "seed of weights, sampling, augmentation and dropout (sampling and weak views: see data_seed)"),
        "data_seed": (None, "seed of the data stream alone: which cases each batch draws, in which order, "
                            "and their weak views and crops (default: train.seed; strong views, CutMix "
                            "boxes, dropout and weights stay with train.seed). One value for every seed "
                            "gives the protocol of the reference codes, whose seeds share one data order"),
        "val_every": (200, "validate every N iterations (0: never; best = final)"),
        "ckpt_every": (500, "write the resumable checkpoint every N iterations"),
        "snapshots": (True, "keep the weights of every validation point (checkpoints/snapshots/) for the "
                            "protocol analysis (`crossmatch protocols`); false saves disk"),
        "log_every": (10, "flush the CSV log every N iterations"),
        "num_workers": (1, "data loader worker processes (0: main process)"),
        "device": ("auto", "auto (cuda if available) | cpu | cuda | cuda:N"),
        "precision": ("auto", "autocast precision: auto (CUDA: bf16 where the GPU supports it, else fp16 with "
                              "the gradient scaler; CPU: fp32) | fp32 | bf16 (CPU or CUDA) | fp16 (CUDA); "
                              "the run's config.yaml records what ran (train_precision)"),
        "threads": (0, "torch CPU threads (0: torch's default)"),
        "tune_allocator": (True, "on CPU, keep freed memory in glibc's heap (no mmap, no trim): "
                                 "~1.7x faster steps, see crossmatch/runtime.py"),
    },
    "eval": {
        "stride": (None, "3D sliding-window stride for the test set (default: the dataset's, "
                         "at most the patch = train.crop)"),
        "val_stride": (None, "3D stride during validation (default: half the patch, for speed)"),
        "val_cases": (0, "validate on the first N validation cases only (0: all)"),
        "precision": ("train", "autocast precision of validation and test inference: train (the run's "
                               "train.precision on the evaluating device) | auto | fp32 | bf16 | fp16"),
        "window_batch": (4, "3D: sliding windows per forward pass"),
        "interpolation": ("linear", "2D: slices resized to the training size and back, linear (probabilities "
                                    "resized back, argmax at full size) | nearest (the SSL4MIS/CrossMatch "
                                    "test.py: order-0 zoom of the slice and of the label map)"),
    },
}

SECTIONS = (*DEFAULTS, "method")

# Train keys that change what a run learns, not only its budget: the experiment
# id spells them where they differ from the dataset's default, so two settings
# never share a run folder (budget keys are one per results folder and dataset).
SPELLED_TRAIN = ("interpolation", "unlabeled_views", "data_seed", "precision")


def default_of(section: str, key: str, dataset: str) -> Any:
    """The value ``section.key`` takes when no config sets it: the dataset's
    preset, else the global default."""
    return get_spec(dataset).presets.get(section, {}).get(key, DEFAULTS[section][key][0])


def _check_type(key: str, value: Any, default: Any) -> None:
    if default is None or value is None or key == "dataset.labeled" and value == "all":
        return
    ok = isinstance(value, type(default))
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok:
        raise ConfigError(f"{key}: expected {type(default).__name__}, got {value!r}")


# The allowed interval of every numeric key, checked when a config resolves (so
# a dry run of the workflow catches it): "[" / "]" closed, "(" / ")" open.
RANGES: dict[str, str] = {
    "train.iterations": "[1, inf)", "train.batch_size": "[1, inf)", "train.ckpt_every": "[1, inf)",
    "train.log_every": "[1, inf)", "train.lr": "(0, inf)", "train.momentum": "[0, 1)",
    "train.weight_decay": "[0, inf)", "train.poly_power": "[0, inf)", "train.seed": "[0, inf)",
    "train.data_seed": "[0, inf)", "train.val_every": "[0, inf)", "train.num_workers": "[0, inf)",
    "train.threads": "[0, inf)", "eval.val_cases": "[0, inf)", "eval.window_batch": "[1, inf)",
    "model.width": "[1, inf)", "model.fp_gap": "[0, 1)", "model.decoder_dropout": "[0, 1)",
}
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def _check_ranges(cfg: dict[str, Any]) -> None:
    for dotted, interval in RANGES.items():
        section, key = dotted.split(".")
        value = cfg[section][key]
        low, high = (float(v) for v in interval[1:-1].split(","))
        if value is None:
            continue
        ok = (value > low if interval[0] == "(" else value >= low) and \
             (value < high if interval[-1] == ")" else value <= high)
        if not ok:
            raise ConfigError(f"{dotted} must be in {interval}, got {value!r}")


def default(section: str, key: str) -> Any:
    """The default of ``section.key`` (its one home: ``DEFAULTS``)."""
    return copy.deepcopy(DEFAULTS[section][key][0])


def migrate(raw: dict[str, Any]) -> None:
    """Configs written before ``train.precision`` said ``train.amp``: true was
    fp16 autocast on CUDA and fp32 on CPU (now ``auto``, with fp16 on CUDA
    kept as it trained), false fp32."""
    t = raw.get("train")
    if isinstance(t, dict) and "amp" in t:
        amp = t.pop("amp")
        t.setdefault("precision", LEGACY_AMP if amp else "fp32")


def resolve(raw: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults, check every key and value, return the full config.

    Raises ConfigError naming the offending key (``section.key``) and the
    valid choices.
    """
    raw = copy.deepcopy(raw or {})
    migrate(raw)
    unknown = set(raw) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown config section(s) {sorted(unknown)}; valid: {list(SECTIONS)}")
    cfg: dict[str, Any] = {}
    name = (raw.get("dataset") or {}).get("name", DEFAULTS["dataset"]["name"][0])
    try:
        spec = get_spec(name)
    except ValueError as e:
        raise ConfigError(f"dataset.name: {e}") from None
    for section, keys in DEFAULTS.items():
        given = raw.get(section) or {}
        if not isinstance(given, dict):
            raise ConfigError(f"{section}: expected a mapping, got {given!r}")
        bad = set(given) - set(keys)
        if bad:
            raise ConfigError(f"{section}.{sorted(bad)[0]}: unknown key; valid keys: {sorted(keys)}")
        cfg[section] = {}
        for key, (default, _) in keys.items():
            value = given.get(key, default_of(section, key, name))
            _check_type(f"{section}.{key}", value, default)
            cfg[section][key] = value
    if "root" not in (raw.get("dataset") or {}):
        cfg["dataset"]["root"] = f"results/data/{name}"
    if "raw" not in (raw.get("dataset") or {}):
        cfg["dataset"]["raw"] = f"../shared/data/{name.upper()}"
    method_raw = dict(raw.get("method") or {})
    mname = method_raw.pop("name", "crossmatch")
    try:
        method = get_method(mname)
    except ValueError as e:
        raise ConfigError(f"method.name: {e}") from None
    for key, value in method_raw.items():
        if key in method.defaults:
            _check_type(f"method.{key}", value, method.defaults[key])
    cfg["method"] = {"name": mname, **method.hyperparameters(name, method_raw)}
    if method.labels_all:
        cfg["dataset"]["labeled"] = "all"  # the upper bound labels every training case

    t, d = cfg["train"], cfg["dataset"]
    crop = t["crop"] or spec.crop
    if not isinstance(crop, (list, tuple)) or len(crop) != spec.dim \
            or any(isinstance(c, bool) or not isinstance(c, int) or c < 16 or c % 16 for c in crop):
        raise ConfigError(f"train.crop: need {spec.dim} sizes divisible by 16, e.g. {list(spec.crop)}, got {crop!r}")
    t["crop"] = list(crop)
    t["poly_iterations"] = t["poly_iterations"] or t["iterations"]
    if t["precision"] not in PRECISIONS + (LEGACY_AMP,):
        raise ConfigError(f"train.precision must be one of {list(PRECISIONS)}, got {t['precision']!r}")
    if cfg["eval"]["precision"] not in ("train", *PRECISIONS):
        raise ConfigError(f"eval.precision must be one of {['train', *PRECISIONS]}, got {cfg['eval']['precision']!r}")
    if t["optimizer"] not in ("sgd", "adamw"):
        raise ConfigError(f"train.optimizer must be sgd or adamw, got {t['optimizer']!r}")
    if t["data_seed"] is not None and (isinstance(t["data_seed"], bool) or not isinstance(t["data_seed"], int)):
        raise ConfigError(f"train.data_seed must be an integer >= 0 or null (train.seed), got {t['data_seed']!r}")
    _check_ranges(cfg)
    if not isinstance(t["device"], str) or not DEVICE.fullmatch(t["device"]):
        raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N, got {t['device']!r}")
    if t["data_seed"] == t["seed"]:
        t["data_seed"] = None   # the same data stream: one spelling, so one run folder
    if t["poly_iterations"] < t["iterations"]:
        raise ConfigError("train.poly_iterations must be >= train.iterations")
    if d["labeled"] != "all" and d["labeled"] not in spec.labeled_counts and "labeled" not in d["splits"]:
        raise ConfigError(f"dataset.labeled: {d['labeled']} has no split lists for {name}; "
                          f"choose one of {list(spec.labeled_counts)}")
    if d["missing_cases"] not in MISSING_POLICIES:
        raise ConfigError(f"dataset.missing_cases must be one of {MISSING_POLICIES}, got {d['missing_cases']!r}")
    bad_roles = set(d["splits"]) - set(SPLIT_ROLES)
    if bad_roles:
        raise ConfigError(f"dataset.splits.{sorted(bad_roles)[0]}: unknown role; valid: {list(SPLIT_ROLES)}")
    if cfg["model"]["dropout_type"] not in DROPOUT_TYPES:
        raise ConfigError(f"model.dropout_type must be one of {DROPOUT_TYPES}, "
                          f"got {cfg['model']['dropout_type']!r}")
    for section in ("train", "eval"):
        if cfg[section]["interpolation"] not in INTERPOLATIONS:
            raise ConfigError(f"{section}.interpolation must be one of {list(INTERPOLATIONS)}, "
                              f"got {cfg[section]['interpolation']!r}")
    if t["unlabeled_views"] not in UNLABELED_VIEWS:
        raise ConfigError(f"train.unlabeled_views must be one of {list(UNLABELED_VIEWS)}, "
                          f"got {t['unlabeled_views']!r}")
    if t["unlabeled_views"] == "pil" and (spec.dim != 2 or spec.intensity_range is None
                                           or spec.in_channels not in (1, 3)):
        raise ConfigError(f"train.unlabeled_views: pil needs 2D images of 1 or 3 channels in a fixed "
                          f"intensity range (ACDC, ISIC); {name} has none: use float")
    if cfg["model"]["upsample"] not in UPSAMPLE_MODES:
        raise ConfigError(f"model.upsample must be one of {UPSAMPLE_MODES}, got {cfg['model']['upsample']!r}")
    if spec.dim == 3:  # the sliding window is the training crop
        e, crop = cfg["eval"], t["crop"]
        e["stride"] = list(e["stride"] or [min(s, c) for s, c in zip(spec.eval_stride, crop)])
        e["val_stride"] = list(e["val_stride"] or [c // 2 for c in crop])
        for key in ("stride", "val_stride"):
            if len(e[key]) != 3 or not all(0 < s <= c for s, c in zip(e[key], crop)):
                raise ConfigError(f"eval.{key}: need 3 strides in [1, train.crop={crop}], got {e[key]}")
    return cfg


def load(path: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a YAML config (or start empty), apply ``section.key=value``
    overrides (values parsed as YAML), and resolve it."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        section, sub = key.split(".", 1)
        raw.setdefault(section, {})
        if raw[section] is None:
            raw[section] = {}
        raw[section][sub] = yaml.safe_load(value)
    return resolve(raw)


def experiment_id(cfg: dict[str, Any]) -> str:
    """``<dataset>/<method>/l<labeled>/<settings>/s<seed>``, e.g.
    ``acdc/crossmatch/l3/tau0.95-eta0.3/s0``: the path says what it holds.
    Settings spell the method's id keys, every non-default model or method
    option and every non-default switch of ``SPELLED_TRAIN``."""
    m = cfg["method"]
    method = get_method(m["name"])
    base = {**method.defaults, **method.dataset_defaults.get(cfg["dataset"]["name"], {})}
    parts = [f"{k}{m[k]}" for k in method.id_keys]
    parts += [f"{k}{m[k]}" for k in base
              if k not in method.id_keys and k not in method.unspelled and m[k] != base[k]]
    parts += [f"{k}{v}" for k, v in cfg["model"].items() if v != DEFAULTS["model"][k][0]]
    t = cfg["train"]
    same = {k: {default_of("train", k, cfg["dataset"]["name"])} for k in SPELLED_TRAIN}
    same["data_seed"].add(t["seed"])   # null means train.seed: the same run
    parts += [f"{k}{t[k]}" for k in SPELLED_TRAIN if t[k] not in same[k]]
    settings = "-".join(parts) or "default"
    return f"{cfg['dataset']['name']}/{m['name']}/l{cfg['dataset']['labeled']}/{settings}/s{cfg['train']['seed']}"


def describe() -> str:
    """Markdown table of every key with its default and meaning."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for section, keys in DEFAULTS.items():
        for key, (default, help_) in keys.items():
            text = help_.replace("|", "\\|")  # a pipe would end the Markdown cell
            if f"{section}.{key}" in RANGES:
                text += f"; allowed {RANGES[f'{section}.{key}']}"
            lines.append(f"| `{section}.{key}` | `{default}` | {text} |")
    for name, cls in METHODS.items():
        for key, default in cls.defaults.items():
            extra = {d: v[key] for d, v in cls.dataset_defaults.items() if key in v}
            note = f" (per dataset: {extra})" if extra else ""
            lines.append(f"| `method.{key}` ({name}) | `{default}`{note} | see `crossmatch/methods/catalog.py` |")
    return "\n".join(lines)
