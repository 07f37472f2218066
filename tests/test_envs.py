"""The conda environments the rules name are complete: every third-party
module the package imports is pinned in each of them."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

# import name -> distribution name where they differ
DISTRIBUTION = {"yaml": "pyyaml", "sklearn": "scikit-learn", "PIL": "pillow"}
ENVS = sorted((REPO / "envs").glob("*.yaml"))


def third_party_imports() -> set[str]:
    found = set()
    for path in (REPO / "crossmatch").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("crossmatch", "__future__"):
                    found.add(DISTRIBUTION.get(top, top).lower())
    return found


def env_packages(path: Path) -> dict[str, str]:
    """{package: pinned version} of a conda env file (conda and pip sections)."""
    spec = yaml.safe_load(path.read_text())
    entries = []
    for dep in spec["dependencies"]:
        entries += dep["pip"] if isinstance(dep, dict) else [dep]
    out = {}
    for entry in entries:
        if entry.startswith("-"):
            continue  # pip options (index URLs)
        m = re.match(r"^([A-Za-z0-9_.\-]+)\s*(==?)?\s*([^\s]*)$", entry)
        assert m, f"{path.name}: cannot parse {entry!r}"
        out[m[1].lower()] = m[3]
    return out


def test_imports_are_found() -> None:
    assert {"torch", "numpy", "h5py", "medpy", "pyyaml"} <= third_party_imports()


@pytest.mark.parametrize("env", ENVS, ids=[p.name for p in ENVS])
def test_env_lists_every_import_pinned(env: Path) -> None:
    pkgs = env_packages(env)
    missing = third_party_imports() - set(pkgs)
    assert not missing, f"{env.name} lacks {sorted(missing)}"
    unpinned = [p for p, v in pkgs.items() if not v]
    assert not unpinned, f"{env.name}: unpinned {unpinned}"


def test_every_rule_names_an_existing_env() -> None:
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        text = smk.read_text()
        for env in re.findall(r'conda:\s*\n\s*"([^"]+)"', text):
            assert (smk.parent / env).resolve().is_file(), f"{smk.name}: {env} not found"
        n_rules = len(re.findall(r"^rule \w+:", text, re.M))
        n_local = len(re.findall(r"localrule: True", text))
        assert len(re.findall(r"conda:", text)) == n_rules - n_local, smk.name
