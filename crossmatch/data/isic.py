"""ISIC 2018 Task 1 (lesion boundary segmentation): raw layout, preprocessing, split lists.

Raw layout (``--raw``), the official training archives unpacked side by side::

    <raw>/ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg ...         RGB dermoscopy (2594)
    <raw>/ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png ...
                                                                      mask, 0 / 255, same size

(other files there, such as the archives' LICENSE/ATTRIBUTION, are ignored).
Only the 2594 training images are used: the challenge's validation and test
masks were released later and the semi-supervised papers split the training
set.

Preprocessing (``convert``): image resized to 256 x 256 (Pillow bilinear)
and scaled to [0, 1] float32 RGB, mask resized with nearest neighbour and
mapped 255 -> 1. A mask with values other than {0, 255}, a colour mask, or an
image and mask of different sizes stop preprocessing with a DataError naming
the file, before anything is written. Each case is one image, stored
``image`` H x W x 3 (channel last; the training batches move the channel
first) and ``label`` H x W in ``volumes/ISIC_<id>.h5``, without spacing (the
resize makes pixels anisotropic and dermoscopy has no common scale): mm
distances are NaN, pixel distances are reported.

Split lists (``crossmatch/splits/isic/``, shipped): 70 / 10 / 20 % train / val /
test and 5 / 10 / 20 % of train labeled (nested), from seeded permutations
(``SPLIT_SEED``) of the sorted image ids (``split_lists``). The 2594 ids
(ISIC_0000000 .. ISIC_0016072) were taken from the public per-image
annotation table of the Task 1/2 training images,
``artefacts-annotation/isic_bias.csv`` of github.com/alceubissoto/debiasing-skin
(commit 841cc17, 2594 rows, index 0..2593 without gaps), extracted twice
independently with identical results; ``IDS_SHA256`` is the checksum of
that sorted list (one id per line) and a test re-derives every shipped
file from it. ``python -m crossmatch splits --dataset isic --raw <raw>``
writes the same lists from the images on disk, and refuses a copy whose
ids differ from the shipped ones.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from .h5 import RawCase
from .specs import get_spec
from .splits import generate_lists

IMAGE_DIR = "ISIC2018_Task1-2_Training_Input"
MASK_DIR = "ISIC2018_Task1_Training_GroundTruth"
SIZE = (256, 256)              # H, W
N_IMAGES = 2594
FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
SPLIT_SEED = 2026
ID = re.compile(r"ISIC_\d{7}")
# sha256 of the 2594 sorted training ids, one per line (see the module docstring)
IDS_SHA256 = "b6a11fa50b1cf0363160258b5cac96ccae382ea524e34434c3212d1fbb1e4775"
PREPROCESSING = (f"RGB resized to {SIZE[0]}x{SIZE[1]} (bilinear), scaled to [0, 1], stored H x W x 3; "
                 "mask resized nearest, 255 -> 1")


def files(raw: Path, case: str) -> tuple[Path, Path]:
    return raw / IMAGE_DIR / f"{case}.jpg", raw / MASK_DIR / f"{case}_segmentation.png"


def case_ids(raw: Path) -> list[str]:
    """The sorted image ids under ``raw`` (``ISIC_<7 digits>.jpg`` of the input folder)."""
    folder = Path(raw) / IMAGE_DIR
    if not folder.is_dir():
        raise DataError(f"isic: {folder} not found; unpack ISIC2018_Task1-2_Training_Input.zip "
                        f"and ISIC2018_Task1_Training_GroundTruth.zip under {raw}")
    return sorted(p.stem for p in folder.glob("ISIC_*.jpg") if ID.fullmatch(p.stem))


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise DataError(f"{path}: file not found (see crossmatch/data/isic.py for the raw layout)")
    try:
        im = Image.open(path)
        im.load()  # decode now: a truncated file fails here, with its name
    except Exception as e:
        raise DataError(f"{path}: cannot read image ({e.__class__.__name__}: {e}); "
                        "the file is corrupt or truncated") from e
    return im


def read(paths: tuple[Path, ...]) -> RawCase:
    """Read and check one image and its mask (sizes, single channel, values {0, 255})."""
    image_path, mask_path = paths
    image, mask = _open(image_path), _open(mask_path)
    if image.size != mask.size:
        raise DataError(f"{mask_path}: mask size {mask.size[1]}x{mask.size[0]} differs from the "
                        f"image's {image.size[1]}x{image.size[0]} ({image_path})")
    m = np.asarray(mask)
    if m.ndim != 2:
        raise DataError(f"{mask_path}: expected a single-channel mask, found mode {mask.mode}")
    values = np.unique(m)
    if not set(values.tolist()) <= {0, 255}:
        raise DataError(f"{mask_path}: mask values must be 0 and 255, found {values[:10].tolist()}")
    rgb = np.asarray(image.convert("RGB"))
    return RawCase(rgb, (m == 255).astype(np.uint8), None, {"original_size": list(m.shape)})


def convert(case: RawCase) -> RawCase:
    """Resize to ``SIZE`` (image bilinear, mask nearest), image to [0, 1]."""
    wh = (SIZE[1], SIZE[0])  # Pillow sizes are (width, height)
    image = Image.fromarray(case.image).resize(wh, Image.Resampling.BILINEAR)
    label = Image.fromarray(case.label).resize(wh, Image.Resampling.NEAREST)
    return RawCase(np.asarray(image, np.float32) / 255.0, np.asarray(label, np.uint8), None, case.info)


def split_lists(ids: list[str], seed: int = SPLIT_SEED) -> dict[str, list[str]]:
    """70/10/20 % train/val/test and 5/10/20 % of train labeled, by file name."""
    spec = get_spec("isic")
    n = len(set(ids))
    n_test, n_val = round(FRACTIONS["test"] * n), round(FRACTIONS["val"] * n)
    n_train = n - n_test - n_val
    n_labeled = {p: max(1, round(p / 100 * n_train)) for p in spec.labeled_counts}
    return generate_lists(spec, ids, n_test, n_val, n_labeled, seed, val_from_train=False)


def shipped_lists(raw: Path | None) -> dict[str, list[str]]:
    """The lists of the full training set under ``raw`` (what ``crossmatch/splits/isic`` holds)."""
    if raw is None:
        raise DataError("isic: the lists are made from the image ids on disk; give --raw")
    ids = case_ids(raw)
    if len(ids) != N_IMAGES:
        raise DataError(f"isic: {len(ids)} images under {Path(raw) / IMAGE_DIR}, expected the "
                        f"{N_IMAGES} of ISIC 2018 Task 1 training; the shared lists must come from "
                        "the complete set")
    if ids_sha256(ids) != IDS_SHA256:
        raise DataError(f"isic: the {N_IMAGES} image ids under {Path(raw) / IMAGE_DIR} are not those of "
                        f"the ISIC 2018 Task 1 training set the shipped lists were made from "
                        f"(sha256 {ids_sha256(ids)[:12]}..., expected {IDS_SHA256[:12]}...); is this "
                        "another year's or split's archive?")
    return split_lists(ids)


def ids_sha256(ids: list[str]) -> str:
    """Checksum of a set of image ids: sha256 of the sorted ids, one per line."""
    return hashlib.sha256("".join(f"{i}\n" for i in sorted(set(ids))).encode()).hexdigest()
