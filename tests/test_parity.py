"""Parity with the public CrossMatch reference code (../shared/reference/).

Same weights and inputs on both sides, on the CPU: the networks (weights
mapped by ``crossmatch.models.reference``), the feature-perturbation streams
(equal seeds give equal dropout masks), the Dice losses, and one whole ACDC
CrossMatch step, for which the reference's own ``train_cross_match.py`` runs
its first iteration on our batch (its CUDA, distributed, data-loading and
logging calls replaced by stand-ins; its step code untouched). The
reference is imported and run, never copied. Every test skips where the
reference is absent (a fresh clone); CI has it.
"""
from __future__ import annotations

import contextlib
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
from crossmatch.methods import StepContext, get_method
from crossmatch.models import build_model
from crossmatch.models.reference import load_reference_state

REPO = Path(__file__).resolve().parents[1]
REFERENCE = (REPO / ".." / "shared" / "reference" / "AiEson-CrossMatch").resolve()


def reference_dir(sub: str) -> Path:
    path = REFERENCE / sub
    if not path.is_dir():
        pytest.skip(f"reference code not found at {path} (CI has it; a fresh clone may not)")
    return path


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
    acdc = reference_dir("ACDC")
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
    acdc = reference_dir("ACDC")
    with reference_imports(acdc):
        from model.unet import UNet
        ref = UNet(in_chns=1, class_num=4)
    with pytest.raises(ValueError, match="bilinear"):
        load_reference_state(build_model(2, 1, 4, upsample="transpose"), ref.state_dict())


def test_vnet_and_perturbation_streams_equal_the_reference():
    la = reference_dir("LA/code")
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
    acdc, la = reference_dir("ACDC"), reference_dir("LA/code")
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


def _acdc_batch(n: int = 2, size: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img = lambda: torch.rand(n, 1, size, size, generator=g)  # noqa: E731
    box = lambda: (torch.rand(n, 1, 1, generator=g) > 0.3) & (torch.rand(n, size, size, generator=g) > 0.5)  # noqa: E731
    return {"x": img(), "y": torch.randint(0, 4, (n, size, size), generator=g), "u": img(), "s1": img(),
            "s2": img(), "box1": box(), "box2": box(), "u_mix": img(), "s1_mix": img(), "s2_mix": img()}


def run_reference_acdc_step(acdc: Path, batch: dict, tau: float, tmp: Path, monkeypatch) -> dict:
    """The first iteration of the reference's ``train_cross_match.py`` on ``batch``:
    its initial weights, the torch RNG state its step starts from, its logged
    loss values, its gradients and its network after the step."""
    got: dict = {"scalars": {}}
    cfg = yaml.safe_load((acdc / "configs" / "acdc.yaml").read_text())
    cfg.update(conf_thresh=tau, batch_size=len(batch["x"]), crop_size=batch["x"].shape[-1])
    (tmp / "acdc.yaml").write_text(yaml.safe_dump(cfg))

    class Writer:
        def __init__(self, *a, **k): pass

        def add_scalar(self, tag, value, step):
            got["scalars"][tag] = float(value)
            if tag == "train/mask_ratio":  # the step's last log line
                raise _Stop

    class Dataset:
        def __init__(self, name, root, mode, size=None, id_path=None, nsample=None):
            self.mode, self.ids = mode, ["stand-in"] * 16

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

    class DDP(nn.Module):  # one process: the network itself
        def __init__(self, module, **kw):
            super().__init__()
            self.module = module
            got["net"], got["init"] = module, {k: v.clone() for k, v in module.state_dict().items()}

        def forward(self, *a, **k):
            return self.module(*a, **k)

    class SGD(torch.optim.SGD):
        def step(self, closure=None):
            got["grads"] = {k: p.grad.clone() for k, p in got["net"].named_parameters()}
            return super().step(closure)

    def module(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        return m

    stubs = {"torch.utils.tensorboard": module("torch.utils.tensorboard", SummaryWriter=Writer),
             "dataset": module("dataset"), "dataset.acdc": module("dataset.acdc", ACDCDataset=Dataset),
             "util.dist_helper": module("util.dist_helper", setup_distributed=lambda **k: (0, 1))}
    monkeypatch.setattr(torch.utils.data, "DataLoader", Loader)
    monkeypatch.setattr(torch.utils.data.distributed, "DistributedSampler", Sampler)
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", DDP)
    monkeypatch.setattr(torch.nn.SyncBatchNorm, "convert_sync_batchnorm", staticmethod(lambda m, *a, **k: m))
    monkeypatch.setattr(torch.nn.Module, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(torch.distributed, "barrier", lambda *a, **k: None)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a, **k: 1)
    monkeypatch.setattr(torch.multiprocessing, "set_sharing_strategy", lambda *a: None)
    monkeypatch.setattr(torch.optim, "SGD", SGD)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.chdir(acdc)
    monkeypatch.setattr(sys, "argv", ["train_cross_match.py", "--config", str(tmp / "acdc.yaml"),
                                      "--labeled-id-path", "-", "--unlabeled-id-path", "-",
                                      "--save-path", str(tmp / "ref")])
    torch.manual_seed(0)
    with reference_imports(acdc, **stubs), pytest.raises(_Stop):
        runpy.run_path(str(acdc / "train_cross_match.py"), run_name="__main__")
    return got


def test_one_acdc_crossmatch_step_equals_the_reference(tmp_path, monkeypatch):
    """With ``source_pass: train`` (the reference's CutMix-source passes) one
    step gives the reference's loss terms, gradients and batch-norm statistics."""
    acdc = reference_dir("ACDC")
    tau = 0.3  # at initialisation no pixel reaches 0.95: a lower threshold makes every term count
    batch = _acdc_batch()
    ref = run_reference_acdc_step(acdc, batch, tau, tmp_path, monkeypatch)
    monkeypatch.undo()

    model = build_model(2, 1, 4)
    load_reference_state(model, ref["init"])
    cls = get_method("crossmatch")
    method = cls(model, get_spec("acdc"), cls.hyperparameters("acdc", {"tau": tau, "source_pass": "train"}))
    from crossmatch.data.augment import apply_cutmix
    views = ([apply_cutmix(batch["s1"], batch["s1_mix"], batch["box1"]),
              apply_cutmix(batch["s2"], batch["s2_mix"], batch["box2"])], [batch["box1"], batch["box2"]])
    monkeypatch.setattr("crossmatch.methods.crossmatch.strong_views", lambda *a, **k: views)
    ctx = StepContext(iteration=0, device=torch.device("cpu"), gen=torch.Generator(),
                      backward=lambda loss: loss.backward(), autocast=contextlib.nullcontext)
    method.train()
    torch.set_rng_state(ref["rng"])
    logs = method.training_step({k: batch[k] for k in ("x", "y", "u", "u_mix")}, ctx)

    s, eta = ref["scalars"], method.hp["eta"]
    assert 0 < logs["mask_ratio"] < 1
    assert logs["mask_ratio"] == pytest.approx(s["train/mask_ratio"], abs=1e-7)
    assert logs["sup"] == pytest.approx(s["train/loss_x"], rel=1e-6)
    assert (logs["ip_s1"] + logs["ip_s2"]) / 2 == pytest.approx(s["train/loss_s"], rel=1e-6)
    tkd = np.mean([logs[k] for k in ("tkd_w_dw", "tkd_w_ds", "tkd_s_dw", "tkd_s_ds")])
    kd = (1 - eta) * tkd + eta * (logs["dkd_dw"] + logs["dkd_ds"]) / 2
    assert kd == pytest.approx(s["train/loss_kd"], rel=1e-6)
    assert logs["loss"] == pytest.approx(s["train/loss_all"], rel=1e-6)

    ours = dict(model.named_parameters())
    probe = build_model(2, 1, 4)
    load_reference_state(probe, {**ref["init"], **ref["grads"]})  # the gradients, in the weights' places
    mapped = {name: g.detach() for name, g in probe.named_parameters()}
    flat = lambda gs: torch.cat([g.flatten() for g in gs])  # noqa: E731
    a, b = flat(ours[n].grad for n in mapped), flat(mapped.values())
    assert float((a - b).norm() / b.norm()) < 1e-5
    # every weight tensor on its own scale (conv biases in front of batch norm have a
    # zero gradient in exact arithmetic, float noise here: left to the global check)
    errs = {n: float((ours[n].grad - g).abs().max() / g.abs().max()) for n, g in mapped.items() if g.dim() > 1}
    worst = max(errs, key=errs.get)
    assert errs[worst] < 1e-4, (worst, errs[worst])
    # batch-norm running statistics: both codes ran the same train-mode passes
    probe_bn = build_model(2, 1, 4)
    load_reference_state(probe_bn, ref["net"].state_dict())
    for (n, a), b in zip(model.named_buffers(), probe_bn.buffers()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6), n


# ------------------------------------------------------- LA threshold ramp
def test_la_threshold_is_the_references_ramp():
    """LA by default: --conf_thresh 0.75 ramped over 17,000 iterations, times ln 2,
    each iteration using the value computed at the end of the previous one."""
    la = reference_dir("LA/code")
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
    acdc = reference_dir("ACDC")
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
    acdc = reference_dir("ACDC")
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
