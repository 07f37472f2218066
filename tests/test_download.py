"""Manifest check and downloader, against a local HTTP server with Range support."""
from __future__ import annotations

import hashlib
import json
import shutil
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from conftest import needs_shared_data
from crossmatch.cli import main
from crossmatch.data.download import Entry, check, download, ensure_dataset, read_manifest, url_for
from crossmatch.errors import DataError

REPO = Path(__file__).resolve().parents[1]


class Server:
    """Serves ``root`` on 127.0.0.1; honours ``Range: bytes=N-``; logs (path, range) requests."""

    def __init__(self, root: Path) -> None:
        self.root, self.log = root, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                server.log.append((self.path, rng))
                path = server.root / urllib.parse.unquote(self.path.lstrip("/"))
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = int(rng.removeprefix("bytes=").split("-")[0]) if rng else 0
                if start >= len(data) and rng:
                    self.send_error(416)
                    return
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start:])

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def entry_for(path: Path, rel: str) -> Entry:
    data = path.read_bytes()
    return Entry(rel, len(data), hashlib.sha256(data).hexdigest())


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[tuple[Server, list[Entry]]]:
    """A served folder of 3 small files (one in a subfolder with a space) and their entries."""
    src = tmp_path / "remote"
    files = {"a.h5": b"A" * 5000, "b.h5": bytes(range(256)) * 40, "case 1/mri_norm2.h5": b"xyz" * 3000}
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    server = Server(src)
    yield server, [entry_for(src / rel, rel) for rel in files]
    server.close()


def write_manifest(path: Path, entries: list[Entry]) -> Path:
    path.write_text("".join(f"{e.path}\t{e.size}\t{e.sha256}\n" for e in entries))
    return path


def test_check_classifies(tmp_path, remote):
    server, entries = remote
    local = tmp_path / "local"
    shutil.copytree(server.root, local)
    (local / "b.h5").write_bytes(b"short")
    data = bytearray((local / "case 1/mri_norm2.h5").read_bytes())
    data[10] ^= 1
    (local / "case 1/mri_norm2.h5").write_bytes(bytes(data))
    r = check(entries + [Entry("absent.h5", 1, "0" * 64)], local)
    assert [e.path for e in r.ok] == ["a.h5"]
    assert [e.path for e in r.missing] == ["absent.h5"]
    assert [e.path for e in r.wrong_size] == ["b.h5"]
    assert [e.path for e in r.wrong_sha256] == ["case 1/mri_norm2.h5"]


def test_url_quotes_each_component():
    assert (url_for("https://h/x%20y/", "case 1/a#b.h5")
            == "https://h/x%20y/case%201/a%23b.h5")


def test_download_fills_missing_and_bad(tmp_path, remote):
    server, entries = remote
    local = tmp_path / "local"
    (local).mkdir()
    (local / "b.h5").write_bytes(b"wrong")
    assert download(entries, local, server.url, backoff=0, allow_local=True) == []
    assert len(check(entries, local).ok) == 3
    assert not list(local.rglob("*.part"))
    assert ("/case%201/mri_norm2.h5", None) in server.log


def test_partial_download_is_resumed_with_range(tmp_path, remote):
    server, entries = remote
    local = tmp_path / "local"
    local.mkdir()
    full = (server.root / "b.h5").read_bytes()
    (local / "b.h5.part").write_bytes(full[:3000])
    assert download(entries[1:2], local, server.url, backoff=0, allow_local=True) == []
    assert server.log == [("/b.h5", "bytes=3000-")]
    assert (local / "b.h5").read_bytes() == full and not (local / "b.h5.part").exists()


def test_corrupt_server_file_fails_after_retries(tmp_path, remote):
    server, entries = remote
    data = bytearray((server.root / "a.h5").read_bytes())
    data[0] ^= 1
    (server.root / "a.h5").write_bytes(bytes(data))  # same size, different bytes
    manifest = write_manifest(tmp_path / "m.tsv", entries)
    with pytest.raises(DataError, match=r"a\.h5.*wrong sha256 \(after 2 attempts\)"):
        ensure_dataset("acdc", tmp_path / "local", manifest, download=True, base_url=server.url,
                       retries=2, allow_local=True)
    assert [p for p, _ in server.log].count("/a.h5") == 2
    assert not (tmp_path / "local" / "a.h5").exists() and not (tmp_path / "local" / "a.h5.part").exists()
    assert (tmp_path / "local" / "b.h5").is_file()  # the good files were kept


def test_message_without_download(tmp_path, remote):
    _, entries = remote
    manifest = write_manifest(tmp_path / "m.tsv", entries)
    root = tmp_path / "raw"
    with pytest.raises(DataError) as e:
        ensure_dataset("acdc", root, manifest)
    msg = str(e.value)
    for part in ("acdc:", "3 of 3 files missing", "a.h5",
                 "https://github.com/AiEson/CrossMatch/raw/main/ACDC/dataset/datasets/ACDC/data",
                 "CREATIS", str(root), "datasets.acdc.download: true", "datasets.acdc.url",
                 "datasets.acdc.raw"):
        assert part in msg, part


def test_allow_missing_warns_but_corrupt_fails(tmp_path, remote):
    server, entries = remote
    manifest = write_manifest(tmp_path / "m.tsv", entries)
    local = tmp_path / "local"
    local.mkdir()
    shutil.copy(server.root / "a.h5", local / "a.h5")
    stamp = tmp_path / "stamp.json"
    with pytest.warns(UserWarning, match="2 of 3 manifest files are absent"):
        ensure_dataset("la", local, manifest, allow_missing=True, stamp=stamp)
    s = json.loads(stamp.read_text())
    assert (s["ok"], s["missing"]) == (1, 2)
    assert s["manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    (local / "a.h5").write_bytes(b"A" * 4999)
    with pytest.raises(DataError, match=r"1 corrupt .*a\.h5"):
        ensure_dataset("la", local, manifest, allow_missing=True)


def test_malformed_manifest_line(tmp_path):
    m = tmp_path / "m.tsv"
    m.write_text(f"a.h5\t10\t{'0' * 64}\nb.h5 12 {'0' * 64}\n")
    with pytest.raises(DataError, match=rf"{m}:2: malformed manifest line"):
        read_manifest(m)
    m.write_text(f"../x.h5\t10\t{'0' * 64}\n")
    with pytest.raises(DataError, match=":1: malformed"):
        read_manifest(m)


def test_cli_check_data(tmp_path, remote, capsys):
    server, entries = remote
    manifest = write_manifest(tmp_path / "m.tsv", entries)
    raw = tmp_path / "raw"
    assert main(["check-data", "--dataset", "la", "--raw", str(raw), "--manifest", str(manifest)]) == 2
    assert "error: la: " in capsys.readouterr().err
    assert main(["check-data", "--dataset", "la", "--raw", str(raw), "--manifest", str(manifest),
                 "--download", "--url", server.url, "--stamp", str(tmp_path / "s.json"), "--allow-local"]) == 0
    assert "la: 3 files verified, 0 missing" in capsys.readouterr().out


@pytest.mark.parametrize("url", ["http://example.org/data", "file:///etc", "example.org/data", "ftp://x/y"])
def test_downloads_take_https_only_unless_a_local_mirror_is_allowed(tmp_path, remote, capsys, url):
    """One line, before anything is fetched; a local server over http (or a
    file:// folder) only with --allow-local."""
    server, entries = remote
    manifest = write_manifest(tmp_path / "m.tsv", entries)
    args = ["check-data", "--dataset", "la", "--raw", str(tmp_path / "raw"), "--manifest", str(manifest),
            "--download"]
    assert main([*args, "--url", url]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{url!r} is not an https:// URL" in err
    assert main([*args, "--url", server.url]) == 2          # a local http server: refused by default
    assert "is not an https:// URL" in capsys.readouterr().err
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").rglob("*.h5"))


def test_a_redirect_away_from_https_is_refused(tmp_path):
    """An https download redirected to http stops at the redirect."""
    from crossmatch.data.download import _HttpsRedirects
    from crossmatch.errors import DataError
    handler = _HttpsRedirects(allow_local=False)
    with pytest.raises(DataError, match="not an https:// URL"):
        handler.redirect_request(None, None, 302, "Found", {}, "http://mirror.example.org/a.h5")


def test_shipped_manifests_parse():
    assert len(read_manifest(REPO / "config/manifests/acdc_ssl4mis_h5.tsv")) == 200
    la = read_manifest(REPO / "config/manifests/la_uamt_h5.tsv")
    assert len(la) == 100 and all(e.path.endswith("/mri_norm2.h5") for e in la)


@pytest.mark.realdata
def test_download_real_acdc_files(tmp_path):
    src = needs_shared_data("ACDC")
    entries = read_manifest(REPO / "config/manifests/acdc_ssl4mis_h5.tsv")[:3]
    server = Server(src)
    try:
        assert download(entries, tmp_path, server.url, backoff=0, allow_local=True) == []
    finally:
        server.close()
    assert [e.path for e in check(entries, tmp_path).ok] == [e.path for e in entries]
