"""Check a raw dataset against its manifest and download what is missing or bad.

A manifest is a tab-separated file of ``relative path, size in bytes, sha256``
(``config/manifests/*.tsv``). ``check`` compares files under a root with it
(size first, sha256 only when the size matches); ``download`` fetches the
missing or bad ones over HTTP(S) with Range resume of ``<file>.part``, and
moves a file into place only once its size and sha256 match;
``ensure_dataset`` combines both into one pass/fail step with one message
that says what is wrong, where to get the data and which config keys to set.
"""
from __future__ import annotations

import os
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from ..errors import DataError
from ..io import write_json
from .preprocess import sha256
from .specs import DATASETS

CHUNK = 1 << 20
N_NAMES = 3  # file names quoted per problem kind in messages


@dataclass(frozen=True)
class Entry:
    """One manifest line: ``path`` relative to the dataset root (``/``-separated)."""
    path: str
    size: int
    sha256: str


@dataclass
class Report:
    """The outcome of ``check``: every entry in exactly one list."""
    ok: list[Entry] = field(default_factory=list)
    missing: list[Entry] = field(default_factory=list)
    wrong_size: list[Entry] = field(default_factory=list)
    wrong_sha256: list[Entry] = field(default_factory=list)

    @property
    def corrupt(self) -> list[Entry]:
        return self.wrong_size + self.wrong_sha256

    @property
    def problems(self) -> list[Entry]:
        return self.missing + self.corrupt


@dataclass(frozen=True)
class Failure:
    """A file ``download`` could not fetch; ``corrupt``: the server's bytes failed verification."""
    entry: Entry
    reason: str
    corrupt: bool


def read_manifest(path: str | Path) -> list[Entry]:
    """Parse a manifest; blank lines and ``#`` comments are skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest {path} not found")
    entries: list[Entry] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        try:
            rel, size, digest = parts
            size_i = int(size)
            parts_ok = bool(size_i >= 0 and len(digest) == 64 and set(digest) <= set("0123456789abcdef")
                            and rel and not rel.startswith("/") and ".." not in rel.split("/"))
        except ValueError:
            parts_ok = False
        if not parts_ok:
            raise DataError(f"{path}:{n}: malformed manifest line {line!r}; expected "
                            "'<relative path>\\t<size in bytes>\\t<sha256, 64 lowercase hex>'")
        entries.append(Entry(rel, size_i, digest))
    return entries


def _verify(path: Path, e: Entry) -> str | None:
    """None if ``path`` matches ``e``, else ``"missing"``, ``"wrong size"`` or ``"wrong sha256"``."""
    if not path.is_file():
        return "missing"
    if path.stat().st_size != e.size:
        return "wrong size"
    return None if sha256(path) == e.sha256 else "wrong sha256"


def check(entries: list[Entry], root: str | Path) -> Report:
    """Classify every manifest entry under ``root`` (sha256 only for files of the right size)."""
    root, report = Path(root), Report()
    lists = {None: report.ok, "missing": report.missing, "wrong size": report.wrong_size,
             "wrong sha256": report.wrong_sha256}
    for e in tqdm(entries, desc=f"check {root.name}", unit="file", leave=False):
        lists[_verify(root / e.path, e)].append(e)
    return report


def url_for(base_url: str, rel: str) -> str:
    """``base_url/rel`` with each path component of ``rel`` percent-encoded (``base_url`` as is)."""
    return base_url.rstrip("/") + "/" + "/".join(urllib.parse.quote(c, safe="") for c in rel.split("/"))


LOOPBACK = ("localhost", "127.0.0.1", "::1")


def check_url(url: str, allow_local: bool = False) -> None:
    """Downloads come over https only; ``allow_local`` also takes ``file://`` and
    ``http://`` to this machine (a local mirror, tests). Raises DataError."""
    parts = urllib.parse.urlsplit(url)
    local = allow_local and (parts.scheme == "file" or parts.scheme == "http" and parts.hostname in LOOPBACK)
    if not (parts.scheme == "https" and parts.netloc or local):
        raise DataError(f"{url!r} is not an https:// URL: downloads are taken over https only "
                        "(check-data --allow-local accepts a mirror on this machine: file:// or http://localhost)")


class _HttpsRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to a URL that ``check_url`` accepts."""

    def __init__(self, allow_local: bool):
        self.allow_local = allow_local

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        check_url(newurl, self.allow_local)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fetch(url: str, part: Path, size: int, timeout: float, allow_local: bool = False) -> None:
    """Append the rest of ``url`` to ``part`` (Range resume); restart if the server ignores Range."""
    have = part.stat().st_size if part.exists() else 0
    if have > size:
        part.unlink()
        have = 0
    if have == size:
        return
    req = urllib.request.Request(url, headers={"User-Agent": "crossmatch-repro"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    with urllib.request.build_opener(_HttpsRedirects(allow_local)).open(req, timeout=timeout) as r:
        resumed = have > 0 and r.status == 206
        with open(part, "ab" if resumed else "wb") as f:
            for block in iter(lambda: r.read(CHUNK), b""):
                f.write(block)


def download(entries: list[Entry], root: str | Path, base_url: str, retries: int = 3,
             timeout: float = 60.0, backoff: float = 1.0, allow_local: bool = False) -> list[Failure]:
    """Fetch every entry that is missing or bad under ``root``; return those that failed.

    Each file is downloaded to ``<file>.part`` (resumed with an HTTP Range request
    if a partial one exists), checked for size and sha256, and renamed onto
    ``<file>`` only then. A download that fails verification is deleted and
    retried; network errors keep the partial file and are retried after
    ``backoff * attempt`` seconds; HTTP 4xx (except 408/429) fails at once.
    """
    check_url(base_url, allow_local)
    root, failures = Path(root), []
    todo = [e for e in entries if _verify(root / e.path, e) is not None]
    for e in tqdm(todo, desc=f"download {root.name}", unit="file", leave=False):
        dest = root / e.path
        part = dest.with_name(dest.name + ".part")
        dest.parent.mkdir(parents=True, exist_ok=True)
        url, failure = url_for(base_url, e.path), None
        for attempt in range(1, retries + 1):
            try:
                _fetch(url, part, e.size, timeout, allow_local)
            except urllib.error.HTTPError as err:
                failure = Failure(e, f"{url}: HTTP {err.code} {err.reason}", False)
                if err.code == 416:  # the partial file is longer than the server's: start over
                    part.unlink(missing_ok=True)
                    continue
                if 400 <= err.code < 500 and err.code not in (408, 429):
                    break
                time.sleep(backoff * attempt)
                continue
            except (urllib.error.URLError, OSError) as err:  # incl. timeouts; keep .part to resume
                failure = Failure(e, f"{url}: {getattr(err, 'reason', err)}", False)
                time.sleep(backoff * attempt)
                continue
            problem = _verify(part, e)
            if problem is None:
                os.replace(part, dest)
                failure = None
                break
            part.unlink()
            failure = Failure(e, f"{url}: downloaded file has {problem} "
                                 f"(after {attempt} attempt{'s' * (attempt > 1)})", True)
        if failure:
            failures.append(failure)
    return failures


def _names(entries: list[Entry]) -> str:
    more = f", ... (+{len(entries) - N_NAMES})" if len(entries) > N_NAMES else ""
    return ", ".join(e.path for e in entries[:N_NAMES]) + more


download_files = download  # ``ensure_dataset``'s ``download`` flag shadows the function there


def ensure_dataset(name: str, root: str | Path, manifest: str | Path, download: bool = False,
                   base_url: str | None = None, stamp: str | Path | None = None,
                   allow_missing: bool = False, retries: int = 3, timeout: float = 60.0,
                   allow_local: bool = False) -> Report:
    """Check ``root`` against ``manifest``, downloading missing/bad files if asked.

    Raises one DataError naming the dataset, the missing and corrupt files, where
    to get them, where to put them and which config keys to set. With
    ``allow_missing`` absent files (a subset copy) only warn; corrupt files, and
    downloads that fail verification, are always errors. On success writes the
    JSON ``stamp`` (counts and the manifest's sha256) if given.
    """
    root, key = Path(root), name.lower()
    if download and base_url:
        check_url(base_url, allow_local)   # before the long check of every file
    entries = read_manifest(manifest)
    report = check(entries, root)
    failures: list[Failure] = []
    if report.problems and download and base_url:
        failures = download_files(report.problems, root, base_url, retries=retries, timeout=timeout,
                                  allow_local=allow_local)
        report = check(entries, root)
    bad_downloads = [f for f in failures if f.corrupt]
    fatal_missing = [] if allow_missing else report.missing
    if report.corrupt or fatal_missing or bad_downloads:
        raise DataError(_message(name, key, root, len(entries), report, fatal_missing, failures,
                                 download, base_url))
    if report.missing:
        warnings.warn(f"{name}: {len(report.missing)} of {len(entries)} manifest files are absent "
                      f"under {root} (first: {_names(report.missing)}); continuing with the "
                      f"{len(report.ok)} present files (allow_missing)", stacklevel=2)
    if stamp:
        write_json(stamp, {"dataset": name, "root": str(root), "manifest": str(manifest),
                           "manifest_sha256": sha256(Path(manifest)), "n_files": len(entries),
                           "ok": len(report.ok), "missing": len(report.missing)})
    return report


def _message(name: str, key: str, root: Path, total: int, report: Report, missing: list[Entry],
             failures: list[Failure], tried: bool, base_url: str | None) -> str:
    what = []
    if missing:
        what.append(f"{len(missing)} of {total} files missing (first: {_names(missing)})")
    if report.corrupt:
        what.append(f"{len(report.corrupt)} corrupt (wrong size or sha256: {_names(report.corrupt)})")
    for f in failures[:N_NAMES]:
        what.append(f"download of {f.entry.path} failed: {f.reason}")
    if len(failures) > N_NAMES:
        what.append(f"{len(failures) - N_NAMES} more downloads failed")
    spec = DATASETS.get(key)
    url = base_url or (spec and spec.download_url)
    official = spec and spec.official_source
    where = (f"Get them from {url}/<file>" if url else "Get the complete dataset") + (
        f" (official source: {official})" if official else "")
    fix = ("replace the corrupt files; " if report.corrupt else "") + (
        "rerun with a working URL" if tried else
        f"or let the pipeline download them: set datasets.{key}.download: true and "
        f"datasets.{key}.url: <base URL>")
    partial = (f" To run on the present cases instead, opt in: datasets.{key}.missing_cases: subset "
               "(every table then says PARTIAL DATA)." if missing and not report.corrupt else "")
    return (f"{name}: data under {root} does not match its manifest: {'; '.join(what)}. {where}, "
            f"and put them under {root} (config key datasets.{key}.raw), keeping the manifest's "
            f"relative paths; {fix}.{partial}")
