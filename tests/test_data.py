import re
from pathlib import Path

import numpy as np
import pytest

from crossmatch.data.h5 import read_case, write_case
from crossmatch.data.preprocess import preprocess
from crossmatch.data.specs import get_spec
from crossmatch.data.splits import carve_validation, read_list, resolve_splits
from crossmatch.errors import DataError

from conftest import mark_preprocessed, needs_shared_data


def test_corrupt_h5_names_the_file(tmp_path):
    good = tmp_path / "good.h5"
    write_case(good, np.zeros((4, 4)), np.zeros((4, 4)))
    bad = tmp_path / "bad.h5"
    bad.write_bytes(good.read_bytes()[:200])  # truncated
    with pytest.raises(DataError, match=re.escape(str(bad)) + ".*corrupt or truncated"):
        read_case(bad, 4)
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    with pytest.raises(DataError, match="junk.h5"):
        read_case(junk, 4)


def test_label_out_of_range_names_the_file(tmp_path):
    path = tmp_path / "case.h5"
    write_case(path, np.zeros((4, 4)), np.full((4, 4), 5))
    with pytest.raises(DataError, match=r"case\.h5: label values must be in \[0, 3\], found \[5\]"):
        read_case(path, 4)


def test_missing_key_and_nan_image(tmp_path):
    path = tmp_path / "nolabel.h5"
    write_case(path, np.zeros((4, 4)), None)
    with pytest.raises(DataError, match="nolabel.h5: expected datasets 'image' and 'label'"):
        read_case(path, 4)
    path = tmp_path / "nan.h5"
    write_case(path, np.full((4, 4), np.nan), np.zeros((4, 4)))
    with pytest.raises(DataError, match="nan.h5: image contains NaN"):
        read_case(path, 4)


def test_split_entry_missing_on_disk_names_the_file(acdc_root):
    spec = get_spec("acdc")
    gone = Path(acdc_root["root"]) / "slices" / "patient001_frame01_slice_2.h5"
    gone.unlink()
    with pytest.raises(DataError, match="patient001_frame01_slice_2.h5"):
        resolve_splits(spec, acdc_root["root"], 3, overrides=acdc_root["splits"])


def test_la_missing_cases_message_and_subset(tmp_path):
    """Only 9 of the 100 listed LA cases exist: the error says how many and
    which option runs on the present ones; the subset option does."""
    spec = get_spec("la")
    train = read_list(spec.split_dir / "train.list")
    test = read_list(spec.split_dir / "test.list")
    for case in train[:8] + test[:1]:
        write_case(tmp_path / "volumes" / f"{case}.h5", np.zeros((8, 8, 8)), np.zeros((8, 8, 8)))
    mark_preprocessed(tmp_path, "la")
    with pytest.raises(DataError, match=r"91 of 100 cases .* missing .*--missing-cases subset"):
        resolve_splits(spec, tmp_path, 4)
    with pytest.warns(UserWarning, match="carved"):
        s = resolve_splits(spec, tmp_path, 4, missing="subset")
    assert len(s.labeled) == 4 and len(s.val) == 1 and len(s.unlabeled) == 3 and len(s.test) == 1
    assert not {p.name for p in s.val} & {p.name for p in s.labeled + s.unlabeled}
    assert any("91 of 100" in n for n in s.notes)


def test_shipped_la_validation_is_carved_from_train_outside_every_labeled_list():
    spec = get_spec("la")
    train = read_list(spec.split_dir / "train.list")
    val = read_list(spec.split_dir / "val.list")
    labeled16 = set(read_list(spec.split_dir / "train_16_label.list"))
    assert val == carve_validation(train, labeled16)
    assert set(val) <= set(train) and not set(val) & labeled16
    assert not set(val) & set(read_list(spec.split_dir / "test.list"))


def test_acdc_lists_are_the_first_n_patients_of_train_slices():
    """1/3/7 (shipped verbatim) and 14 (built by us) follow one rule."""
    spec = get_spec("acdc")
    slices = read_list(spec.split_dir / "train_slices.txt")
    patient = lambda s: s.split("_")[0]  # noqa: E731
    order = list(dict.fromkeys(patient(s) for s in slices))
    assert len(order) == 70
    for n in (1, 3, 7, 14):
        lab = read_list(spec.split_dir / f"{n}/labeled.txt")
        unl = read_list(spec.split_dir / f"{n}/unlabeled.txt")
        assert lab == [s for s in slices if patient(s) in order[:n]]
        assert unl == [s for s in slices if patient(s) not in order[:n]]
    val = {patient(c) for c in read_list(spec.split_dir / "val.txt")}
    test = {patient(c) for c in read_list(spec.split_dir / "test.txt")}
    assert len(val) == 10 and len(test) == 20 and not (val | test) & set(order)


def test_preprocess_la_stops_on_a_corrupt_case(tmp_path):
    src = needs_shared_data("LA")
    raw = tmp_path / "LA"
    cases = sorted(p.name for p in src.iterdir() if p.is_dir())
    for c in cases:
        (raw / c).mkdir(parents=True)
        (raw / c / "mri_norm2.h5").symlink_to(src / c / "mri_norm2.h5")
    victim = raw / cases[0] / "mri_norm2.h5"
    victim.unlink()
    victim.write_bytes((src / cases[0] / "mri_norm2.h5").read_bytes()[:5000])
    with pytest.raises(DataError, match=re.escape(str(victim))):
        preprocess("la", raw, tmp_path / "out", missing="subset")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_preprocess_la_without_subset_explains(tmp_path):
    src = needs_shared_data("LA")
    with pytest.raises(DataError, match=r"84 of 100 cases .* --missing-cases subset"):
        preprocess("la", src, tmp_path / "out")


def test_preprocess_acdc_writes_slices_numbered_from_one(tmp_path):
    src = needs_shared_data("ACDC")
    raw = tmp_path / "ACDC"
    raw.mkdir()
    for f in src.glob("*.h5"):
        (raw / f.name).symlink_to(f)
    m = preprocess("acdc", raw, tmp_path / "out")
    assert m["n_present"] == 200
    image, label, _ = read_case(src / "patient099_frame01.h5", 4)
    s1, l1, _ = read_case(tmp_path / "out" / "slices" / "patient099_frame01_slice_1.h5", 4)
    assert np.allclose(s1, image[0]) and np.array_equal(l1, label[0])
    n = len(list((tmp_path / "out" / "slices").glob("*.h5")))
    assert n == len(read_list(get_spec("acdc").split_dir / "train_slices.txt"))


def test_acdc_image_outside_the_unit_range_names_the_file(tmp_path):
    """The SSL4MIS ACDC volumes are min-max normalised to [0, 1]; a volume in
    another range (raw intensities, 0-255) is refused before anything is written."""
    from crossmatch.data.phantoms import write_phantom
    write_phantom("acdc", tmp_path / "ph", n_cases=4, seed=0)
    victim = sorted((tmp_path / "ph" / "raw").glob("*.h5"))[1]
    image, label, _ = read_case(victim, 4)
    write_case(victim, image * 255.0, label)
    with pytest.raises(DataError, match=re.escape(str(victim)) + r": image values span \[0, 2\d\d\.?\d*\], "
                       r"outside \[0, 1\]: the acdc raw format is min-max normalised"):
        preprocess("acdc", tmp_path / "ph" / "raw", tmp_path / "out", split_dir=tmp_path / "ph" / "splits")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_splits_without_a_preprocessed_root_say_to_preprocess(tmp_path):
    with pytest.raises(DataError, match=r"acdc: no preprocessed data at .*absent \(no volumes/ folder\): "
                       r"preprocess the raw dataset first, `crossmatch preprocess --dataset acdc"):
        resolve_splits(get_spec("acdc"), tmp_path / "absent", 3)


@pytest.mark.parametrize("text,message", [("\n\n", "is empty: list one case per line"),
                                          ("a.h5\nb.h5\na.h5\n", "names 1 case(s) twice, e.g. a")])
def test_a_bad_split_list_is_refused_naming_the_file(tmp_path, text, message):
    from crossmatch.data.splits import read_list
    path = tmp_path / "labeled.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=re.escape(f"split list {path} ") + ".*" + re.escape(message)):
        read_list(path)


def test_a_root_whose_preprocessing_did_not_finish_is_refused(tmp_path):
    """The manifest is written last (and removed when preprocessing starts
    again): without it the root is incomplete, whatever its files say."""
    spec = get_spec("la")
    for case in read_list(spec.split_dir / "train.list")[:8]:
        write_case(tmp_path / "volumes" / f"{case}.h5", np.zeros((8, 8, 8)), np.zeros((8, 8, 8)))
    with pytest.raises(DataError, match=re.escape(f"la: preprocessing of {tmp_path} did not finish (no "
                                                  "manifest.json): run `crossmatch preprocess` again")):
        resolve_splits(spec, tmp_path, 4, missing="subset")
