"""Reading and writing the h5 case files (``image`` float32, ``label`` uint8)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np

from ..errors import DataError
from ..io import atomic_path


class RawCase(NamedTuple):
    """A case in memory on its way to ``write_case``: arrays, voxel spacing
    (None: unknown) and what preprocessing wants recorded in the manifest."""
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, ...] | None
    info: dict[str, Any]


def read_case(path: str | Path, n_classes: int, need_label: bool = True
              ) -> tuple[np.ndarray, np.ndarray | None, tuple[float, ...] | None]:
    """Read ``image`` (float32) and ``label`` (uint8) from an h5 case file.

    Raises DataError naming the file when it is missing, unreadable, lacks a
    key, has mismatched shapes, non-finite intensities, or labels outside
    ``[0, n_classes)``. Returns ``(image, label, spacing)``; spacing is the
    ``spacing`` attribute when present.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (re-run `crossmatch preprocess`)")
    try:
        with h5py.File(path, "r") as f:
            if "image" not in f or (need_label and "label" not in f):
                raise DataError(f"{path}: expected datasets 'image' and 'label', found {sorted(f)}")
            image = np.asarray(f["image"][()], dtype=np.float32)
            label = np.asarray(f["label"][()]) if need_label else None
            spacing = tuple(float(s) for s in f.attrs["spacing"]) if "spacing" in f.attrs else None
    except DataError:
        raise
    except Exception as e:  # h5py raises OSError/KeyError/ValueError on damaged files
        raise DataError(f"{path}: cannot read HDF5 file ({e.__class__.__name__}: {e}); "
                        "the file is corrupt or truncated: re-download or re-run preprocessing") from e
    if label is not None:
        if label.shape != image.shape[: label.ndim]:
            raise DataError(f"{path}: image shape {image.shape} and label shape {label.shape} differ")
        if label.dtype.kind == "f" and not np.array_equal(label, np.round(label)):
            raise DataError(f"{path}: label values must be whole numbers (class indices), found "
                            f"{sorted(np.unique(label[label != np.round(label)]).tolist())[:5]}; the "
                            "label map was resampled with interpolation: resample it with nearest")
        if label.dtype.kind not in "iuf" + "b":
            raise DataError(f"{path}: label has dtype {label.dtype}; expected integer class indices")
        lo, hi = int(label.min()), int(label.max())
        if lo < 0 or hi >= n_classes:
            raise DataError(f"{path}: label values must be in [0, {n_classes - 1}], found "
                            f"{sorted(np.unique(label).tolist())[:10]}; check the dataset and "
                            "its number of classes")
        label = label.astype(np.uint8)
    if not np.isfinite(image).all():
        raise DataError(f"{path}: image contains NaN or Inf values")
    return image, label, spacing


def write_case(path: str | Path, image: np.ndarray, label: np.ndarray | None,
               spacing: tuple[float, ...] | None = None, compress: bool = True) -> None:
    """Write a case atomically (temporary file + rename)."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            opts = dict(compression="gzip", compression_opts=1) if compress else {}
            f.create_dataset("image", data=image.astype(np.float32), **opts)
            if label is not None:
                f.create_dataset("label", data=label.astype(np.uint8), **opts)
            if spacing is not None:
                f.attrs["spacing"] = np.asarray(spacing, dtype=np.float64)
