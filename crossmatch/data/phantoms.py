"""Small synthetic stand-ins ("phantoms") for the real datasets.

``write_phantom(dataset, out)`` writes ``out/raw/`` in exactly the raw layout
and byte format of the real dataset (same keys, dtypes, gzip) and
``out/splits/`` with the shipped list file names and entry formats, so the
real pipeline runs on them unchanged::

    preprocess(dataset, out / "raw", root, split_dir=out / "splits")
    resolve_splits(spec, root, n, split_dir=out / "splits")

(config: ``dataset.raw``, ``dataset.root`` and ``dataset.split_dir``). The
shapes are simple but not trivial (class-dependent intensities on a textured
background, noise, a distractor structure, per-case anatomy), so a briefly
trained model scores well above chance and learning bugs show. Everything
is a pure function of ``seed``; every file is written atomically.

- ``acdc`` (2D, SSL4MIS layout ``raw/patientXXX_frameYY.h5``): per slice an
  LV blood pool (3) in a myocardium ring (2) with an RV crescent (1) beside
  it, shrinking towards the apex (the apical slices have no RV); frame 02 is
  systole (smaller cavities, thicker wall). ``image`` float64 min-max
  normalised to [0, 1], ``label`` uint8, shape slices x H x W.
- ``la`` (3D, UA-MT layout ``raw/<CASE>/mri_norm2.h5``): a bright, smoothly
  deformed atrium-like blob with appendages (1), a less bright tube beside it
  (a distractor, label 0). ``image`` float32 z-scored, ``label`` uint8.
"""
from __future__ import annotations

import string
from pathlib import Path

import h5py
import numpy as np
from scipy import ndimage

from ..io import atomic_path, write_json, write_text
from .specs import DatasetSpec, get_spec

DEFAULT_CASES = {"acdc": 12, "la": 14}          # patients (acdc) / cases (la)
DEFAULT_SIZE = {"acdc": (6, 64, 64), "la": (48, 48, 40)}
GZIP = dict(compression="gzip", compression_opts=4)  # as the distributed files


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std low-frequency texture."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-12)


def _write_h5(path: Path, image: np.ndarray, label: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("image", data=image, **GZIP)
            f.create_dataset("label", data=label, **GZIP)


def _write_list(path: Path, entries: list[str]) -> None:
    write_text(path, "".join(f"{e}\n" for e in entries))


# ------------------------------------------------------------------ ACDC (2D)
def acdc_volume(rng: np.random.Generator, anatomy: dict, size: tuple[int, int, int],
                systole: bool) -> tuple[np.ndarray, np.ndarray]:
    """One cardiac-like volume (slices x H x W, base to apex): float64 image
    in [0, 1] and uint8 label (1 RV, 2 Myo, 3 LV)."""
    n, h, w = size
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    a = anatomy
    r_lv = a["r_lv"] * (0.72 if systole else 1.0)
    wall = a["wall"] * (1.3 if systole else 1.0)
    label = np.zeros(size, np.uint8)
    image = np.zeros(size, np.float64)
    body = ((yy - a["body_c"][0]) / a["body_ax"][0]) ** 2 + ((xx - a["body_c"][1]) / a["body_ax"][1]) ** 2 < 1
    texture = _smooth_noise(rng, size, sigma=h / 12)
    for k in range(n):
        s = 1.0 - 0.55 * k / max(n - 1, 1)                  # apex is smaller
        cy, cx = a["c"] + rng.normal(0, 0.6, 2)
        e = rng.uniform(0.88, 1.12)                          # slight ellipticity
        d = np.hypot((yy - cy) * e, (xx - cx) / e)
        lv, outer = d < r_lv * s, d < (r_lv + wall) * s
        lab = np.zeros((h, w), np.uint8)
        lab[outer] = 2
        lab[lv] = 3
        if k < max(n - a["apex_no_rv"], 1):
            r_rv = a["rv_scale"] * (r_lv + wall) * s * (0.85 if systole else 1.0)
            off = 0.5 * (r_lv + wall) * s + 0.55 * r_rv   # overlaps the wall: a crescent
            ry, rx = cy + off * np.sin(a["rv_angle"]), cx + off * np.cos(a["rv_angle"])
            rv = (np.hypot(yy - ry, xx - rx) < r_rv) & (d >= (r_lv + wall) * s + 1.0)
            lab[rv] = 1
        label[k] = lab
        sl = np.where(body, a["body_int"] + 0.08 * texture[k], 0.03)
        dy, dx = a["distractor"]
        sl[np.hypot(yy - dy, xx - dx) < a["distractor_r"] * s] = a["distractor_int"]  # non-cardiac
        sl[lab == 2] = a["myo_int"]
        sl[lab == 3] = a["lv_int"]
        sl[lab == 1] = a["rv_int"]
        image[k] = ndimage.gaussian_filter(sl, 0.7)                       # partial volume
    image *= 1 + 0.2 * _smooth_noise(rng, size[1:], h / 4)               # coil bias field
    image += rng.normal(0, 0.05, size)
    image = (image - image.min()) / (image.max() - image.min())
    return image, label


def _acdc_anatomy(rng: np.random.Generator, size: tuple[int, int, int]) -> dict:
    _, h, w = size
    c = np.array([h / 2, w / 2]) + rng.uniform(-0.1, 0.1, 2) * [h, w]
    r_lv = rng.uniform(0.085, 0.115) * h
    wall = rng.uniform(0.04, 0.055) * h
    rv_angle = np.pi + rng.uniform(-0.6, 0.6)               # RV on one side, as in real scans
    dist = rng.uniform(0.27, 0.33) * h                      # distractor opposite to the RV
    dang = rv_angle + np.pi + rng.uniform(-0.7, 0.7)
    return {"c": c, "r_lv": r_lv, "wall": wall, "rv_angle": rv_angle,
            "rv_scale": rng.uniform(1.0, 1.3), "apex_no_rv": int(rng.integers(1, 3)),
            "lv_int": rng.uniform(0.75, 0.95), "rv_int": rng.uniform(0.62, 0.8),
            "myo_int": rng.uniform(0.12, 0.22), "body_int": rng.uniform(0.3, 0.42),
            "distractor_int": rng.uniform(0.55, 0.8),
            "distractor": c + dist * np.array([np.sin(dang), np.cos(dang)]),
            "distractor_r": rng.uniform(0.05, 0.08) * h,
            "body_c": c + rng.uniform(-0.05, 0.05, 2) * [h, w],
            "body_ax": rng.uniform(0.42, 0.48, 2) * [h, w]}


def _write_acdc(spec: DatasetSpec, out: Path, n_cases: int, size: tuple[int, ...], seed: int) -> dict:
    if len(size) == 2:
        size = (DEFAULT_SIZE["acdc"][0], *size)
    if len(size) != 3:
        raise ValueError(f"acdc phantom size is (slices, H, W) or (H, W), got {size}")
    if n_cases < 4:
        raise ValueError("acdc phantom needs at least 4 patients (train 2, val 1, test 1)")
    n_hold = max(1, round(n_cases / 6))
    patients = [f"patient{i:03d}" for i in range(1, n_cases + 1)]
    roles = {"train": patients[:n_cases - 2 * n_hold],
             "val": patients[n_cases - 2 * n_hold:n_cases - n_hold], "test": patients[n_cases - n_hold:]}
    for i, p in enumerate(patients):
        rng = np.random.default_rng([seed, 1, i])
        anatomy = _acdc_anatomy(rng, size)
        for f, systole in ((1, False), (2, True)):
            image, label = acdc_volume(rng, anatomy, size, systole)
            _write_h5(out / "raw" / f"{p}_frame{f:02d}.h5", image, label)

    def vols(ps: list[str]) -> list[str]:
        return [f"{p}_frame{f:02d}" for p in ps for f in (1, 2)]

    def slices(ps: list[str]) -> list[str]:
        return [f"data/slices/{v}_slice_{k}.h5" for v in vols(ps) for k in range(1, size[0] + 1)]

    sp = out / "splits"
    _write_list(sp / spec.lists["train"], slices(roles["train"]))
    for role in ("val", "test"):
        _write_list(sp / spec.lists[role], [f"data/{v}.h5" for v in vols(roles[role])])
    order = [roles["train"][i] for i in np.random.default_rng([seed, 2]).permutation(len(roles["train"]))]
    counts = [n for n in spec.labeled_counts if n < len(order)]  # keep >= 1 unlabeled patient
    for n in counts:  # nested: the n-labeled patients include the smaller counts' ones
        _write_list(sp / spec.lists["labeled"].format(n=n), slices(order[:n]))
        _write_list(sp / spec.lists["unlabeled"].format(n=n), slices(order[n:]))
    return {"dataset": "acdc", "seed": seed, "shape": list(size), "patients": {r: list(v) for r, v in roles.items()},
            "cases": {r: vols(v) for r, v in roles.items()}, "labeled_counts": counts}


# -------------------------------------------------------------------- LA (3D)
def la_case_ids(n: int, seed: int) -> list[str]:
    """``n`` distinct ids shaped like the real ones (20 uppercase alphanumerics)."""
    rng = np.random.default_rng([seed, 3])
    alphabet = np.array(list(string.ascii_uppercase + string.digits))
    ids: list[str] = []
    while len(ids) < n:
        c = "".join(rng.choice(alphabet, 20))
        if c not in ids:
            ids.append(c)
    return ids


def la_volume(rng: np.random.Generator, size: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One atrium-like volume: float32 z-scored image and uint8 label {0, 1}."""
    shape = np.array(size, np.float64)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in size], indexing="ij"))
    c = shape / 2 + rng.uniform(-0.08, 0.08, 3) * shape
    axes = rng.uniform(0.2, 0.27, 3) * shape

    def ell(center: np.ndarray, ax: np.ndarray) -> np.ndarray:  # normalised ellipsoid distance
        return np.sqrt((((grid - center[:, None, None, None]) / ax[:, None, None, None]) ** 2).sum(0))

    level = ell(c, axes)
    for _ in range(int(rng.integers(2, 4))):                 # appendages / vein stubs
        v = rng.standard_normal(3)
        v /= np.linalg.norm(v)
        level = np.minimum(level, ell(c + 0.85 * axes * v, axes * rng.uniform(0.3, 0.5, 3)))
    label = (level + 0.12 * _smooth_noise(rng, size, 5.0) < 1).astype(np.uint8)
    # distractor: a tube along the last axis beside the atrium (aorta-like), not labeled
    ang = rng.uniform(0, 2 * np.pi)
    r_tube = rng.uniform(0.06, 0.09) * shape[0]
    off = axes[:2].max() + r_tube + 3
    tube = np.hypot(grid[0] - c[0] - off * np.cos(ang), grid[1] - c[1] - off * np.sin(ang)) < r_tube
    image = 0.35 + 0.15 * _smooth_noise(rng, size, 4.0)
    image[tube & (label == 0)] = 0.75
    image[label == 1] = 1.0 + 0.08 * _smooth_noise(rng, size, 3.0)[label == 1]
    image = ndimage.gaussian_filter(image, 0.8) + rng.normal(0, 0.2, size)
    image = (image - image.mean()) / image.std()
    return image.astype(np.float32), label


def _write_la(spec: DatasetSpec, out: Path, n_cases: int, size: tuple[int, ...], seed: int) -> dict:
    if len(size) != 3:
        raise ValueError(f"la phantom size is (X, Y, Z), got {size}")
    ids = la_case_ids(n_cases, seed)
    n_test = max(1, n_cases // 4)
    n_val = max(1, round(n_cases / 8))
    train, test = sorted(ids[:n_cases - n_test]), sorted(ids[n_cases - n_test:])
    order = [train[i] for i in np.random.default_rng([seed, 2]).permutation(len(train))]
    val, pool = sorted(order[:n_val]), order[n_val:]   # val is carved from train, as the shipped list
    counts = [n for n in spec.labeled_counts if n < len(pool)]  # >= 1 unlabeled non-val case
    if not counts:
        raise ValueError(f"la phantom: {n_cases} cases leave no room for {min(spec.labeled_counts)} "
                         "labeled + 1 unlabeled training cases; use more cases")
    for i, case in enumerate(ids):
        image, label = la_volume(np.random.default_rng([seed, 1, i]), size)
        _write_h5(out / "raw" / case / "mri_norm2.h5", image, label)
    sp = out / "splits"
    _write_list(sp / spec.lists["train"], train)
    _write_list(sp / spec.lists["val"], val)
    _write_list(sp / spec.lists["test"], test)
    for n in counts:  # nested labeled sets; the unlabeled list is the rest of train (val included)
        _write_list(sp / spec.lists["labeled"].format(n=n), sorted(pool[:n]))
        _write_list(sp / spec.lists["unlabeled"].format(n=n), sorted(set(train) - set(pool[:n])))
    return {"dataset": "la", "seed": seed, "shape": list(size),
            "cases": {"train": train, "val": val, "test": test}, "labeled_counts": counts}


WRITERS = {"acdc": _write_acdc, "la": _write_la}


def write_phantom(dataset: str, out: str | Path, n_cases: int | None = None,
                  size: tuple[int, ...] | None = None, seed: int = 0) -> dict:
    """Write the ``dataset`` phantom: ``out/raw/`` (the real raw layout) and
    ``out/splits/`` (lists named and formatted as ``config/splits/<dataset>``).

    ``n_cases``: patients for acdc (default 12: 8 train, 2 val, 2 test; two
    frames each), cases for la (default 14: 11 train of which 2 val, 3 test).
    ``size``: volume shape in the raw files' axis order, acdc
    (slices, H, W) or (H, W) with 6 slices, default (6, 64, 64); la
    (X, Y, Z), default (48, 48, 40).
    Lists are written for the labeled counts of the spec that leave at least
    one unlabeled (non-validation) training case. Returns a summary, also
    written last to ``out/phantom.json`` (the completion marker): cases per
    role (``cases``: volume ids, and ``patients`` for acdc), ``n_cases``
    (volumes per role), ``labeled_counts`` (the counts with lists), paths.
    """
    spec = get_spec(dataset)
    if dataset not in WRITERS:
        raise ValueError(f"no phantom for {dataset!r}; available: {sorted(WRITERS)}")
    out = Path(out)
    size = tuple(int(s) for s in (size or DEFAULT_SIZE[dataset]))
    summary = WRITERS[dataset](spec, out, int(n_cases or DEFAULT_CASES[dataset]), size, seed)
    summary["n_cases"] = {r: len(v) for r, v in summary["cases"].items()}
    summary.update(raw=str(out / "raw"), split_dir=str(out / "splits"))
    write_json(out / "phantom.json", summary)
    return summary
