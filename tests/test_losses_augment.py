import pytest
import numpy as np
import torch

from crossmatch.data.augment import apply_cutmix, cutmix_boxes, strong_intensity, weak_view
from crossmatch.losses import dice_loss, masked_dice


def test_pixels_under_tau_contribute_nothing():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 16, 16, requires_grad=True)
    target = torch.randint(0, 4, (2, 16, 16))
    conf = torch.rand(2, 16, 16)
    tau = 0.5
    low = conf < tau
    loss = masked_dice(logits, target, conf, tau)
    loss.backward()
    # no gradient reaches low-confidence pixels
    assert logits.grad[low.unsqueeze(1).expand_as(logits)].abs().max() == 0
    assert logits.grad[~low.unsqueeze(1).expand_as(logits)].abs().max() > 0
    # changing predictions and targets there leaves the loss unchanged
    other = logits.detach().clone()
    other[low.unsqueeze(1).expand_as(other)] = torch.randn(int(low.sum()) * 4)
    target2 = target.clone()
    target2[low] = (target2[low] + 1) % 4
    assert torch.allclose(masked_dice(other, target2, conf, tau), loss.detach())


def test_dice_loss_perfect_and_wrong():
    target = torch.randint(0, 3, (1, 8, 8))
    perfect = torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float()
    assert dice_loss(perfect, target).item() < 1e-4
    wrong = torch.nn.functional.one_hot((target + 1) % 3, 3).movedim(-1, 1).float()
    assert dice_loss(wrong, target).item() > 0.99


def test_cutmix_keeps_image_and_label_aligned():
    gen = torch.Generator().manual_seed(0)
    n, h, w = 8, 32, 40
    # each image encodes its own label: label = image value
    lab_a = torch.randint(0, 4, (n, h, w))
    lab_b = torch.randint(0, 4, (n, h, w))
    img_a, img_b = lab_a[:, None].float(), lab_b[:, None].float()
    box = cutmix_boxes(n, (h, w), gen, p=1.0)
    assert box.any(dim=(1, 2)).all()
    img = apply_cutmix(img_a, img_b, box)
    lab = apply_cutmix(lab_a, lab_b, box)
    assert torch.equal(img[:, 0].long(), lab)
    assert torch.equal(lab[box], lab_b[box]) and torch.equal(lab[~box], lab_a[~box])
    # 3D boxes, and p=0 gives no box
    assert cutmix_boxes(2, (8, 8, 8), gen, p=1.0).any(dim=(1, 2, 3)).all()
    assert not cutmix_boxes(4, (8, 8), gen, p=0.0).any()


def test_weak_view_moves_image_and_label_together():
    rng = np.random.default_rng(0)
    label = np.zeros((40, 30), np.uint8)
    label[5:15, 3:10] = 1
    label[20:35, 12:28] = 2
    image = label[None].astype(np.float32)
    for seed in range(10):
        im, lb = weak_view(image, label, (32, 32), np.random.default_rng(seed))
        assert im.shape == (1, 32, 32) and lb.shape == (32, 32)
        # rounding the (linearly interpolated) image recovers the label almost everywhere
        assert (np.rint(im[0]) == lb).mean() > 0.95
    vol = rng.normal(size=(1, 40, 36, 24)).astype(np.float32)
    vlab = (vol[0] > 0).astype(np.uint8)
    for crop in ((32, 32, 16), (24, 32, 16)):  # square and non-square in-plane crops
        for _ in range(6):
            im, lb = weak_view(vol, vlab, crop, rng)
            assert im.shape == (1, *crop) and np.array_equal(lb, (im[0] > 0).astype(np.uint8))


def test_strong_intensity_is_reproducible_and_clipped():
    x = torch.rand(4, 1, 16, 16)
    a = strong_intensity(x, torch.Generator().manual_seed(3), clip=(0, 1))
    b = strong_intensity(x, torch.Generator().manual_seed(3), clip=(0, 1))
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1 and not torch.equal(a, x)


def test_reference_ramp_starts_at_tau_then_rises_to_ln2():
    import math
    from crossmatch.methods.crossmatch import reference_ramp
    assert reference_ramp(0.75, 0, 100) == 0.75  # the first iteration: the threshold as given
    assert reference_ramp(0.75, 1, 100) == pytest.approx((0.75 + 0.25 * math.exp(-5)) * math.log(2))
    values = [reference_ramp(0.75, i, 100) for i in range(1, 102)]
    assert values == sorted(values) and values[-1] == pytest.approx(math.log(2))


def test_nearest_weak_view_keeps_the_image_values_and_the_label():
    """train.interpolation: nearest (the ACDC reference's order-0 zoom and rotation):
    no new intensities, and the image still tells the label exactly."""
    label = np.zeros((40, 30), np.uint8)
    label[5:15, 3:10] = 1
    label[20:35, 12:28] = 2
    image = (label[None] * 0.3 + 0.1).astype(np.float32)
    linear_new_values = 0
    for seed in range(12):
        im, lb = weak_view(image, label, (32, 32), np.random.default_rng(seed), "nearest")
        assert set(np.unique(im)) <= set(np.unique(image)) | {0.0}  # 0: outside a rotated image
        # zero fill where a rotation uncovers the border; elsewhere image and label agree exactly
        inside = im[0] > 0
        assert np.array_equal(np.rint((im[0][inside] - 0.1) / 0.3), lb[inside])
        lin, _ = weak_view(image, label, (32, 32), np.random.default_rng(seed), "linear")
        linear_new_values += not set(np.unique(lin)) <= set(np.unique(image)) | {0.0}
    assert linear_new_values > 0  # the default interpolates


def test_cutmix_box_sides_are_the_references():
    from crossmatch.data.augment import box_sides
    assert box_sides(1000.0, 0.4, 2) == [20, 50]  # rows sqrt(V r), columns sqrt(V / r)
    assert box_sides(8000.0, 1.0, 3) == [19, 19, 19] or box_sides(8000.0, 1.0, 3) == [20, 20, 20]
    gen = torch.Generator().manual_seed(0)
    boxes = cutmix_boxes(200, (32, 32), gen, p=1.0)
    area = boxes.flatten(1).float().mean(1)
    assert boxes.flatten(1).any(1).all() and 0.0 < area.min() and area.max() <= 0.41


def test_pil_views_are_the_references_8bit_pil_views(acdc_root, tmp_path, monkeypatch):
    """train.unlabeled_views: pil. The unlabeled weak views are floored to 8
    bits as the reference's (img * 255).astype(uint8); each strong view is
    PIL's own ImageEnhance brightness and contrast, in the order drawn (both
    orders occur), and PIL's GaussianBlur, on that 8-bit image: equal to PIL
    to the gray level, every value on the 8-bit grid."""
    from PIL import Image, ImageEnhance, ImageFilter

    from crossmatch import config
    from crossmatch.data.augment import _rand, quantize_8bit
    from crossmatch.train import train

    x = torch.tensor([0.0, 0.5 / 255, 1 / 255, 0.99999, 1.0])
    assert torch.equal(quantize_8bit(x, (0.0, 1.0)) * 255, torch.tensor([0.0, 0.0, 1.0, 254.0, 255.0]))
    rng = np.random.default_rng(0)
    u8 = (rng.random((32, 32)) * 255).astype(np.uint8)
    img = torch.from_numpy(u8 / 255.0).float()[None, None]
    orders = set()
    for seed in range(8):
        out = strong_intensity(img, torch.Generator().manual_seed(seed), (0.0, 1.0), p_jitter=1.0, p_blur=1.0,
                               pil=True)[0, 0].numpy() * 255
        g = torch.Generator().manual_seed(seed)  # replay: coins, brightness, contrast, sigma, order
        torch.rand(1, 2, generator=g)
        b, c, s = (float(_rand(g, 1, lo, hi)) for lo, hi in ((0.5, 1.5), (0.5, 1.5), (0.1, 2.0)))
        contrast_first = bool(torch.rand(1, generator=g) < 0.5)
        orders.add(contrast_first)
        pil = Image.fromarray(u8)
        for enh, f in ((ImageEnhance.Contrast, c), (ImageEnhance.Brightness, b))[::1 if contrast_first else -1]:
            pil = enh(pil).enhance(f)
        expected = np.asarray(pil.filter(ImageFilter.GaussianBlur(radius=s)), float)
        assert np.abs(out - np.round(out)).max() < 1e-3 and np.abs(out - expected).max() < 1e-3, seed
    assert orders == {True, False}

    # the trainer: unlabeled weak views on the 8-bit grid, labeled images float; CrossMatch trains
    from crossmatch.train import Trainer
    seen = []
    step = Trainer.step
    monkeypatch.setattr(Trainer, "step", lambda self, it, b: (seen.append(b), step(self, it, b))[1])
    cfg = config.resolve({"dataset": acdc_root, "train": {"iterations": 2, "batch_size": 2, "crop": [32, 32],
                                                          "val_every": 0, "num_workers": 0,
                                                          "unlabeled_views": "pil"}})
    train(cfg, tmp_path / "run")
    on_grid = lambda t: torch.equal(t * 255, torch.round(t * 255))  # noqa: E731
    assert all(on_grid(b["u"]) and on_grid(b["u_mix"]) and not on_grid(b["x"]) for b in seen) and len(seen) == 2
    log = np.genfromtxt(tmp_path / "run" / "log.csv", delimiter=",", names=True)
    assert np.isfinite(log["loss"]).all()
