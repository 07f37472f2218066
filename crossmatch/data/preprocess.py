"""Raw dataset -> preprocessed root (``volumes/``, ``slices/``, ``manifest.json``).

One function per raw format, registered in ``PREPROCESSORS``. Every input
volume is fully read and validated (readable, label range) before anything
is written, so a corrupt file stops the job with its name.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from ..errors import DataError
from ..io import write_json
from .h5 import read_case, write_case
from .specs import DatasetSpec, get_spec
from .splits import MISSING_POLICIES, missing_cases_message, read_list, volume_of


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
    train = {volume_of(c) if spec.dim == 2 else c
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


SOURCES: dict[str, Callable[[Path, str], Path]] = {"acdc": acdc_h5_source, "la": la_h5_source}


def preprocess(dataset: str, raw: str | Path, out: str | Path, missing: str = "error",
               split_dir: str | Path | None = None) -> dict:
    """Validate and convert ``raw`` into the preprocessed root ``out``.

    2D datasets also get one h5 per axial slice of every training volume
    (``slices/<volume>_slice_<k>.h5``, k from 1, the names the standard lists use).
    Returns the manifest (also written to ``out/manifest.json``).
    """
    spec = get_spec(dataset)
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing must be one of {MISSING_POLICIES}")
    raw, out = Path(raw), Path(out)
    if not raw.is_dir():
        raise DataError(f"{dataset}: raw data folder {raw} does not exist; see README 'Data' "
                        "for where to get the dataset and where to put it")
    cases, train = listed_cases(spec, Path(split_dir) if split_dir else None)
    source = SOURCES[dataset]
    absent = [c for c in cases if not source(raw, c).is_file()]
    if absent and missing == "error":
        raise DataError(missing_cases_message(spec, absent, len(cases), raw, source(raw, absent[0])))
    present = [c for c in cases if c not in absent]
    if not present:
        raise DataError(f"{dataset}: none of the {len(cases)} listed cases is under {raw}")
    # validate every case before writing anything: a bad file leaves no partial output
    for case in tqdm(present, desc=f"check {dataset}", unit="case"):
        read_case(source(raw, case), spec.n_classes)
    files = {}
    for case in tqdm(present, desc=f"preprocess {dataset}", unit="case"):
        src = source(raw, case)
        image, label, spacing = read_case(src, spec.n_classes)
        spacing = spacing or spec.spacing
        write_case(out / "volumes" / f"{case}.h5", image, label, spacing)
        if spec.dim == 2 and case in train:
            for k in range(image.shape[0]):  # the standard lists number slices from 1
                write_case(out / "slices" / f"{case}_slice_{k + 1}.h5", image[k], label[k],
                           compress=False)
        files[case] = {"source": str(src), "sha256": sha256(src), "shape": list(image.shape),
                       "label_values": sorted(np.unique(label).tolist())}
    manifest = {"dataset": dataset, "raw": str(raw), "missing_cases": missing,
                "preprocessing": ("validated copy (image float32, label uint8, gzip)"
                                  + ("; one file per axial slice for training volumes" if spec.dim == 2 else "")),
                "n_listed": len(cases), "n_present": len(present), "absent": absent,
                "spacing": list(spec.spacing) if spec.spacing else None,
                "cases": files}
    write_json(out / "manifest.json", manifest)
    return manifest
