"""The experiment grid of the workflow: the workflow config -> experiments and tables.

One function, ``expand``, turns the workflow config (``config/*.yaml``,
checked by ``workflow/schemas/config.schema.yaml``) into

- experiments: every run, keyed by its experiment id
  (``crossmatch.config.experiment_id``: the path spells the settings), each
  with the settings the workflow config gives it (``raw``) and its resolved
  config (``config``, what the run's ``experiment.yaml`` holds);
  a run shared by several tables (the default-setting run of an ablation is
  also a comparison cell) exists once;
- tables: the comparison table of each dataset (method rows, from
  ``datasets.<name>.methods`` or else ``comparison.methods``, x
  labeled-count columns) and one table per ablation (variant rows), each
  cell listing the run ids of its seeds.

Snakemake (``workflow/rules/common.smk``) and the report read the same
expansion (``grid.json``), so a table can never name a run the workflow
did not train. Every experiment config is resolved here, so a bad value
fails when the workflow starts, naming the config key, before any job runs.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from . import config as xconfig
from .errors import ConfigError


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _dotted(settings: dict[str, Any], where: str) -> dict[str, Any]:
    """``{"method.tau": 0.8}`` -> ``{"method": {"tau": 0.8}}``."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        section, sep, sub = key.partition(".")
        if not sep or "." in sub:
            raise ConfigError(f"{where}: setting {key!r} must be section.key (e.g. method.tau)")
        out.setdefault(section, {})[sub] = value
    return out


# Experiment keys the grid sets for every run, and the workflow key that sets
# each instead; an experiment block or ablation variant naming one is refused
# (the grid would overwrite it silently).
OWNED = {
    "dataset.name": "the dataset's key under datasets",
    "dataset.root": "results (each dataset is preprocessed under it)",
    "dataset.raw": "datasets.{d}.raw or data_root",
    "dataset.split_dir": "datasets.{d}.source",
    "dataset.labeled": "datasets.{d}.labeled (an ablation: its labeled)",
    "dataset.missing_cases": "datasets.{d}.missing_cases",
    "method.name": "datasets.{d}.methods or comparison.methods (an ablation variant: its method)",
    "train.seed": "seeds",
}


def _refuse_owned(settings: dict[str, Any], dataset: str, where: str) -> None:
    for dotted, instead in OWNED.items():
        section, key = dotted.split(".")
        if key in (settings.get(section) or {}):
            raise ConfigError(f"{where}: {dotted} is set by the workflow for every run; "
                              f"set {instead.format(d=dataset)} instead")


def dataset_paths(wf: dict[str, Any], name: str) -> dict[str, str]:
    """Where the workflow keeps one dataset: raw input, split lists, preprocessed root."""
    d, results = wf["datasets"][name], wf["results"]
    if d["source"] == "phantom":
        base = f"{results}/phantoms/{name}"
        return {"raw": f"{base}/raw", "split_dir": f"{base}/splits", "root": f"{results}/data/{name}"}
    raw = d.get("raw") or "{data_root}/" + name.upper()
    if "{data_root}" in raw:
        if not wf.get("data_root"):
            raise ConfigError(f"datasets.{name}.raw is {raw!r}: set data_root, e.g. "
                              "--config data_root=../shared/data")
        raw = raw.replace("{data_root}", str(wf["data_root"]).rstrip("/"))
    return {"raw": raw, "split_dir": "", "root": f"{results}/data/{name}"}


def _experiment(wf: dict[str, Any], dataset: str, method: str, labeled: Any, seed: int,
                settings: dict[str, Any], where: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    d = wf["datasets"][dataset]
    paths = dataset_paths(wf, dataset)
    _refuse_owned(d.get("experiment") or {}, dataset, f"datasets.{dataset}.experiment")
    variant = _dotted(settings, where)
    _refuse_owned(variant, dataset, where)
    raw = _merge(d.get("experiment") or {}, variant)
    raw = _merge(raw, {
        "dataset": {"name": dataset, "root": paths["root"], "raw": paths["raw"],
                    "split_dir": paths["split_dir"], "labeled": labeled,
                    "missing_cases": d.get("missing_cases", xconfig.default("dataset", "missing_cases"))},
        "method": {"name": method},
        "train": {"seed": seed},
    })
    raw = _merge(raw, _authors_code(wf, method, raw))
    try:
        cfg = xconfig.resolve(raw)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return xconfig.experiment_id(cfg), raw, cfg


def expand(wf: dict[str, Any]) -> dict[str, Any]:
    """The workflow config -> ``{"experiments": {id: ...}, "tables": [...], ...}``."""
    experiments: dict[str, dict[str, Any]] = {}
    tables: list[dict[str, Any]] = []
    seeds = list(wf["seeds"])

    def add(dataset: str, method: str, labeled: Any, settings: dict[str, Any], where: str) -> list[str]:
        ids = []
        for seed in seeds:
            eid, raw, cfg = _experiment(wf, dataset, method, labeled, seed, settings, where)
            if eid in experiments and experiments[eid]["config"] != cfg:
                raise ConfigError(f"{where}: experiment {eid} is declared twice with different "
                                  "settings that the id does not spell (a budget key such as "
                                  "train.iterations); give the ablation the same schedule as the comparison")
            experiments[eid] = {"dataset": dataset, "method": method, "labeled": cfg["dataset"]["labeled"],
                                "seed": seed, "raw": experiments.get(eid, {}).get("raw", raw),
                                "config": cfg, "iterations": cfg["train"]["iterations"],
                                "dim": 3 if len(cfg["train"]["crop"]) == 3 else 2}
            ids.append(eid)
        return ids

    for dataset, d in wf["datasets"].items():
        if dataset not in wf.get("comparison", {}).get("datasets", list(wf["datasets"])):
            continue
        rows = []
        for method in d.get("methods") or wf["comparison"]["methods"]:
            where = f"comparison: {dataset}/{method}"
            m_labeled = ["all"] if _labels_all(method) else d["labeled"]
            cells = {str(n): add(dataset, method, n, {}, where) for n in m_labeled}
            rows.append({"label": method, "method": method, "cells": cells})
        tables.append({"name": f"comparison_{dataset}", "kind": "comparison", "dataset": dataset,
                       "labeled": [str(n) for n in d["labeled"]], "rows": rows})

    for name, ab in (wf.get("ablations") or {}).items():
        if ab["dataset"] not in wf["datasets"]:
            raise ConfigError(f"ablations.{name}.dataset: {ab['dataset']!r} is not under datasets "
                              f"(declared: {sorted(wf['datasets'])})")
        rows = []
        for i, v in enumerate(ab["variants"]):
            where = f"ablations.{name}.variants[{i}] ({v['label']})"
            ids = add(ab["dataset"], v.get("method", ab.get("method", "crossmatch")), ab["labeled"],
                      v.get("set") or {}, where)
            rows.append({"label": str(v["label"]), "x": v.get("x"), "cells": {str(ab["labeled"]): ids}})
        tables.append({"name": f"ablation_{name}", "kind": "ablation", "dataset": ab["dataset"],
                       "labeled": [str(ab["labeled"])], "title": ab.get("title", name),
                       "plot": ab.get("plot", "bars"), "xlabel": ab.get("xlabel", name), "rows": rows})
    synthetic = {n: d["source"] == "phantom" for n, d in wf["datasets"].items()}
    return {"results": wf["results"], "seeds": seeds, "synthetic": synthetic,
            "reported": wf.get("reported", ""), "paper_schedule": bool(wf.get("paper_schedule", False)),
            "reproduction_tolerance": float(wf.get("reproduction_tolerance", 1.0)),
            "experiments": experiments, "tables": tables}


def _authors_code(wf: dict[str, Any], method: str, raw: dict[str, Any]) -> dict[str, Any]:
    """``method.code`` of a run of the authors' code from the workflow's ``authors_code``
    (a local checkout per commit); nothing where the config names none (downloaded)."""
    from .methods import get_method
    try:
        info = get_method(method)
    except ValueError:
        return {}  # resolve() names the unknown method
    if not info.runner or "code" in (raw.get("method") or {}):
        return {}
    commit = (raw.get("method") or {}).get("commit", info.defaults.get("commit"))
    path = (wf.get("authors_code") or {}).get(str(commit))
    return {"method": {"code": str(path)}} if path else {}


def _labels_all(method: str) -> bool:
    from .methods import get_method
    try:
        return get_method(method).labels_all
    except ValueError as e:
        raise ConfigError(f"comparison.methods: {e}") from None


def settings_text(raw: dict[str, Any]) -> str:
    """The settings the workflow config gives one experiment, on one line
    (``{dataset: {...}, method: {...}, ...}``, keys sorted): the workflow's rerun
    trigger, so a changed setting re-runs exactly its experiments and a
    changed code default re-runs nothing."""
    return yaml.safe_dump(raw, default_flow_style=True, sort_keys=True, width=1_000_000).strip()


def experiment_yaml(cfg: dict[str, Any], exp: str, run_dir: str) -> str:
    """The text of a run's ``experiment.yaml``: the resolved experiment config
    the workflow's ``train`` job reads (``crossmatch train --config``)."""
    head = (f"# {exp}: the resolved experiment config (crossmatch/grid.py), as the workflow's\n"
            f"# train job reads it: crossmatch train --config {run_dir}/experiment.yaml --out {run_dir}\n")
    return head + yaml.safe_dump(cfg, sort_keys=False)


def table_ids(table: dict[str, Any]) -> list[str]:
    """The experiment ids of one table of the grid, row by row, cell by cell."""
    return [i for row in table["rows"] for c in row["cells"].values() for i in c]


def evidence_ids(grid: dict[str, Any], dataset: str) -> list[str]:
    """The runs whose protocol analysis the evidence tables of ``dataset`` read: the
    comparison table's, and every run of another code base (the authors') on it,
    which the reproduction table sets beside ours."""
    from .methods import get_method
    (table,) = [t for t in grid["tables"] if t["kind"] == "comparison" and t["dataset"] == dataset]
    ids = table_ids(table)
    return ids + [i for i, e in grid["experiments"].items()
                  if e["dataset"] == dataset and get_method(e["method"]).runner and i not in ids]


def load_grid(path: str | Path) -> dict[str, Any]:
    import json
    return json.loads(Path(path).read_text())
