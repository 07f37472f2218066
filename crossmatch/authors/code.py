"""Obtain the authors' code at a pinned commit, every file checked against its
sha256 manifest (``manifests/<commit>.tsv``: path, bytes, sha256, as the data
manifests), from a local checkout or downloaded file by file from GitHub."""
from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from ..data.download import Entry, check, download, read_manifest
from ..errors import ConfigError, DataError
from ..io import write_json
from . import COMMITS, REPOSITORY, raw_url

STAMP = ".verified.json"


def manifest(commit: str) -> list[Entry]:
    if commit not in COMMITS:
        raise ConfigError(f"method.commit: {commit!r} is not one of the pinned commits {sorted(COMMITS)}")
    return read_manifest(Path(str(resources.files("crossmatch.authors") / "manifests" / f"{commit}.tsv")))


def obtain(commit: str, dest: str | Path, local: str | Path = "") -> Path:
    """The verified code of ``commit`` under ``dest`` (returned). Files already
    there and correct are kept; the others are copied from ``local`` (a checkout
    of that commit) or, without it, downloaded. Any file that does not match
    the manifest stops with its name."""
    dest, entries = Path(dest), manifest(commit)
    todo = check(entries, dest).problems
    if todo and local:
        src = Path(local)
        if not src.is_dir():
            raise ConfigError(f"method.code: {src} is not a folder (a checkout of {REPOSITORY} at {commit})")
        bad = check(todo, src).problems
        if bad:
            raise DataError(f"{src} is not {REPOSITORY} at {commit}: {len(bad)} file(s) missing or different "
                            f"({', '.join(e.path for e in bad[:3])}); point method.code at a checkout of "
                            f"{COMMITS[commit]} or leave it empty to download the pinned files")
        for e in todo:
            (dest / e.path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / e.path, dest / e.path)
    elif todo:
        failures = download(todo, dest, raw_url(commit))
        if failures:
            raise DataError(f"could not fetch {len(failures)} file(s) of {REPOSITORY}@{commit} from "
                            f"{raw_url(commit)} ({failures[0].reason}); without network, set method.code "
                            "(workflow: authors_code.<commit>) to a local checkout of that commit")
    bad = check(entries, dest).problems
    if bad:
        raise DataError(f"{dest}: {len(bad)} file(s) of {REPOSITORY}@{commit} fail the manifest "
                        f"({', '.join(e.path for e in bad[:3])}); delete {dest} and run again")
    write_json(dest / STAMP, {"repository": REPOSITORY, "commit": COMMITS[commit], "files": len(entries),
                              "source": str(local) if local else raw_url(commit)})
    return dest
