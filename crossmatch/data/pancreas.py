"""NIH Pancreas-CT: raw layout, preprocessing and the generated split lists.

Raw layout (``--raw``)::

    <raw>/images/PANCREAS_0001.nii.gz ... PANCREAS_0082.nii.gz
        the CT volumes in Hounsfield units, as NIfTI converted from TCIA's
        DICOM series (e.g. ``dcm2niix -z y -f PANCREAS_%4s``: any converter
        that writes the scanner geometry into the affine)
    <raw>/labels/label0001.nii.gz ... label0082.nii.gz
        TCIA's manual labels (0 background, 1 pancreas); the folder may also
        keep TCIA's name ``TCIA_pancreas_labels-02-05-2017/``

Preprocessing (``convert``), the common semi-supervised pancreas recipe
(SASSNet, DTC, MC-Net):

1. both volumes are reoriented to the closest canonical (RAS+) orientation
   (``nibabel.as_closest_canonical``), so the array axes are the NIfTI voxel
   axes (x, y, z) with the slice axis last: the same axis order as LA's h5
   (X, Y, Z), and the one the h5 ``image``/``label``/``spacing`` use;
2. image and label must have equal shapes and labels values in {0, 1}
   (else a DataError naming the file, before anything is written);
3. HU clipped to [-125, 275];
4. resampled to 1 mm isotropic from the header spacing (image trilinear,
   label nearest, ``scipy.ndimage.zoom``: round(n_i * s_i) voxels per axis);
5. cropped to the pancreas' bounding box plus a 25 mm (25 voxel) margin on
   every side, clamped to the volume;
6. z-scored (mean and std of the cropped, clipped volume, as LA's
   ``mri_norm2``); the manifest records mean and std per case, so HU are
   recoverable.

Cases: the 82 ids PANCREAS_0001..PANCREAS_0082 of the original NIH release.
TCIA's current copy drops 0025 and 0070 (duplicates of other scans); with
such a copy use ``--missing-cases subset`` (``dataset.missing_cases:
subset``). The split generator keeps both out of the labeled and validation
lists so that the 3/6/12 labeled counts hold for either copy.

Split lists (``crossmatch/splits/pancreas/``, LA's file scheme), written once by
``python -m crossmatch splits --dataset pancreas`` (``split_lists``): 62
train / 20 test from a permutation drawn with seed ``SPLIT_SEED``; labeled
3/6/12 nested, from a second permutation of train; 6 validation cases
carved from train outside the 12 labeled ones exactly as LA's ``val.list``
(``carve_validation``, seed 2026), kept in ``train.list`` and the unlabeled
lists (training removes them from the pool).
"""
from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ..errors import DataError
from .h5 import RawCase
from .specs import get_spec
from .splits import generate_lists

HU_RANGE = (-125.0, 275.0)
TARGET_SPACING = 1.0          # mm, isotropic
MARGIN_MM = 25
CASE_IDS = [f"PANCREAS_{i:04d}" for i in range(1, 83)]
OPTIONAL_CASES = frozenset({"PANCREAS_0025", "PANCREAS_0070"})  # absent from TCIA's current copy
SPLIT_SEED = 2026
N_TEST, N_VAL = 20, 6
LABEL_DIRS = ("labels", "TCIA_pancreas_labels-02-05-2017")
PREPROCESSING = (f"canonical (RAS+) axes x, y, z; HU clipped to {list(HU_RANGE)}; resampled to "
                 f"{TARGET_SPACING:g} mm isotropic (image linear, label nearest); cropped to the "
                 f"pancreas bounding box + {MARGIN_MM} mm; z-scored on the crop")


def files(raw: Path, case: str) -> tuple[Path, Path]:
    """``(image, label)`` of ``PANCREAS_XXXX``; the label from the first label folder that has it."""
    name = f"label{case.rsplit('_', 1)[-1]}.nii.gz"
    label = next((raw / d / name for d in LABEL_DIRS if (raw / d / name).is_file()), raw / LABEL_DIRS[0] / name)
    return raw / "images" / f"{case}.nii.gz", label


def _load(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """Canonically oriented array (float32) and voxel spacing of a NIfTI file."""
    if not path.is_file():
        raise DataError(f"{path}: file not found (see crossmatch/data/pancreas.py for the raw layout)")
    try:
        img = nib.as_closest_canonical(nib.load(path))
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as e:  # nibabel raises ImageFileError/OSError/EOFError on damaged files
        raise DataError(f"{path}: cannot read NIfTI file ({e.__class__.__name__}: {e}); "
                        "the file is corrupt or truncated") from e
    while data.ndim > 3 and data.shape[-1] == 1:  # some converters write x, y, z, 1
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 3D volume, found shape {data.shape}")
    # header zooms are float32: 0.8 reads 0.800000011920929
    return data, tuple(round(float(s), 6) for s in img.header.get_zooms()[:3])


def read(paths: tuple[Path, ...]) -> RawCase:
    """Read and check one case (shapes, finite values, labels in {0, 1})."""
    image_path, label_path = paths
    image, spacing = _load(image_path)
    label, _ = _load(label_path)
    if image.shape != label.shape:
        raise DataError(f"{label_path}: label shape {label.shape} differs from the image's "
                        f"{image.shape} ({image_path})")
    if not np.isfinite(image).all():
        raise DataError(f"{image_path}: image contains NaN or Inf values")
    values = np.unique(label)
    if not set(values.tolist()) <= {0.0, 1.0}:
        raise DataError(f"{label_path}: label values must be 0 (background) and 1 (pancreas), found "
                        f"{values[:10].tolist()}")
    if not values.max(initial=0) == 1:
        raise DataError(f"{label_path}: the label has no pancreas voxel; cannot crop around it")
    if min(spacing) <= 0:
        raise DataError(f"{image_path}: header spacing {spacing} is not positive")
    return RawCase(image, label.astype(np.uint8), spacing, {})


def convert(case: RawCase) -> RawCase:
    """Clip, resample to 1 mm, crop around the pancreas, z-score (module docstring)."""
    image = np.clip(case.image, *HU_RANGE)
    factors = [s / TARGET_SPACING for s in case.spacing]
    image = ndimage.zoom(image, factors, order=1)
    label = ndimage.zoom(case.label, factors, order=0)
    resampled = [int(n) for n in label.shape]
    fg = np.argwhere(label > 0)
    if not len(fg):  # a sub-voxel structure vanished: say so rather than crop nothing
        raise DataError("the pancreas label vanished when resampled to 1 mm")
    margin = round(MARGIN_MM / TARGET_SPACING)
    lo = np.maximum(fg.min(0) - margin, 0)
    hi = np.minimum(fg.max(0) + 1 + margin, label.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    image, label = image[box], label[box]
    mean, std = float(image.mean()), float(image.std())
    image = (image - mean) / max(std, 1e-6)
    info = {"raw_spacing": list(case.spacing), "raw_shape": list(case.image.shape),
            "resampled_shape": resampled,
            "crop": [[int(a), int(b)] for a, b in zip(lo, hi)], "hu_mean": mean, "hu_std": std}
    return RawCase(image.astype(np.float32), label, (TARGET_SPACING,) * 3, info)


def split_lists(ids: list[str] | None = None, n_test: int = N_TEST, n_val: int = N_VAL,
                counts: tuple[int, ...] | None = None, seed: int = SPLIT_SEED) -> dict[str, list[str]]:
    """The shipped lists (defaults) or a phantom's (smaller numbers), by file name."""
    spec = get_spec("pancreas")
    counts = counts or spec.labeled_counts
    keep_out = OPTIONAL_CASES if ids is None else frozenset()
    return generate_lists(spec, ids or CASE_IDS, n_test, n_val, {n: n for n in counts}, seed,
                          val_from_train=True, keep_out=keep_out)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    """A gzipped NIfTI-1 file written atomically (the phantoms' writer)."""
    from ..io import atomic_path
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        tmp.write_bytes(gzip.compress(img.to_bytes(), compresslevel=1))
