"""Pancreas-CT and ISIC 2018: raw formats, preprocessing, split lists, train + evaluate on phantoms."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from crossmatch import config
from crossmatch.data import isic, pancreas
from crossmatch.data.h5 import RawCase, read_case
from crossmatch.data.phantoms import write_phantom
from crossmatch.data.preprocess import preprocess
from crossmatch.data.specs import get_spec
from crossmatch.data.splits import carve_validation, read_list, resolve_splits
from crossmatch.errors import DataError


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> dict[str, Path]:
    """Both phantoms at their default sizes, preprocessed by the real pipeline."""
    out = {}
    for name in ("pancreas", "isic"):
        base = tmp_path_factory.mktemp(name)
        write_phantom(name, base / "ph")
        preprocess(name, base / "ph" / "raw", base / "root", split_dir=base / "ph" / "splits")
        out[name] = base
    return out


def _manifest(base: Path) -> dict:
    return json.loads((base / "root" / "manifest.json").read_text())


def test_pancreas_resampled_to_1mm_clipped_and_cropped_around_the_label(phantoms):
    m = _manifest(phantoms["pancreas"])
    assert m["n_present"] == 10 and m["spacing"] == [1.0, 1.0, 1.0]
    for case, info in m["cases"].items():
        assert info["raw_spacing"] == [0.8, 0.8, 2.5]
        # one voxel per mm: the voxel count follows the header spacing
        assert info["resampled_shape"] == [round(n * s) for n, s in zip(info["raw_shape"], info["raw_spacing"])]
        image, label, spacing = read_case(phantoms["pancreas"] / "root" / "volumes" / f"{case}.h5", 2)
        assert spacing == (1.0, 1.0, 1.0) and image.shape == label.shape == tuple(b - a for a, b in info["crop"])
        hu = image * info["hu_std"] + info["hu_mean"]       # undo the z-score
        assert hu.min() == pytest.approx(-125, abs=0.5) and hu.max() == pytest.approx(275, abs=0.5)
        assert abs(image.mean()) < 1e-4 and image.std() == pytest.approx(1, abs=1e-3)
        fg = np.argwhere(label)
        for ax, (lo, hi) in enumerate(info["crop"]):   # 25 mm margin, clamped to the volume
            assert fg[:, ax].min() == (25 if lo > 0 else fg[:, ax].min()) and fg[:, ax].min() <= 25
            rest = label.shape[ax] - 1 - fg[:, ax].max()
            assert rest == 25 if hi < info["resampled_shape"][ax] else rest <= 25


def test_pancreas_convert_crop_is_label_box_plus_margin():
    image = np.full((100, 90, 40), 500.0, np.float32)
    image[:, :, :20] = -400.0
    label = np.zeros(image.shape, np.uint8)
    label[40:50, 30:40, 16:20] = 1                        # 10 x 10 x 10 mm at 2.5 mm slices
    out = pancreas.convert(RawCase(image, label, (1.0, 1.0, 2.5), {}))
    assert out.info["resampled_shape"] == [100, 90, 100]
    assert out.image.shape == out.label.shape == (60, 60, 60)   # 10 mm + 2 x 25 mm on every axis
    fg = np.argwhere(out.label)
    assert fg.min(0).tolist() == [25, 25, 25] and (np.array(out.label.shape) - 1 - fg.max(0)).tolist() == [25] * 3
    assert out.info["hu_mean"] >= -125 and out.info["hu_mean"] <= 275 and out.spacing == (1.0, 1.0, 1.0)


def _copy_raw(src: Path, dst: Path) -> Path:
    shutil.copytree(src / "ph" / "raw", dst / "raw")
    return dst / "raw"


def test_pancreas_bad_shape_and_label_values_name_the_file(phantoms, tmp_path):
    raw = _copy_raw(phantoms["pancreas"], tmp_path)
    splits = phantoms["pancreas"] / "ph" / "splits"
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    _, label_path = pancreas.files(raw, "PANCREAS_0004")
    pancreas.write_nifti(label_path, np.zeros((80, 72, 23), np.uint8), affine)
    with pytest.raises(DataError, match=rf"{label_path}.*label shape \(80, 72, 23\) differs"):
        preprocess("pancreas", raw, tmp_path / "out", split_dir=splits)
    bad = np.zeros((80, 72, 24), np.uint8)
    bad[10:20, 10:20, 5:9] = 2
    pancreas.write_nifti(label_path, bad, affine)
    with pytest.raises(DataError, match=rf"{label_path}: label values must be 0 .* found \[0.0, 2.0\]"):
        preprocess("pancreas", raw, tmp_path / "out", split_dir=splits)
    assert not (tmp_path / "out").exists()                 # nothing written before the check


def test_pancreas_tcia_label_folder_is_accepted(phantoms, tmp_path):
    raw = _copy_raw(phantoms["pancreas"], tmp_path)
    (raw / "labels").rename(raw / "TCIA_pancreas_labels-02-05-2017")
    image, label = pancreas.files(raw, "PANCREAS_0002")
    assert label == raw / "TCIA_pancreas_labels-02-05-2017" / "label0002.nii.gz"
    assert pancreas.read((image, label)).label.max() == 1


def test_isic_resized_rgb_images_without_slices(phantoms):
    base = phantoms["isic"]
    m = _manifest(base)
    assert m["n_present"] == 20 and not (base / "root" / "slices").exists()
    for case, info in list(m["cases"].items())[:5]:
        image, label, spacing = read_case(base / "root" / "volumes" / f"{case}.h5", 2)
        assert image.shape == (256, 256, 3) and label.shape == (256, 256) and spacing is None
        assert 0 <= image.min() and image.max() <= 1 and set(np.unique(label)) == {0, 1}
        h, w = info["original_size"]
        assert 72 <= h <= 88 and 90 <= w <= 110             # the phantom's 80 x 100 +- 10 %
    spec = get_spec("isic")
    s = resolve_splits(spec, base / "root", 20, split_dir=base / "ph" / "splits")
    assert len(s.labeled) == 3 and len(s.unlabeled) == 11 and len(s.val) == 2 and len(s.test) == 4
    assert all(p.parent.name == "volumes" for p in s.labeled + s.unlabeled)


def test_isic_bad_mask_values_and_size_name_the_file(phantoms, tmp_path):
    raw = _copy_raw(phantoms["isic"], tmp_path)
    splits = phantoms["isic"] / "ph" / "splits"
    case = read_list(splits / "test.list")[0]
    image_path, mask_path = isic.files(raw, case)
    w, h = Image.open(image_path).size
    mask = np.zeros((h, w), np.uint8)
    mask[5:20, 5:20] = 128
    Image.fromarray(mask).save(mask_path)
    with pytest.raises(DataError, match=rf"{mask_path}: mask values must be 0 and 255, found \[0, 128\]"):
        preprocess("isic", raw, tmp_path / "out", split_dir=splits)
    Image.fromarray(np.zeros((h + 3, w), np.uint8)).save(mask_path)
    with pytest.raises(DataError, match=rf"{mask_path}: mask size {h + 3}x{w} differs"):
        preprocess("isic", raw, tmp_path / "out", split_dir=splits)
    assert not (tmp_path / "out").exists()


def test_shipped_pancreas_lists():
    spec = get_spec("pancreas")
    d = spec.split_dir
    train, test, val = (read_list(d / f) for f in ("train.list", "test.list", "val.list"))
    assert (len(train), len(test), len(val)) == (62, 20, 6)
    assert set(train) | set(test) == set(pancreas.CASE_IDS) and not set(train) & set(test)
    assert set(val) <= set(train) and not set(val) & set(test)
    labeled = {n: read_list(d / f"train_{n}_label.list") for n in spec.labeled_counts}
    for n, lab in labeled.items():
        assert len(lab) == n and set(lab) <= set(train)
        assert read_list(d / f"train_{n}_unlabel.list") == sorted(set(train) - set(lab))
        assert not set(lab) & (set(val) | pancreas.OPTIONAL_CASES)
    assert set(labeled[3]) < set(labeled[6]) < set(labeled[12])
    # val was carved as LA's: outside the largest labeled set, carve_validation's seed
    assert val == carve_validation(sorted(set(train) - pancreas.OPTIONAL_CASES), set(labeled[12]), 6)
    # the generator with the recorded seed reproduces every shipped file
    for name, entries in pancreas.split_lists().items():
        assert read_list(d / name) == entries, name


def test_isic_split_generator_sizes_and_shipping():
    ids = [f"ISIC_{i:07d}" for i in range(0, 2 * isic.N_IMAGES, 2)]
    lists = isic.split_lists(ids)
    assert lists == isic.split_lists(list(reversed(ids)))          # a function of the sorted ids
    train, val, test = lists["train.list"], lists["val.list"], lists["test.list"]
    assert (len(train), len(val), len(test)) == (1816, 259, 519)
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
    sizes = {n: len(lists[f"train_{n}pct_label.list"]) for n in (5, 10, 20)}
    assert sizes == {5: 91, 10: 182, 20: 363}
    assert set(lists["train_5pct_label.list"]) < set(lists["train_10pct_label.list"])


def test_isic_shipped_lists_rederive_from_the_recorded_ids():
    """The shipped lists hold exactly the 2594 training ids of the recorded checksum, and
    the generator with the recorded seed reproduces every shipped file from them."""
    d = get_spec("isic").split_dir
    ids = read_list(d / "train.list") + read_list(d / "val.list") + read_list(d / "test.list")
    assert len(ids) == len(set(ids)) == isic.N_IMAGES
    assert isic.ids_sha256(ids) == isic.IDS_SHA256
    assert min(ids) == "ISIC_0000000" and max(ids) == "ISIC_0016072"
    lists = isic.split_lists(ids)
    assert sorted(p.name for p in d.glob("*.list")) == sorted(lists)
    for name, entries in lists.items():
        assert read_list(d / name) == entries, name
    assert {n: len(lists[f"train_{n}pct_label.list"]) for n in (5, 10, 20)} == {5: 91, 10: 182, 20: 363}


def test_isic_split_generation_refuses_an_incomplete_or_other_copy(phantoms, tmp_path, monkeypatch):
    raw = phantoms["isic"] / "ph" / "raw"
    with pytest.raises(DataError, match="expected the 2594"):
        isic.shipped_lists(raw)
    # 2594 images, but not the Task 1 training ids (another archive): named, not silently split
    other = [f"ISIC_{i:07d}" for i in range(isic.N_IMAGES)]
    monkeypatch.setattr(isic, "case_ids", lambda raw: other)
    with pytest.raises(DataError, match="not those of the ISIC 2018 Task 1 training set"):
        isic.shipped_lists(raw)


def test_config_defaults_for_the_new_datasets():
    p = config.load(None, ["dataset.name=pancreas"])
    assert p["train"]["crop"] == [96, 96, 96] and p["eval"]["stride"] == [16, 16, 16]
    assert p["dataset"]["labeled"] == 6
    i = config.load(None, ["dataset.name=isic"])
    assert i["train"]["crop"] == [256, 256] and i["dataset"]["labeled"] == 10
    assert get_spec("isic").in_channels == 3


RUNS = {
    "pancreas": ["dataset.labeled=3", "method.name=supervised", "train.crop=[32,32,32]",
                 "train.batch_size=1", "eval.stride=[32,32,32]", "eval.val_stride=[32,32,32]"],
    "isic": ["dataset.labeled=20", "train.crop=[32,32]", "train.batch_size=2"],
}


@pytest.mark.parametrize("name", [pytest.param("pancreas", marks=pytest.mark.slow), "isic"])
def test_train_and_evaluate_on_the_phantom(phantoms, tmp_path, name):
    base = phantoms[name]
    sets = [f"dataset.name={name}", f"dataset.root={base / 'root'}", f"dataset.split_dir={base / 'ph' / 'splits'}",
            "train.iterations=2", "train.val_every=2", "train.ckpt_every=2", "train.num_workers=0",
            "train.threads=1", "eval.val_cases=1", *RUNS[name]]
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "crossmatch", "train", "--out", str(run)]
    for s in sets:
        cmd += ["--set", s]
    subprocess.run(cmd, check=True, cwd=tmp_path, env=env, capture_output=True)
    subprocess.run([sys.executable, "-m", "crossmatch", "evaluate", "--run", str(run), "--checkpoint", "final",
                    "--threads", "1", "--limit", "2", "--no-predictions"],
                   check=True, cwd=tmp_path, env=env, capture_output=True)
    out = run / "eval" / "limited" / "final"   # --limit: apart from what tables count
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_test_cases"] == 2 and summary["class_names"] == list(get_spec(name).class_names)
    rows = (out / "metrics_per_case.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("case,class_name")
