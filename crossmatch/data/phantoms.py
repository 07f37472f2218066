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
- ``pancreas`` (3D, NIH Pancreas-CT NIfTI layout ``raw/images/PANCREAS_XXXX.nii.gz``
  + ``raw/labels/labelXXXX.nii.gz``): int16 HU volumes with an LPS-style
  affine (so preprocessing must reorient) and anisotropic 0.8 x 0.8 x 2.5 mm
  voxels: air, a body of fat and soft tissue, a spine (bone, clipped away),
  aorta and kidneys (bright distractors, label 0) and a curved, tapering
  pancreas (1) of moderate contrast. The default 80 x 72 x 24 voxels become
  64 x 58 x 60 at 1 mm (then cropped around the pancreas).
- ``isic`` (2D RGB, ISIC 2018 Task 1 layout ``raw/ISIC2018_Task1-2_Training_Input/
  ISIC_<id>.jpg`` + ``raw/ISIC2018_Task1_Training_GroundTruth/ISIC_<id>_segmentation.png``):
  skin-toned JPEGs of about 80 x 100 pixels (sizes vary per image) with a
  brown, irregular lesion (mask 255), dark hair strokes and vignetting
  (distractors), masks 0/255 8-bit PNG.
"""
from __future__ import annotations

import string
from pathlib import Path

import h5py
import numpy as np
from PIL import Image
from scipy import ndimage

from ..io import atomic_path, write_json, write_text
from . import isic, pancreas
from .specs import DatasetSpec, get_spec
from .splits import write_lists

PANCREAS_SPACING = (0.8, 0.8, 2.5)  # mm: thin in-plane pixels, thick slices, as in the real CTs
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
        size = (spec.phantom_size[0], *size)
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


# ---------------------------------------------------------- Pancreas-CT (3D)
def pancreas_volume(rng: np.random.Generator, size: tuple[int, int, int],
                    spacing: tuple[float, float, float] = PANCREAS_SPACING) -> tuple[np.ndarray, np.ndarray]:
    """One abdomen-like CT volume in the raw voxel grid: int16 HU and uint8 label {0, 1}."""
    ext = np.array(size) * spacing                                         # mm
    x, y, z = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(size, spacing)], indexing="ij")
    c = ext / 2 + rng.uniform(-0.05, 0.05, 3) * ext
    body = ((x - c[0]) / (0.46 * ext[0])) ** 2 + ((y - c[1]) / (0.44 * ext[1])) ** 2 < 1
    inner = ((x - c[0]) / (0.40 * ext[0])) ** 2 + ((y - c[1]) / (0.38 * ext[1])) ** 2 < 1
    hu = np.full(size, -1000.0)
    hu[body] = -100.0                                                      # subcutaneous fat
    hu[inner] = 40.0 + 12.0 * _smooth_noise(rng, size, 2.0)[inner]        # soft tissue
    spine = np.hypot(x - c[0], y - (c[1] + 0.28 * ext[1])) < 0.09 * ext[0]
    hu[spine] = 650.0                                                      # bone: clipped to 275
    aorta = np.hypot(x - (c[0] + 0.06 * ext[0]), y - (c[1] + 0.14 * ext[1])) < rng.uniform(4.5, 6.0)
    hu[aorta] = 160.0                                                      # contrast-filled vessel
    for side in (-1, 1):                                                   # kidneys
        kc = c + [side * 0.27 * ext[0], 0.16 * ext[1], rng.uniform(-4, 4)]
        k = ((x - kc[0]) / 7) ** 2 + ((y - kc[1]) / 9) ** 2 + ((z - kc[2]) / 16) ** 2 < 1
        hu[k] = 140.0
    # pancreas: tapering ellipsoids along a curve in front of the aorta, head to tail
    level = np.full(size, np.inf)
    p0 = c + [-0.2 * ext[0], rng.uniform(-2, 2), rng.uniform(-3, 3)]
    bend, tilt = rng.uniform(-6, 6), rng.uniform(-6, 6)
    length = rng.uniform(0.38, 0.46) * ext[0]
    for t in np.linspace(0, 1, 9):
        q = p0 + [t * length, bend * np.sin(np.pi * t) - 0.02 * ext[1], tilt * t]
        r = np.array([6.0, 5.5 - 2.0 * t, 7.0 - 2.5 * t]) * rng.uniform(0.9, 1.1)
        level = np.minimum(level, np.sqrt((((np.stack([x, y, z]) - q[:, None, None, None])
                                            / r[:, None, None, None]) ** 2).sum(0)))
    label = (level + 0.15 * _smooth_noise(rng, size, 1.5) < 1) & ~aorta
    hu[label] = 100.0 + 10.0 * _smooth_noise(rng, size, 1.0)[label]
    hu = ndimage.gaussian_filter(hu, [0.6, 0.6, 0.3]) + rng.normal(0, 12.0, size)
    return np.round(hu).astype(np.int16), label.astype(np.uint8)


def _write_pancreas(spec: DatasetSpec, out: Path, n_cases: int, size: tuple[int, ...], seed: int) -> dict:
    if len(size) != 3:
        raise ValueError(f"pancreas phantom size is (X, Y, Z) voxels, got {size}")
    if n_cases < 6:
        raise ValueError("pancreas phantom needs at least 6 cases (3 labeled + 1 unlabeled + 1 val, 1 test)")
    ids = [f"PANCREAS_{i:04d}" for i in range(1, n_cases + 1)]
    n_test = max(1, n_cases // 5)
    pool = n_cases - n_test - 1                             # training cases outside validation
    counts = tuple(n for n in spec.labeled_counts if n < pool)
    lists = pancreas.split_lists(ids, n_test=n_test, n_val=1, counts=counts, seed=seed)
    # an LPS-style affine, as DICOM converters write: x and y run towards -R and -A
    affine = np.diag([-PANCREAS_SPACING[0], -PANCREAS_SPACING[1], PANCREAS_SPACING[2], 1.0])
    affine[:3, 3] = [120.0, 140.0, -300.0]
    for i, case in enumerate(ids):
        hu, label = pancreas_volume(np.random.default_rng([seed, 1, i]), size)
        image_path, label_path = pancreas.files(out / "raw", case)
        pancreas.write_nifti(image_path, hu, affine)
        pancreas.write_nifti(label_path, label, affine)
    write_lists(lists, out / "splits")
    return {"dataset": "pancreas", "seed": seed, "shape": list(size), "spacing": list(PANCREAS_SPACING),
            "cases": {r: lists[spec.lists[r]] for r in ("train", "val", "test")},
            "labeled_counts": list(counts)}


# ------------------------------------------------------------- ISIC (2D RGB)
def isic_image(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One dermoscopy-like image: uint8 RGB H x W x 3 and mask uint8 {0, 255}."""
    h, w = size
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    skin = np.array([rng.uniform(190, 235), rng.uniform(140, 180), rng.uniform(120, 160)])
    lesion = np.array([rng.uniform(90, 140), rng.uniform(50, 85), rng.uniform(30, 60)])
    cy, cx = h / 2 + rng.uniform(-0.12, 0.12) * h, w / 2 + rng.uniform(-0.12, 0.12) * w
    ay, ax = rng.uniform(0.18, 0.3) * h, rng.uniform(0.18, 0.3) * w
    ang = rng.uniform(0, np.pi)
    u = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)
    v = -(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)
    mask = np.hypot(u / ax, v / ay) + 0.15 * _smooth_noise(rng, size, 4.0) < 1   # irregular border
    img = skin * (1 + 0.04 * _smooth_noise(rng, size, 6.0))[..., None]
    inside = lesion * (1 + 0.15 * _smooth_noise(rng, size, 2.0))[..., None]     # pigment network
    img = np.where(mask[..., None], inside, img)
    for _ in range(int(rng.integers(1, 4))):                                      # hairs, not lesion
        y0, x0, a = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0, np.pi)
        d = np.abs((xx - x0) * np.sin(a) - (yy - y0) * np.cos(a))
        img[d < 0.7] = rng.uniform(20, 50)
    vignette = 1 - 0.35 * (((yy - h / 2) / h) ** 2 + ((xx - w / 2) / w) ** 2) * 4
    img = ndimage.gaussian_filter(img * vignette[..., None], (0.6, 0.6, 0)) + rng.normal(0, 4, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8), (mask * 255).astype(np.uint8)


def _write_isic(spec: DatasetSpec, out: Path, n_cases: int, size: tuple[int, ...], seed: int) -> dict:
    if len(size) != 2:
        raise ValueError(f"isic phantom size is (H, W), got {size}")
    if n_cases < 8:
        raise ValueError("isic phantom needs at least 8 images (70/10/20 % with one labeled and unlabeled)")
    rng = np.random.default_rng([seed, 3])
    ids = [f"ISIC_{i:07d}" for i in sorted(rng.choice(16073, n_cases, replace=False))]
    for i, case in enumerate(ids):
        r = np.random.default_rng([seed, 1, i])
        shape = tuple(int(round(s * r.uniform(0.9, 1.1))) for s in size)   # sizes vary, as the real ones
        image, mask = isic_image(r, shape)
        image_path, mask_path = isic.files(out / "raw", case)
        for path, array, fmt in ((image_path, image, "JPEG"), (mask_path, mask, "PNG")):
            with atomic_path(path) as tmp:
                Image.fromarray(array).save(tmp, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    lists = isic.split_lists(ids, seed=seed)
    write_lists(lists, out / "splits")
    return {"dataset": "isic", "seed": seed, "shape": list(size),
            "cases": {r: lists[spec.lists[r]] for r in ("train", "val", "test")},
            "labeled_counts": list(spec.labeled_counts)}


WRITERS = {"acdc": _write_acdc, "la": _write_la, "pancreas": _write_pancreas, "isic": _write_isic}


def write_phantom(dataset: str, out: str | Path, n_cases: int | None = None,
                  size: tuple[int, ...] | None = None, seed: int = 0) -> dict:
    """Write the ``dataset`` phantom: ``out/raw/`` (the real raw layout) and
    ``out/splits/`` (lists named and formatted as ``crossmatch/splits/<dataset>``).

    ``n_cases``: patients for acdc (default 12: 8 train, 2 val, 2 test; two
    frames each), cases for la (default 14: 11 train of which 2 val, 3 test),
    pancreas (default 10: 8 train of which 1 val, 2 test) and images for
    isic (default 20: 14 train, 2 val, 4 test).
    ``size``: volume shape in the raw files' axis order, acdc
    (slices, H, W) or (H, W) with 6 slices, default (6, 64, 64); la
    (X, Y, Z), default (48, 48, 40); pancreas (X, Y, Z) voxels of
    0.8 x 0.8 x 2.5 mm, default (80, 72, 24); isic (H, W), default (80, 100),
    each image within +-10 %.
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
    size = tuple(int(s) for s in (size or spec.phantom_size))
    summary = WRITERS[dataset](spec, out, int(n_cases or spec.phantom_cases), size, seed)
    summary["n_cases"] = {r: len(v) for r, v in summary["cases"].items()}
    summary.update(raw=str(out / "raw"), split_dir=str(out / "splits"))
    write_json(out / "phantom.json", summary)
    return summary
