"""Split lists: reading, checking against the disk, carving validation.

List files are shipped in ``crossmatch/splits/<dataset>/`` verbatim from the
community (SSL4MIS/UniMatch for ACDC, UA-MT for LA), or generated once from a
recorded seed by ``generate_lists`` (Pancreas-CT, ISIC 2018; see
``crossmatch.data.pancreas`` and ``crossmatch.data.isic``). Entries are
reduced to case ids (``data/slices/patient099_frame01_slice_15.h5`` ->
``patient099_frame01_slice_15``). Training lists of 2D volume datasets name
slices, every other list names volumes (or, for ISIC, images).
"""
from __future__ import annotations

import random
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..io import write_text
from .specs import DatasetSpec

MISSING_POLICIES = ("error", "subset")
SPLIT_ROLES = ("labeled", "unlabeled", "val", "test", "train")
VAL_SEED = 2026        # the seed that carved crossmatch/splits/la/val.list
VAL_SIZE = 8


MANIFEST = "manifest.json"   # a preprocessed root's record, written last: the root is complete


def case_id(entry: str) -> str:
    name = entry.strip().rsplit("/", 1)[-1]
    return name[:-3] if name.endswith(".h5") else name


def read_list(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split list {path} not found")
    ids = [case_id(line) for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"split list {path} is empty: list one case per line, or delete it to use the "
                        "standard list")
    seen: set[str] = set()
    twice = [c for c in ids if c in seen or seen.add(c)]
    if twice:
        raise DataError(f"split list {path} names {len(twice)} case(s) twice, e.g. {twice[0]}: "
                        "each case once")
    return ids


def volume_of(slice_id: str) -> str:
    """``patient099_frame01_slice_15`` -> ``patient099_frame01``."""
    return slice_id.rsplit("_slice_", 1)[0]


def carve_validation(train: list[str], exclude: set[str], n: int = VAL_SIZE,
                     seed: int = VAL_SEED) -> list[str]:
    """Pick ``n`` validation cases from ``train`` minus ``exclude`` (never test)."""
    pool = [c for c in train if c not in exclude]
    if len(pool) < n:
        raise DataError(f"cannot carve {n} validation cases from {len(pool)} candidates")
    return sorted(random.Random(seed).sample(pool, n))


def generate_lists(spec: DatasetSpec, ids: list[str], n_test: int, n_val: int,
                   n_labeled: dict[int, int], seed: int, val_from_train: bool,
                   keep_out: frozenset[str] = frozenset()) -> dict[str, list[str]]:
    """The split lists of a dataset without community lists, by file name.

    A permutation of the sorted ``ids`` drawn with ``seed`` gives ``test``
    (its first ``n_test``) and the training cases; the labeled sets are the
    first ``n_labeled[count]`` of a second seeded permutation of the training
    cases (nested: a larger set holds the smaller ones). Validation, never
    from test, is either carved as LA's was (``val_from_train``: from the
    training cases outside the largest labeled set, with ``carve_validation``
    and its seed; it stays in ``train`` and the unlabeled lists, and
    ``resolve_splits`` removes it from the pool) or held out as a separate
    ``n_val`` (``val_from_train=False``: train / val / test). ``keep_out``
    cases (ones some copies of the data lack) are never labeled or
    validation, so a subset copy keeps the labeled counts. Lists are sorted.
    """
    ids = sorted(set(ids))
    if len(ids) < n_test + n_val + 1:
        raise DataError(f"{spec.name}: {len(ids)} cases are too few for {n_test} test and {n_val} validation")
    rng = random.Random(seed)
    order = rng.sample(ids, len(ids))
    test, rest = order[:n_test], order[n_test:]
    val: list[str] = []
    if not val_from_train:
        val, rest = rest[:n_val], rest[n_val:]
    train = sorted(rest)
    pool = [c for c in rng.sample(train, len(train)) if c not in keep_out]
    if any(k < 1 or k >= len(pool) - (n_val if val_from_train else 0) for k in n_labeled.values()):
        raise DataError(f"{spec.name}: labeled sizes {n_labeled} leave no unlabeled training case "
                        f"among {len(train)}")
    labeled = {n: pool[:k] for n, k in n_labeled.items()}
    if val_from_train:
        val = carve_validation(sorted(pool), set(max(labeled.values(), key=len, default=[])), n_val)
    lists = {spec.lists["train"]: train, spec.lists["val"]: sorted(val), spec.lists["test"]: sorted(test)}
    for n, lab in labeled.items():
        lists[spec.lists["labeled"].format(n=n)] = sorted(lab)
        lists[spec.lists["unlabeled"].format(n=n)] = sorted(set(train) - set(lab))
    return lists


def write_lists(lists: dict[str, list[str]], out: str | Path) -> None:
    """Write ``generate_lists``' lists under ``out`` (one entry per line, atomically)."""
    for name, entries in lists.items():
        write_text(Path(out) / name, "".join(f"{e}\n" for e in entries))


@dataclass
class Splits:
    """Case files per role. ``labeled``/``unlabeled`` are training items
    (slices for 2D datasets), ``val``/``test`` are volumes."""
    labeled: list[Path]
    unlabeled: list[Path]
    val: list[Path]
    test: list[Path]
    notes: list[str]


def _paths(root: Path, ids: list[str], sub: str) -> list[Path]:
    return [root / sub / f"{i}.h5" for i in ids]


def missing_cases_message(spec: DatasetSpec, missing: list[str], total: int, where: Path,
                          example: Path | None = None) -> str:
    """The one message for listed cases absent on disk: how many, and what to do."""
    present = total - len(missing)
    expected = f", expected e.g. {example}" if example else ""
    return (f"{spec.name}: {len(missing)} of {total} cases named in the split lists are missing "
            f"under {where} (first: {', '.join(missing[:3])}{expected}). Get the complete dataset "
            f"(docs/data.md), or run on the {present} present cases with "
            f"--missing-cases subset (config key dataset.missing_cases: subset).")


def resolve_splits(spec: DatasetSpec, root: str | Path, labeled: int | str,
                   missing: str = "error", overrides: dict[str, str] | None = None,
                   split_dir: str | Path | None = None) -> Splits:
    """Resolve the lists of one experiment against the preprocessed ``root``.

    ``labeled`` is a labeled count of ``spec.labeled_counts`` or ``"all"``
    (fully supervised: every training case labeled). ``overrides`` maps a role
    (labeled, unlabeled, val, test) to another list file; ``split_dir``
    replaces the shipped folder of lists (same file names, e.g. the
    synthetic phantoms' lists). Validation cases
    are removed from the unlabeled pool. With ``missing="subset"`` absent
    cases are dropped (and, if no validation case is left, validation is
    carved from the present unlabeled cases, with a note); with ``"error"``
    a DataError says how many are missing and how to proceed.
    """
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing_cases must be one of {MISSING_POLICIES}, got {missing!r}")
    root, overrides = Path(root), overrides or {}
    if not (root / "volumes").is_dir():
        raise DataError(f"{spec.name}: no preprocessed data at {root} (no volumes/ folder): preprocess "
                        f"the raw dataset first, `crossmatch preprocess --dataset {spec.name} --raw <raw folder> "
                        f"--out {root}` (or `crossmatch preprocess --config <experiment.yaml>`), or set "
                        "dataset.root to where it was written; the workflow does this itself")
    if not (root / MANIFEST).is_file():   # written last by preprocess, removed when it starts again
        raise DataError(f"{spec.name}: preprocessing of {root} did not finish (no {MANIFEST}): run "
                        "`crossmatch preprocess` again (the workflow does: delete the folder and rerun)")
    split_dir = Path(split_dir) if split_dir else spec.split_dir
    if labeled != "all" and int(labeled) not in spec.labeled_counts and "labeled" not in overrides:
        raise DataError(f"{spec.name}: no split lists for {labeled} labeled cases; "
                        f"choose one of {list(spec.labeled_counts)} or 'all'")

    def lst(role: str) -> list[str]:
        if role in overrides:
            return read_list(overrides[role])
        return read_list(split_dir / spec.lists[role].format(n=labeled))

    if labeled == "all":
        lab, unl = lst("train"), []
    else:
        lab, unl = lst("labeled"), lst("unlabeled")
    val, test = lst("val"), lst("test")
    val_vols = set(val)
    train_sub = spec.train_subdir
    owner = volume_of if train_sub == "slices" else (lambda c: c)
    lab = [c for c in lab if owner(c) not in val_vols]
    unl = [c for c in unl if owner(c) not in val_vols]

    groups = {"labeled": (lab, train_sub), "unlabeled": (unl, train_sub),
              "val": (val, "volumes"), "test": (test, "volumes")}
    # count missing per case (a 2D volume is missing if its slices are)
    named = {owner(c) if sub == "slices" else c for ids, sub in groups.values() for c in ids}
    absent = sorted(c for c in named if not (root / "volumes" / f"{c}.h5").is_file())
    notes: list[str] = []
    if absent and missing == "error":
        raise DataError(missing_cases_message(spec, absent, len(named), root / "volumes"))
    paths = {}
    for role, (ids, sub) in groups.items():
        p = _paths(root, ids, sub)
        keep = [x for x in p if x.is_file()]
        if len(keep) < len(p) and missing == "error":
            gone = [str(x) for x in p if not x.is_file()]
            raise DataError(f"{spec.name}: {len(gone)} {role} files missing, e.g. {gone[0]}; "
                            "re-run `crossmatch preprocess`")
        paths[role] = keep
    if absent:
        notes.append(f"missing_cases=subset: {len(absent)} of {len(named)} listed cases absent; "
                     f"using {len(named) - len(absent)}")
    if not paths["val"] and missing == "subset":
        # carve from the unlabeled pool; fully supervised runs have none, so from the labeled one
        role = "unlabeled" if paths["unlabeled"] else "labeled"
        vol_ids = sorted({owner(case_id(p.name)) for p in paths[role]})
        if len(vol_ids) < 2:
            raise DataError(f"{spec.name}: no validation case present and too few {role} cases "
                            f"({len(vol_ids)}) to carve one from")
        n = max(1, len(vol_ids) // 4)
        carved = set(carve_validation(vol_ids, set(), n))
        paths["val"] = _paths(root, sorted(carved), "volumes")
        paths[role] = [p for p in paths[role] if owner(case_id(p.name)) not in carved]
        notes.append(f"no validation case present: carved {n} from the present {role} cases "
                     f"(seed {VAL_SEED}): {sorted(carved)}")
        warnings.warn(notes[-1])
    for role in ("labeled", "val", "test"):
        if not paths[role]:
            raise DataError(f"{spec.name}: the {role} split is empty under {root}")
    return Splits(paths["labeled"], paths["unlabeled"], paths["val"], paths["test"], notes)
