"""Parity with the public CrossMatch reference code (../shared/reference/).

Same weights and inputs on both sides, on the CPU: the networks (weights
mapped by ``crossmatch.models.reference``), the feature-perturbation streams
(equal seeds give equal dropout masks), the Dice losses, and one whole ACDC
CrossMatch step for ACDC and for LA, for which the reference's own
``train_cross_match.py`` runs its first iteration on our batch (its CUDA, distributed, data-loading and
logging calls replaced by stand-ins; its step code untouched). The
reference is imported and run, never copied. Every test skips where the
reference is absent (a fresh clone); CI has it.
"""
from __future__ import annotations

import contextlib
import copy
import runpy
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from crossmatch.data.specs import get_spec
from crossmatch.losses import dice_loss, masked_dice, supervised_loss
from crossmatch.methods import get_method
from crossmatch.methods.base import StepContext
from crossmatch.models import build_model
from crossmatch.models.reference import load_reference_state

from conftest import needs_reference


@contextlib.contextmanager
def reference_imports(folder: Path, **stubs: types.ModuleType):
    """Import the reference's modules from ``folder`` (its imports are relative
    to it), with ``stubs`` in place of some of its modules; forget them after."""
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.path.insert(0, str(folder))
    sys.modules.update(stubs)
    try:
        yield
    finally:
        sys.path.remove(str(folder))
        for name, mod in list(sys.modules.items()):  # the reference's modules (not torch's lazy imports)
            spec = getattr(mod, "__spec__", None)
            places = [getattr(spec, "origin", None) or "", *(getattr(spec, "submodule_search_locations", None) or [])]
            if isinstance(mod, types.ModuleType) and any(str(p).startswith(str(folder)) for p in places):
                del sys.modules[name]
        for name, mod in saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> float:
    """Largest difference relative to the largest magnitude (asserted <= tol)."""
    d = float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
    assert d <= tol, d
    return d


# ------------------------------------------------------------------ networks
def test_unet_and_perturbation_streams_equal_the_reference():
    acdc = needs_reference("ACDC")
    with reference_imports(acdc):
        from model.unet import UNet
        torch.manual_seed(0)
        ref = UNet(in_chns=1, class_num=4)
    ours = build_model(2, 1, 4)  # default: the reference's network
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters()) == 1813764
    load_reference_state(ours, ref.state_dict())
    x = torch.rand(4, 1, 32, 32)
    for train in (False, True):  # eval: running statistics; train: batch statistics + encoder dropout
        ref.train(train)
        ours.train(train)
        with torch.no_grad():
            torch.manual_seed(1)
            a = ref(x)
            torch.manual_seed(1)
            b = ours(x)
            close(b, a, 1e-6)
            # need_fp: [x; u] -> x, u, weak(u), strong(u); equal seeds give equal masks
            torch.manual_seed(2)
            a = ref(x, need_fp=True)
            torch.manual_seed(2)
            b = ours(x, need_fp=True)
        assert len(a) == len(b) == 4
        for sa, sb in zip(a, b):
            close(sb, sa, 1e-6)
        # the streams really are perturbed (and differently): not a trivially equal pair
        assert not torch.allclose(b[1], b[2]) and not torch.allclose(b[2], b[3])


def test_unet_transpose_is_not_the_reference():
    acdc = needs_reference("ACDC")
    with reference_imports(acdc):
        from model.unet import UNet
        ref = UNet(in_chns=1, class_num=4)
    with pytest.raises(ValueError, match="bilinear"):
        load_reference_state(build_model(2, 1, 4, upsample="transpose"), ref.state_dict())


def test_vnet_and_perturbation_streams_equal_the_reference():
    la = needs_reference("LA/code")
    with reference_imports(la):
        from networks.vnet import VNet
        torch.manual_seed(0)
        ref = VNet(n_channels=1, n_classes=2, normalization="batchnorm", has_dropout=True)
    ours = build_model(3, 1, 2, decoder_dropout=0.5)
    load_reference_state(ours, ref.state_dict())
    x = torch.randn(2, 1, 32, 32, 16)
    for train in (False, True):
        ref.train(train)
        ours.train(train)
        with torch.no_grad():
            torch.manual_seed(3)
            a = ref(x)  # plain pass: bottleneck and last-stage decoder dropout in training
            torch.manual_seed(3)
            close(ours(x), a, 1e-5)
            torch.manual_seed(4)
            a = ref(x, need_fp=True)  # streams decoded with no_drop=True
            torch.manual_seed(4)
            b = ours(x, need_fp=True)
        for sa, sb in zip(a, b):
            close(sb, sa, 1e-5)


# -------------------------------------------------------------------- losses
def test_dice_losses_equal_the_reference():
    g = torch.Generator().manual_seed(0)
    acdc, la = needs_reference("ACDC"), needs_reference("LA/code")
    logits = torch.randn(3, 4, 16, 16, generator=g)
    target = torch.randint(0, 4, (3, 16, 16), generator=g)
    conf = torch.rand(3, 16, 16, generator=g)
    with reference_imports(acdc):
        from util.utils import DiceLoss
        crit = DiceLoss(n_classes=4)
        probs = logits.softmax(1)
        ref_masked = crit(probs, target.unsqueeze(1).float(), ignore=(conf < 0.6).float())
        ref_plain = crit(probs, target.unsqueeze(1).float())
    acdc_spec = get_spec("acdc")
    kw = dict(from_class=acdc_spec.dice_from_class, smooth=acdc_spec.dice_smooth)
    close(masked_dice(logits, target, conf, 0.6, **kw), ref_masked, 1e-6)
    ce, d = supervised_loss(logits, target, **kw)
    close(d, ref_plain, 1e-6)
    close(ce, nn.functional.cross_entropy(logits, target), 1e-7)
    # LA (3D, 2 classes): the reference's dice_loss on the foreground probability
    logits3 = torch.randn(2, 2, 8, 8, 6, generator=g)
    target3 = torch.randint(0, 2, (2, 8, 8, 6), generator=g)
    conf3 = torch.rand(2, 8, 8, 6, generator=g)
    with reference_imports(la):
        from utils.losses import dice_loss as ref_dice
        ref3 = ref_dice(logits3.softmax(1)[:, 1], target3 == 1, ignore=(conf3 < 0.6).float())
    la_spec = get_spec("la")
    close(masked_dice(logits3, target3, conf3, 0.6, from_class=la_spec.dice_from_class,
                      smooth=la_spec.dice_smooth), ref3, 1e-6)
    assert 0 < float(ref3) < 1 and dice_loss(logits3.softmax(1), target3).item() > 0


# ------------------------------------------------------- one CrossMatch step
class _Stop(Exception):
    """Raised by the stand-in writer once the reference has logged its step."""


def _batch(shape: tuple[int, ...], n_classes: int, n: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """A fixed batch of every stream: images ``n x 1 x shape``, labels, CutMix boxes."""
    g = torch.Generator().manual_seed(seed)
    img = lambda: torch.rand(n, 1, *shape, generator=g)  # noqa: E731
    ones = (1,) * len(shape)
    box = lambda: (torch.rand(n, *ones, generator=g) > 0.3) & (torch.rand(n, *shape, generator=g) > 0.5)  # noqa: E731
    return {"x": img(), "y": torch.randint(0, n_classes, (n, *shape), generator=g), "u": img(), "s1": img(),
            "s2": img(), "box1": box(), "box2": box(), "u_mix": img(), "s1_mix": img(), "s2_mix": img()}


def _module(name: str, **attrs) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    return m


def run_reference_step(folder: Path, script: str, argv: list[str], batch: dict, stubs: dict,
                       last_tag: str, monkeypatch) -> dict:
    """Run the first iteration of a reference training ``script`` on ``batch``:
    returns its initial weights, the torch RNG state its step starts from, the
    loss values it logs, its gradients and its network after the step. Its
    CUDA, distributed, data-loading and logging calls get single-process CPU
    stand-ins; the step itself runs as written."""
    got: dict = {"scalars": {}}

    class Writer:
        def __init__(self, *a, **k): pass

        def add_scalar(self, tag, value, step):
            got["scalars"][tag] = float(value.detach() if torch.is_tensor(value) else value)
            if tag == last_tag:  # the step's last log line
                raise _Stop

        def add_image(self, *a, **k): pass

    unlabeled_loaders = []

    class Loader:
        def __init__(self, dataset, sampler=None, **kw):
            self.dataset, self.sampler = dataset, sampler
            if dataset.mode == "train_u":
                unlabeled_loaders.append(self)

        def __len__(self):
            return 16

        def __iter__(self):
            b, f = batch, lambda t: t.clone().float()
            if self.dataset.mode == "train_l":
                yield b["x"].clone(), b["y"].clone()
            elif self is unlabeled_loaders[0]:
                yield b["u"].clone(), b["s1"].clone(), b["s2"].clone(), f(b["box1"]), f(b["box2"])
            else:  # the CutMix source loader is zipped last: the step starts right after this
                got["rng"] = torch.get_rng_state()
                yield b["u_mix"].clone(), b["s1_mix"].clone(), b["s2_mix"].clone(), f(b["box1"]), f(b["box2"])

    class Sampler:
        def __init__(self, *a, **k): pass

        def set_epoch(self, epoch): pass

    def capture(model):
        got["net"], got["init"] = model, {k: v.clone() for k, v in model.state_dict().items()}
        return model

    class DDP(nn.Module):  # one process: the network itself
        def __init__(self, module, **kw):
            super().__init__()
            self.module = capture(module)

        def forward(self, *a, **k):
            return self.module(*a, **k)

    def grads(cls):
        class Optimizer(cls):
            def step(self, closure=None):
                got["grads"] = [p.grad.clone() for p in self.param_groups[0]["params"]]
                return super().step(closure)
        return Optimizer

    def module_cuda(self, *a, **k):  # the LA script's `net = net.cuda()`: its network
        if isinstance(self, nn.Module) and "net" not in got and sum(1 for _ in self.parameters()):
            capture(self)
        return self

    stubs = {"torch.utils.tensorboard": _module("torch.utils.tensorboard", SummaryWriter=Writer),
             "tensorboardX": _module("tensorboardX", SummaryWriter=Writer), **stubs}
    monkeypatch.setattr(torch.utils.data, "DataLoader", Loader)
    monkeypatch.setattr(torch.utils.data.distributed, "DistributedSampler", Sampler)
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", DDP)
    monkeypatch.setattr(torch.nn.SyncBatchNorm, "convert_sync_batchnorm", staticmethod(lambda m, *a, **k: m))
    monkeypatch.setattr(torch.nn.Module, "cuda", module_cuda)
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(torch.distributed, "barrier", lambda *a, **k: None)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a, **k: 1)
    monkeypatch.setattr(torch.multiprocessing, "set_sharing_strategy", lambda *a: None)
    monkeypatch.setattr(torch.optim, "SGD", grads(torch.optim.SGD))
    monkeypatch.setattr(torch.optim, "AdamW", grads(torch.optim.AdamW))
    monkeypatch.setattr(sys, "argv", [script, *argv])
    torch.manual_seed(0)
    with reference_imports(folder, **stubs), pytest.raises(_Stop):
        runpy.run_path(str(folder / script), run_name="__main__")
    return got


def check_our_step(ref: dict, batch: dict, dataset: str, model: nn.Module, hp: dict, monkeypatch) -> dict:
    """Our CrossMatch step from the reference's initial weights and RNG state,
    on the same batch and strong views; checks the gradients and batch-norm
    statistics against the reference's and returns our logged values."""
    from crossmatch.data.augment import apply_cutmix
    load_reference_state(model, ref["init"])
    cls = get_method("crossmatch").load()
    method = cls(model, get_spec(dataset), cls.hyperparameters(dataset, hp))
    views = ([apply_cutmix(batch["s1"], batch["s1_mix"], batch["box1"]),
              apply_cutmix(batch["s2"], batch["s2_mix"], batch["box2"])], [batch["box1"], batch["box2"]])
    monkeypatch.setattr("crossmatch.methods.crossmatch.strong_views", lambda *a, **k: views)
    ctx = StepContext(iteration=0, gen=torch.Generator(),
                      backward=lambda loss: loss.backward(), autocast=contextlib.nullcontext)
    method.train()
    torch.set_rng_state(ref["rng"])
    logs = method.training_step({k: batch[k] for k in ("x", "y", "u", "u_mix")}, ctx)

    # the reference's gradients, in its parameters' order, put in our parameters' places
    names = [k for k, v in ref["net"].named_parameters()]
    probe = copy.deepcopy(model)
    load_reference_state(probe, {**ref["init"], **dict(zip(names, ref["grads"]))})
    theirs = {name: g.detach() for name, g in probe.named_parameters()}
    ours = dict(model.named_parameters())
    flat = lambda gs: torch.cat([g.flatten() for g in gs])  # noqa: E731
    a, b = flat(ours[n].grad for n in theirs), flat(theirs.values())
    assert float((a - b).norm() / b.norm()) < 1e-5
    # every weight tensor on its own scale (conv biases in front of batch norm have a
    # zero gradient in exact arithmetic, float noise here: left to the global check)
    errs = {n: float((ours[n].grad - g).abs().max() / g.abs().max()) for n, g in theirs.items() if g.dim() > 1}
    worst = max(errs, key=errs.get)
    assert errs[worst] < 1e-4, (worst, errs[worst])
    # batch-norm running statistics: both codes ran the same train-mode passes
    load_reference_state(probe, ref["net"].state_dict())
    for (n, x), y in zip(model.named_buffers(), probe.buffers()):
        assert torch.allclose(x.float(), y.float(), rtol=1e-5, atol=1e-6), n
    return logs


def kd_of(logs: dict, eta: float) -> float:
    tkd = np.mean([logs[k] for k in ("tkd_w_dw", "tkd_w_ds", "tkd_s_dw", "tkd_s_ds")])
    return (1 - eta) * tkd + eta * (logs["dkd_dw"] + logs["dkd_ds"]) / 2


@pytest.mark.slow
def test_one_acdc_crossmatch_step_equals_the_reference(tmp_path, monkeypatch):
    """With ``source_pass: train`` (the reference's CutMix-source passes) one
    step gives the reference's loss terms, gradients and batch-norm statistics."""
    acdc = needs_reference("ACDC")
    tau = 0.3  # at initialisation no pixel reaches 0.95: a lower threshold makes every term count
    batch = _batch((32, 32), 4)
    cfg = yaml.safe_load((acdc / "configs" / "acdc.yaml").read_text())
    cfg.update(conf_thresh=tau, batch_size=2, crop_size=32)
    (tmp_path / "acdc.yaml").write_text(yaml.safe_dump(cfg))

    class Dataset:
        def __init__(self, name, root, mode, size=None, id_path=None, nsample=None):
            self.mode, self.ids = mode, ["stand-in"] * 16

    stubs = {"dataset": _module("dataset"), "dataset.acdc": _module("dataset.acdc", ACDCDataset=Dataset),
             "util.dist_helper": _module("util.dist_helper", setup_distributed=lambda **k: (0, 1))}
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.chdir(acdc)
    ref = run_reference_step(acdc, "train_cross_match.py",
                             ["--config", str(tmp_path / "acdc.yaml"), "--labeled-id-path", "-",
                              "--unlabeled-id-path", "-", "--save-path", str(tmp_path / "ref")],
                             batch, stubs, "train/mask_ratio", monkeypatch)
    monkeypatch.undo()
    logs = check_our_step(ref, batch, "acdc", build_model(2, 1, 4), {"tau": tau, "source_pass": "train"},
                          monkeypatch)
    s = ref["scalars"]
    assert 0 < logs["mask_ratio"] < 1
    assert logs["mask_ratio"] == pytest.approx(s["train/mask_ratio"], abs=1e-7)
    assert logs["sup"] == pytest.approx(s["train/loss_x"], rel=1e-6)
    assert (logs["ip_s1"] + logs["ip_s2"]) / 2 == pytest.approx(s["train/loss_s"], rel=1e-6)
    assert kd_of(logs, 0.3) == pytest.approx(s["train/loss_kd"], rel=1e-6)
    assert logs["loss"] == pytest.approx(s["train/loss_all"], rel=1e-6)


@pytest.mark.slow
def test_one_la_crossmatch_step_equals_the_reference(tmp_path, monkeypatch):
    """The LA script (V-Net, AdamW, ramped threshold: its first iteration uses
    --conf_thresh as given) on a 32x32x16 batch, with ``source_pass: train``."""
    import logging
    import shutil
    la = needs_reference("LA/code")
    tau = 0.6
    batch = _batch((32, 32, 16), 2)

    class Dataset:
        def __init__(self, base_dir=None, mode=None, num=None, transform=None, id_path=None):
            self.mode = mode

        def __len__(self):
            return 16

    stubs = {"torchvision": _module("torchvision"),
             "torchvision.transforms": _module("torchvision.transforms", Compose=lambda ts: None),
             "torchvision.utils": _module("torchvision.utils", make_grid=lambda *a, **k: None),
             "dataloaders": _module("dataloaders"),
             "dataloaders.la_heart": _module("dataloaders.la_heart", LAHeart=Dataset, RandomCrop=lambda *a: None,
                                             RandomRotFlip=lambda *a: None, ToTensor=lambda *a: None),
             "test_util": _module("test_util", test_all_case=None)}
    stubs["torchvision"].transforms, stubs["torchvision"].utils = stubs["torchvision.transforms"], stubs["torchvision.utils"]
    work = tmp_path / "a" / "b"  # the script writes ../model/<exp>/ and archives "." into it
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(shutil, "copytree", lambda *a, **k: None)
    handlers = list(logging.getLogger().handlers)
    try:
        ref = run_reference_step(la, "train_cross_match.py",
                                 ["--conf_thresh", str(tau), "--label_num", "4", "--max_iterations", "100",
                                  "--optimizer", "AdamW", "--base_lr", "0.001", "--batch_size", "2"],
                                 batch, stubs, "loss/loss", monkeypatch)
    finally:
        logging.getLogger().handlers[:] = handlers
    monkeypatch.undo()
    logs = check_our_step(ref, batch, "la", build_model(3, 1, 2, decoder_dropout=0.5),
                          {"tau": tau, "source_pass": "train"}, monkeypatch)
    s = ref["scalars"]
    assert 0 < logs["mask_ratio"] < 1
    assert logs["sup"] == pytest.approx(s["loss/loss_x"], rel=1e-6)
    assert kd_of(logs, 0.3) == pytest.approx(s["loss/loss_u_kd"], rel=1e-6)
    assert logs["loss"] == pytest.approx(s["loss/loss"], rel=1e-6)


# ------------------------------------------------------- LA threshold ramp
def test_la_threshold_is_the_references_ramp():
    """LA by default: --conf_thresh 0.75 ramped over 17,000 iterations, times ln 2,
    each iteration using the value computed at the end of the previous one."""
    la = needs_reference("LA/code")
    from crossmatch.methods.crossmatch import reference_ramp
    hp = get_method("crossmatch").hyperparameters("la", {})
    assert (hp["tau"], hp["tau_schedule"], hp["ramp_length"]) == (0.75, "reference_ramp", 17000)
    with reference_imports(la):
        from utils.ramps import sigmoid_rampup
        assert reference_ramp(hp["tau"], 0, hp["ramp_length"]) == hp["tau"]  # the reference's first iteration
        for i in range(0, 20001, 997):
            # the reference's update at the end of iteration i, used by iteration i + 1
            conf_thresh = (hp["tau"] + (1 - hp["tau"]) * sigmoid_rampup(i, 17000)) * np.log(2)
            assert reference_ramp(hp["tau"], i + 1, hp["ramp_length"]) == pytest.approx(conf_thresh, rel=1e-12)


# ------------------------------------------------------ the data path, ACDC
class Draws:
    """A stand-in numpy Generator that returns queued integers (the same draw
    the reference makes with ``np.random.randint``)."""

    def __init__(self, *ints: int):
        self.ints = list(ints)

    def integers(self, lo, hi=None):
        v = self.ints.pop(0)
        assert (0 if hi is None else lo) <= v < (lo if hi is None else hi)
        return v


def test_weak_view_geometry_equals_the_reference_transforms(monkeypatch):
    from scipy.ndimage import zoom
    from crossmatch.data.augment import resize, rot_flip, rotate
    acdc = needs_reference("ACDC")
    rng = np.random.default_rng(0)
    img, lab = rng.random((40, 56)).astype(np.float32), rng.integers(0, 4, (40, 56)).astype(np.uint8)
    with reference_imports(acdc):
        from dataset import transform as ref
        for k in range(4):
            for axis in range(2):
                monkeypatch.setattr(np.random, "randint", lambda *a, q=[k, axis]: q.pop(0))
                ri, rl = ref.random_rot_flip(img, lab)
                oi, ol = rot_flip(img[None], lab, Draws(k, axis))
                assert np.array_equal(oi[0], ri) and np.array_equal(ol, rl)
        for angle in (-20, -7, 0, 13, 19):
            monkeypatch.setattr(np.random, "randint", lambda *a, v=angle: v)
            ri, rl = ref.random_rotate(img, lab)
            oi, ol = rotate(img[None], lab, Draws(angle), order=0)  # order 0: the reference's
            assert np.array_equal(oi[0], ri) and np.array_equal(ol, rl)
        monkeypatch.undo()
    # the reference's resize (dataset/acdc.py): zoom(x, (size / h, size / w), order=0), image and label
    oi, ol = resize(img[None], lab, (32, 32), order=0)
    assert np.array_equal(oi[0], zoom(img, (32 / 40, 32 / 56), order=0))
    assert np.array_equal(ol, zoom(lab, (32 / 40, 32 / 56), order=0))


def test_cutmix_boxes_follow_the_reference_distribution():
    """Box presence, area and aspect: our boxes against the reference's
    ``obtain_cutmix_box`` (2000 draws each, two-sample KS distance)."""
    import random
    from scipy.stats import ks_2samp
    from crossmatch.data.augment import cutmix_boxes
    acdc = needs_reference("ACDC")
    n, size = 2000, 64

    def stats(boxes):
        present = [b for b in boxes if b.any()]
        rows = np.array([b.any(1).sum() for b in present])
        cols = np.array([b.any(0).sum() for b in present])
        return len(present) / len(boxes), rows * cols / size ** 2, np.log(rows / cols)

    with reference_imports(acdc):
        from dataset.transform import obtain_cutmix_box
        random.seed(0)
        np.random.seed(0)
        ref = stats([obtain_cutmix_box(size, p=0.5).bool().numpy() for _ in range(n)])
    ours = stats(list(cutmix_boxes(n, (size, size), torch.Generator().manual_seed(0)).numpy()))
    assert abs(ours[0] - ref[0]) < 0.04  # p = 0.5
    for a, b in zip(ours[1:], ref[1:]):
        assert ks_2samp(a, b).statistic < 0.06


def test_brightness_contrast_and_blur_against_pil():
    """The reference's strong view works on 8-bit PIL images: ColorJitter's
    brightness and contrast are PIL's ImageEnhance, its blur PIL's
    GaussianBlur. Ours on the same image with the same factors: within 2.5 gray
    levels (8-bit rounding); the blur (an exact Gaussian, PIL's is three box
    blurs) within 8 levels at the borders, under 1 on average."""
    from PIL import Image, ImageEnhance, ImageFilter
    from scipy import ndimage
    from crossmatch.data.augment import _rand, gaussian_blur, strong_intensity
    rng = np.random.default_rng(0)
    smooth = ndimage.gaussian_filter(rng.random((64, 64)), 3)
    u8 = ((smooth - smooth.min()) / np.ptp(smooth) * 255).astype(np.uint8)
    x = torch.from_numpy(u8 / 255.0).float()[None]
    for seed in range(6):
        out = strong_intensity(x[None], torch.Generator().manual_seed(seed), (0.0, 1.0), p_jitter=1.0, p_blur=0.0)
        g = torch.Generator().manual_seed(seed)  # replay the draws: jitter/blur coins, brightness, contrast
        torch.rand(1, 2, generator=g)
        b, c = float(_rand(g, 1, 0.5, 1.5)), float(_rand(g, 1, 0.5, 1.5))
        pil = ImageEnhance.Contrast(ImageEnhance.Brightness(Image.fromarray(u8)).enhance(b)).enhance(c)
        assert np.abs(out[0, 0].numpy() * 255 - np.asarray(pil, float)).max() <= 2.5, (b, c)
    for sigma in (0.3, 1.0, 2.0):
        pil = np.asarray(Image.fromarray(u8).filter(ImageFilter.GaussianBlur(radius=sigma)), float)
        diff = np.abs(gaussian_blur(x, sigma)[0].numpy() * 255 - pil)
        assert diff.max() <= 8.0 and diff.mean() < 1.0, sigma
