"""Tests for crossmatch.metrics with analytically derived expectations.

Geometry used throughout: in a 40^3 array, gt is the cube [10,20)^3 and pred
the same cube shifted by +2 voxels along axis 0, i.e. [12,22) x [10,20)^2.

Overlap: 8 x 10 x 10 = 800 voxels, Dice = 2*800/(1000+1000) = 0.8,
Jaccard = 800/(1000+1000-800) = 2/3.

Surfaces (medpy: voxels removed by one erosion with the 6-neighbourhood):
each 10^3 cube has 1000 - 8^3 = 488 surface voxels. In cube-local
coordinates (a, b, c) in {0..9}^3, with the other cube shifted by +2 along a:

* "side" voxels (b or c in {0, 9}): 36 per a-slice, 360 in total.
  - a in 2..9 (288 voxels): the voxel is itself on the other cube's side face
    -> distance 0.
  - a = 1 (36 voxels): nearest is the other cube's a=2 face -> 1.
  - a = 0 (36 voxels): -> 2.
* end cap a = 0, b,c in 1..8 (64 voxels): every voxel of the other cube has
  a >= 2, and (2, b, c) is on its face -> 2.
* end cap a = 9, b,c in 1..8 (64 voxels), inside the other cube: nearest
  surface is either its far face a = 11 (distance 2 along axis 0) or its side
  faces (distance d = min(b, 9-b, c, 9-c) in {1..4} along axis 1/2)
  -> min(2, d): the outer ring d = 1 (64 - 36 = 28 voxels) -> 1, the other
  36 -> 2.

Directed pred->gt distances: 288 x 0, 64 x 1, 136 x 2 (sum 336 over 488), and
gt->pred is the mirror image (reflection a -> 9-a swaps the cubes), so
ASD = 336/488 = 42/61. HD95 pools both directions: 976 values, 576 zeros,
128 ones, 272 twos; numpy's percentile index 0.95*975 = 926.25 lies in the
twos (indices 704..975) -> HD95 = 2.

Spacing (2, 1, 1) (shift axis twice as coarse): distances along axis 0 double
but the lateral distances d of the a = 9 cap do not, so that cap becomes
min(4, d): 28 x 1, 20 x 2, 12 x 3, 4 x 4 (rings of the 8x8 cap). Directed sum:
36*2 + 36*4 + 64*4 + (28*1 + 20*2 + 12*3 + 4*4) = 592 -> ASD = 592/488 = 74/61
(*not* twice 42/61). Pooled: 576 x 0, 56 x 1, 112 x 2, 24 x 3, 208 x 4; index
926.25 is within the fours (768..975) -> HD95 = 4 (which does double).
Isotropic spacing (2, 2, 2) scales every distance: HD95 4, ASD 84/61.

2D analogue (10x10 squares in 40x40, shift 2): 36 surface pixels per square;
directed distances 16 x 0, 4 x 1, 16 x 2 -> ASD = 36/36 = 1; pooled 72
values, index 0.95*71 = 67.45 falls in the twos (40..71) -> HD95 = 2.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from crossmatch import metrics
from crossmatch.metrics import EMPTY_POLICY, METRIC_KEYS, case_metrics, summarise


def _cubes(n_classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    gt = np.zeros((40, 40, 40), dtype=np.uint8)
    pred = np.zeros_like(gt)
    gt[10:20, 10:20, 10:20] = 1
    pred[12:22, 10:20, 10:20] = 1
    return pred, gt


def _brute_force_directed(src: np.ndarray, dst: np.ndarray, spacing) -> np.ndarray:
    """Independent (non-scipy) surface distances src surface -> dst surface."""

    def surface(m: np.ndarray) -> np.ndarray:
        p = np.pad(m, 1)
        interior = m.copy()
        for ax in range(m.ndim):
            for sh in (-1, 1):
                interior &= np.roll(p, sh, axis=ax)[(slice(1, -1),) * m.ndim]
        return np.argwhere(m & ~interior).astype(float)

    s, d = surface(src.astype(bool)) * spacing, surface(dst.astype(bool)) * spacing
    return np.sqrt(((s[:, None, :] - d[None, :, :]) ** 2).sum(-1)).min(1)


def test_hand_derivation_matches_brute_force_histogram():
    # Checks the counting argument in the module docstring without medpy/scipy.
    pred, gt = _cubes()
    d = _brute_force_directed(pred, gt, np.array([1.0, 1.0, 1.0]))
    assert d.size == 488
    vals, counts = np.unique(d, return_counts=True)
    assert dict(zip(vals.tolist(), counts.tolist())) == {0.0: 288, 1.0: 64, 2.0: 136}
    assert d.sum() == 336
    d = _brute_force_directed(pred, gt, np.array([2.0, 1.0, 1.0]))
    vals, counts = np.unique(d, return_counts=True)
    assert dict(zip(vals.tolist(), counts.tolist())) == {0.0: 288, 1.0: 28, 2.0: 56, 3.0: 12, 4.0: 104}
    assert d.sum() == 592


def test_offset_cubes_voxel_units():
    pred, gt = _cubes()
    (row,) = case_metrics(pred, gt, n_classes=2, spacing=None)
    assert row["class"] == 1
    assert row["dice"] == pytest.approx(0.8)
    assert row["jaccard"] == pytest.approx(800 / 1200)
    assert row["hd95_vox"] == pytest.approx(2.0)
    assert row["asd_vox"] == pytest.approx(42 / 61)
    assert math.isnan(row["hd95_mm"]) and math.isnan(row["asd_mm"])
    assert row["empty_pred"] is False and row["empty_gt"] is False
    # The shift is symmetric, so swapping pred/gt changes nothing.
    (swapped,) = case_metrics(gt, pred, n_classes=2, spacing=None)
    assert swapped["asd_vox"] == pytest.approx(42 / 61)


def test_offset_cubes_anisotropic_spacing():
    pred, gt = _cubes()
    (row,) = case_metrics(pred, gt, n_classes=2, spacing=(2.0, 1.0, 1.0))
    assert row["hd95_mm"] == pytest.approx(4.0)  # doubles
    assert row["asd_mm"] == pytest.approx(74 / 61)  # does not double: lateral distances unchanged
    assert row["hd95_vox"] == pytest.approx(2.0)  # voxel units ignore spacing
    assert row["asd_vox"] == pytest.approx(42 / 61)


def test_offset_cubes_isotropic_spacing_doubles_distances():
    pred, gt = _cubes()
    (row,) = case_metrics(pred, gt, n_classes=2, spacing=(2.0, 2.0, 2.0))
    assert row["hd95_mm"] == pytest.approx(4.0)
    assert row["asd_mm"] == pytest.approx(2 * 42 / 61)


def test_offset_squares_2d():
    gt = np.zeros((40, 40), dtype=np.int64)
    pred = np.zeros_like(gt)
    gt[10:20, 10:20] = 1
    pred[12:22, 10:20] = 1
    (row,) = case_metrics(pred, gt, n_classes=2, spacing=(0.5, 0.5))
    assert row["dice"] == pytest.approx(0.8)
    assert row["jaccard"] == pytest.approx(2 / 3)
    assert row["hd95_vox"] == pytest.approx(2.0)
    assert row["asd_vox"] == pytest.approx(1.0)
    assert row["hd95_mm"] == pytest.approx(1.0)
    assert row["asd_mm"] == pytest.approx(0.5)


def test_empty_policy_multiclass():
    pred, gt = _cubes()
    # class 2: absent from both; class 3: missed (gt only); class 4: hallucinated.
    gt[30:35, 30:35, 30:35] = 3
    pred[0:3, 0:3, 0:3] = 4
    rows = case_metrics(pred, gt, n_classes=5, spacing=(2.0, 1.0, 1.0))
    assert [r["class"] for r in rows] == [1, 2, 3, 4]
    both, missed, halluc = rows[1], rows[2], rows[3]

    assert both["empty_pred"] and both["empty_gt"]
    assert both["dice"] == 1.0 and both["jaccard"] == 1.0
    for k in ("hd95_vox", "asd_vox", "hd95_mm", "asd_mm"):
        assert both[k] == 0.0

    diag_vox = 40 * math.sqrt(3)  # sqrt(40^2 * 3)
    diag_mm = 40 * math.sqrt(6)  # sqrt(80^2 + 40^2 + 40^2)
    assert missed["empty_pred"] and not missed["empty_gt"]
    assert not halluc["empty_pred"] and halluc["empty_gt"]
    for r in (missed, halluc):
        assert r["dice"] == 0.0 and r["jaccard"] == 0.0
        assert r["hd95_vox"] == pytest.approx(diag_vox) and r["asd_vox"] == pytest.approx(diag_vox)
        assert r["hd95_mm"] == pytest.approx(diag_mm) and r["asd_mm"] == pytest.approx(diag_mm)
    # class 1 is unaffected by the other labels
    assert rows[0]["dice"] == pytest.approx(0.8)


def test_empty_policy_without_spacing_and_documented():
    z = np.zeros((4, 5, 6), dtype=np.int32)
    one = z.copy()
    one[1, 1, 1] = 1
    (both,) = case_metrics(z, z, 2, None)
    (missed,) = case_metrics(z, one, 2, None)
    assert both["dice"] == 1.0 and math.isnan(both["hd95_mm"])
    assert missed["hd95_vox"] == pytest.approx(math.sqrt(16 + 25 + 36))
    assert math.isnan(missed["asd_mm"])
    # The README quotes EMPTY_POLICY; the module docstring states the same rules.
    assert "both prediction and ground truth empty -> dice = 1" in EMPTY_POLICY
    assert "exactly one of them empty -> dice = 0" in EMPTY_POLICY
    doc = " ".join(metrics.__doc__.split())
    assert "both prediction and ground truth empty -> dice = 1, jaccard = 1, hd95 = 0, asd = 0" in doc
    assert "exactly one of them empty -> dice = 0, jaccard = 0, and hd95 = asd = the length of the image diagonal" in doc


def test_float_labels_accepted_if_integral():
    pred, gt = _cubes()
    (row,) = case_metrics(pred.astype(np.float32), gt.astype(np.float64), 2, None)
    assert row["dice"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="integer"):
        case_metrics(pred + 0.5, gt, 2, None)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"shape mismatch: pred \(4, 4\) vs gt \(4, 5\)"):
        case_metrics(np.zeros((4, 4), int), np.zeros((4, 5), int), 2, None)


@pytest.mark.parametrize("bad_value", [-1, 3])
def test_out_of_range_labels_raise(bad_value):
    gt = np.zeros((5, 5), int)
    pred = np.zeros((5, 5), int)
    gt[0, 0] = bad_value
    with pytest.raises(ValueError, match=r"gt labels out of range \[0, 3\)"):
        case_metrics(pred, gt, 3, None)
    with pytest.raises(ValueError, match=r"pred labels out of range"):
        case_metrics(gt, pred, 3, None)


def test_other_bad_arguments():
    a = np.zeros((5, 5, 5), int)
    with pytest.raises(ValueError, match="spacing has 2 entries"):
        case_metrics(a, a, 2, (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing must be finite and positive"):
        case_metrics(a, a, 2, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="n_classes"):
        case_metrics(a, a, 1, None)
    with pytest.raises(ValueError, match="2D or 3D"):
        case_metrics(np.zeros(5, int), np.zeros(5, int), 2, None)


def _row(case, cls, dice, hd_mm=float("nan"), empty_pred=False, empty_gt=False):
    return {
        "case": case,
        "class": cls,
        "dice": dice,
        "jaccard": dice / (2 - dice),
        "hd95_vox": 10 * dice,
        "asd_vox": 1.0,
        "hd95_mm": hd_mm,
        "asd_mm": float("nan"),
        "empty_pred": empty_pred,
        "empty_gt": empty_gt,
    }


def test_summarise_hand_made_rows():
    rows = [
        _row("a", 1, 0.8, hd_mm=2.0),
        _row("a", 2, 0.6, hd_mm=4.0, empty_gt=True),
        _row("b", 1, 0.4),
        _row("b", 2, 1.0, empty_pred=True, empty_gt=True),
    ]
    s = summarise(rows)
    assert s["n_cases"] == 2 and s["n_empty_pred"] == 1 and s["n_empty_gt"] == 2
    assert set(s["per_class"]) == {"1", "2"}

    c1, c2 = s["per_class"]["1"]["dice"], s["per_class"]["2"]["dice"]
    assert c1["mean"] == pytest.approx(0.6) and c1["std"] == pytest.approx(0.2) and c1["n"] == 2
    assert c2["mean"] == pytest.approx(0.8) and c2["std"] == pytest.approx(0.2)
    # per-case class means are 0.7 and 0.7 -> std 0 (std over all four values would be 0.224)
    assert s["mean"]["dice"]["mean"] == pytest.approx(0.7)
    assert s["mean"]["dice"]["std"] == pytest.approx(0.0)
    assert s["mean"]["hd95_vox"]["mean"] == pytest.approx(7.0)
    assert s["mean"]["asd_vox"] == {"mean": 1.0, "std": 0.0, "n": 2}

    # NaN-safe: case b has no mm values -> statistics over case a only.
    assert s["per_class"]["1"]["hd95_mm"] == {"mean": 2.0, "std": 0.0, "n": 1}
    assert s["mean"]["hd95_mm"] == {"mean": 3.0, "std": 0.0, "n": 1}
    # all-NaN metric -> None
    assert s["mean"]["asd_mm"] == {"mean": None, "std": None, "n": 0}
    assert s["per_class"]["2"]["asd_mm"]["mean"] is None

    assert set(s["mean"]) == set(METRIC_KEYS)
    for v in (x for cls in s["per_class"].values() for m in cls.values() for x in m.values()):
        assert v is None or type(v) in (float, int)
    json.dumps(s, allow_nan=False)  # strict JSON


def test_summarise_accepts_case_metrics_output():
    pred, gt = _cubes()
    rows = [dict(r, case=k) for k in ("x", "y") for r in case_metrics(pred, gt, 2, (1, 1, 1))]
    s = summarise(rows)
    assert s["n_cases"] == 2
    assert s["mean"]["dice"]["mean"] == pytest.approx(0.8)
    assert s["mean"]["asd_mm"]["mean"] == pytest.approx(42 / 61)


def test_summarise_rejects_inconsistent_rows():
    with pytest.raises(ValueError, match="at least one row"):
        summarise([])
    with pytest.raises(ValueError, match="duplicate row"):
        summarise([_row("a", 1, 0.5), _row("a", 1, 0.5)])
    with pytest.raises(ValueError, match="has classes"):
        summarise([_row("a", 1, 0.5), _row("a", 2, 0.5), _row("b", 1, 0.5)])
    bad = _row("a", 1, 0.5)
    del bad["jaccard"]
    with pytest.raises(ValueError, match="missing keys"):
        summarise([bad])


def test_dice_is_medpys_and_validation_uses_it(monkeypatch):
    """One Dice for reporting and for checkpoint selection: equal to medpy's dc on
    random non-empty masks, and the empty-mask policy where medpy has none."""
    from medpy.metric import binary as mb

    from crossmatch import evaluate
    from crossmatch.metrics import dice

    rng = np.random.default_rng(0)
    for _ in range(20):
        p, g = rng.random((9, 11, 7)) > 0.6, rng.random((9, 11, 7)) > 0.4
        assert dice(p, g) == pytest.approx(float(mb.dc(p, g)), abs=1e-12)
    empty = np.zeros((4, 4), bool)
    assert dice(empty, empty) == 1.0 and dice(empty, ~empty) == 0.0

    # validation (mean_dice) scores with this Dice: the mean over cases of the
    # mean foreground Dice (read_case hands the case name on as its "image")
    rng = np.random.default_rng(1)
    cases = {name: (rng.integers(0, 4, (3, 8, 8)), rng.integers(0, 4, (3, 8, 8))) for name in "ab"}
    calls = []
    monkeypatch.setattr(evaluate, "read_case", lambda path, n: (path, cases[path][1], None))
    monkeypatch.setattr(evaluate, "predict_volume", lambda model, image, *args: cases[image][0])
    monkeypatch.setattr(evaluate, "dice", lambda p, g: calls.append(1) or dice(p, g))
    score = evaluate.mean_dice(None, type("Spec", (), {"n_classes": 4})(), {}, list(cases), None)
    expected = np.mean([np.mean([mb.dc(pr == c, gt == c) for c in (1, 2, 3)]) for pr, gt in cases.values()])
    assert score == pytest.approx(expected) and len(calls) == 6
