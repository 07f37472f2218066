"""Raw dataset -> preprocessed root (``volumes/``, ``slices/``, ``manifest.json``).

One ``RawFormat`` per dataset, registered in ``FORMATS``: where a case's raw
files are, how they are read and checked, and how they are converted. Every
input case is fully read and validated (readable, shapes, label range) before
anything is written, so a corrupt file stops the job with its name.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from ..errors import DataError
from ..io import write_json
from . import isic, pancreas
from .h5 import RawCase, read_case, write_case
from .specs import DatasetSpec, get_spec
from .splits import MANIFEST, MISSING_POLICIES, missing_cases_message, read_list, volume_of, write_lists


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def listed_cases(spec: DatasetSpec, split_dir: Path | None = None) -> tuple[list[str], set[str]]:
    """All volume ids named by the dataset's lists (in ``split_dir``, default
    the shipped ones), and those used for training."""
    split_dir = split_dir or spec.split_dir
    train = {volume_of(c) if spec.train_subdir == "slices" else c
             for c in read_list(split_dir / spec.lists["train"])}
    other = set(read_list(split_dir / spec.lists["val"])) | set(
        read_list(split_dir / spec.lists["test"]))
    return sorted(train | other), train


def acdc_h5_source(raw: Path, case: str) -> Path:
    """SSL4MIS layout: ``<raw>/<patientXXX_frameYY>.h5`` (also accepts ``<raw>/data/``)."""
    for p in (raw / f"{case}.h5", raw / "data" / f"{case}.h5"):
        if p.is_file():
            return p
    return raw / f"{case}.h5"


def la_h5_source(raw: Path, case: str) -> Path:
    """UA-MT layout: ``<raw>/<CASE>/mri_norm2.h5``."""
    return raw / case / "mri_norm2.h5"


@dataclass(frozen=True)
class RawFormat:
    """One dataset's raw format. ``files(raw, case)``: the case's raw files, the
    first one says whether the case is present; ``read(files, spec)``: arrays
    checked (DataError naming the file), as cheap as the check allows;
    ``convert``: the preprocessing proper; ``lists(raw)``: the split lists to
    generate (datasets without community lists), or None."""
    files: Callable[[Path, str], tuple[Path, ...]]
    read: Callable[[tuple[Path, ...], DatasetSpec], RawCase]
    preprocessing: str
    convert: Callable[[RawCase], RawCase] = lambda case: case
    lists: Callable[[Path | None], dict[str, list[str]]] | None = None

    def source(self, raw: Path, case: str) -> Path:
        return self.files(raw, case)[0]


def _h5(source: Callable[[Path, str], Path]) -> Callable[[Path, str], tuple[Path, ...]]:
    return lambda raw, case: (source(raw, case),)


def _read_h5(paths: tuple[Path, ...], spec: DatasetSpec) -> RawCase:
    image, label, spacing = read_case(paths[0], spec.n_classes)
    if spec.intensity_range is not None:  # a min-max normalised format (ACDC's SSL4MIS volumes)
        low, high = spec.intensity_range
        lo, hi = float(image.min()), float(image.max())
        if lo < low - 1e-3 or hi > high + 1e-3:
            raise DataError(f"{paths[0]}: image values span [{lo:.4g}, {hi:.4g}], outside [{low:g}, {high:g}]: "
                            f"the {spec.name} raw format is min-max normalised to [{low:g}, {high:g}] per volume "
                            "(the colour jitter and the reference's transforms assume it); normalise the "
                            "volume or use the published copy")
    return RawCase(image, label, spacing, {})


H5_COPY = "validated copy (image float32, label uint8, gzip)"
FORMATS: dict[str, RawFormat] = {
    "acdc": RawFormat(_h5(acdc_h5_source), _read_h5, H5_COPY),
    "la": RawFormat(_h5(la_h5_source), _read_h5, H5_COPY),
    "pancreas": RawFormat(pancreas.files, lambda p, spec: pancreas.read(p), pancreas.PREPROCESSING,
                          pancreas.convert, lambda raw: pancreas.split_lists()),
    "isic": RawFormat(isic.files, lambda p, spec: isic.read(p), isic.PREPROCESSING, isic.convert,
                      isic.shipped_lists),
}
SOURCES: dict[str, Callable[[Path, str], Path]] = {name: f.source for name, f in FORMATS.items()}


def write_split_lists(dataset: str, raw: str | Path | None, out: str | Path | None = None) -> dict[str, list[str]]:
    """Generate a dataset's split lists (Pancreas-CT, ISIC) into ``out``
    (default: the shipped folder ``crossmatch/splits/<dataset>``)."""
    spec = get_spec(dataset)
    fmt = FORMATS[dataset]
    if fmt.lists is None:
        raise DataError(f"{dataset}: its lists are the community's, shipped verbatim; nothing to generate")
    lists = fmt.lists(Path(raw) if raw else None)
    write_lists(lists, out or spec.split_dir)
    return lists


def preprocess(dataset: str, raw: str | Path, out: str | Path, missing: str = "error",
               split_dir: str | Path | None = None) -> dict:
    """Validate and convert ``raw`` into the preprocessed root ``out``.

    2D volume datasets (not single-image ones, ISIC) also get one h5 per axial slice of every training volume
    (``slices/<volume>_slice_<k>.h5``, k from 1, the names the standard lists use).
    Returns the manifest (also written to ``out/manifest.json``).
    """
    spec = get_spec(dataset)
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing must be one of {MISSING_POLICIES}")
    raw, out = Path(raw), Path(out)
    if not raw.is_dir():
        raise DataError(f"{dataset}: raw data folder {raw} does not exist; see docs/data.md "
                        "for where to get the dataset and where to put it")
    fmt = FORMATS[dataset]
    try:
        cases, train = listed_cases(spec, Path(split_dir) if split_dir else None)
    except DataError as e:
        if fmt.lists is None or split_dir:
            raise
        raise DataError(f"{e}; the {dataset} lists are generated once: `python -m crossmatch splits "
                        f"--dataset {dataset} --raw {raw}` (see docs/data.md)") from None
    absent = [c for c in cases if not fmt.source(raw, c).is_file()]
    if absent and missing == "error":
        raise DataError(missing_cases_message(spec, absent, len(cases), raw, fmt.source(raw, absent[0])))
    present = [c for c in cases if c not in absent]
    if not present:
        raise DataError(f"{dataset}: none of the {len(cases)} listed cases is under {raw}")
    # validate every case before writing anything: a bad file leaves no partial output
    for case in tqdm(present, desc=f"check {dataset}", unit="case"):
        fmt.read(fmt.files(raw, case), spec)
    (out / MANIFEST).unlink(missing_ok=True)   # until every case is rewritten, the root is incomplete
    files = {}
    for case in tqdm(present, desc=f"preprocess {dataset}", unit="case"):
        srcs = fmt.files(raw, case)
        image, label, spacing, info = fmt.convert(fmt.read(srcs, spec))
        spacing = spacing or spec.spacing
        write_case(out / "volumes" / f"{case}.h5", image, label, spacing)
        if spec.train_subdir == "slices" and case in train:
            for k in range(image.shape[0]):  # the standard lists number slices from 1
                write_case(out / "slices" / f"{case}_slice_{k + 1}.h5", image[k], label[k],
                           compress=False)
        files[case] = {"source": str(srcs[0]), "sha256": sha256(srcs[0]),
                       **({"sources": {str(p): sha256(p) for p in srcs}} if len(srcs) > 1 else {}),
                       "shape": list(image.shape),
                       "label_values": sorted(np.unique(label).tolist()), **info}
    manifest = {"dataset": dataset, "raw": str(raw), "missing_cases": missing,
                "preprocessing": (fmt.preprocessing + ("; one file per axial slice for training volumes"
                                                       if spec.train_subdir == "slices" else "")),
                "n_listed": len(cases), "n_present": len(present), "absent": absent,
                "spacing": list(spec.spacing) if spec.spacing else None,
                "cases": files}
    write_json(out / MANIFEST, manifest)
    return manifest
