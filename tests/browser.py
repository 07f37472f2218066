"""Open a `snakemake --report` HTML file in headless Chromium and check what it shows.

The report is a single-page app: each result is shown when the user selects it
(images as <img>, HTML as an <iframe>; any other type is only a download
link). `probe` loads the report with a small script appended that selects
every result the way the report's own result view does, waits for it to
render, and records whether it showed (an image with a size, an HTML page
with a table); Chromium's `--dump-dom` hands the record back. `screenshot`
selects one result and saves what the window shows.

    python tests/browser.py results/synthetic/report.html                  # probe every result
    python tests/browser.py report.html --screenshot docs/report.png --result results/synthetic/tables/comparison_acdc.html

Needs Chromium (Debian: `apt-get install chromium`); tests skip without it.
"""
from __future__ import annotations

import argparse
import html
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")

# selects results as the report's AbstractResults.handleSelectedResult does;
# `app`, `results` and `categories` are the report's own globals
_PROBE = """
<script>
window.addEventListener("load", async () => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const out = {categories: {}, results: {}};
  for (const [cat, subs] of Object.entries(categories)) out.categories[cat] = Object.keys(subs);
  const only = %(only)s;
  await sleep(300);
  for (const [path, entry] of Object.entries(results)) {
    if (only && path !== only) continue;
    const mime = entry.mime_type;
    const view = mime.startsWith("image/") ? "img" : mime === "text/html" ? "html" : null;
    if (!view) { out.results[path] = "download only (" + mime + ")"; continue; }
    const shown = {content: view, contentPath: entry.data_uri, resultPath: path};
    if (only) {  // the menu open at the result's category and subcategory, as after a click
      for (const [cat, subs] of Object.entries(categories))
        for (const [sub, paths] of Object.entries(subs))
          if (paths.includes(path)) Object.assign(shown, {navbarMode: "subcategory", category: cat, subcategory: sub});
    }
    app.setView(shown);
    await sleep(200);
    if (view === "img") {
      const img = [...document.querySelectorAll("#app img")].find(i => i.src === entry.data_uri);
      if (img && !img.complete) await new Promise(r => { img.onload = r; img.onerror = r; });
      out.results[path] = img && img.naturalWidth > 0 ? `image ${img.naturalWidth}x${img.naturalHeight}` : "broken image";
    } else {
      const frame = document.querySelector("#app iframe");
      const page = atob(entry.data_uri.slice(entry.data_uri.indexOf("base64,") + 7));
      out.results[path] = frame && frame.src === entry.data_uri && page.includes("<table") ? "html table" : "broken html";
    }
  }
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  if (!only) document.body.appendChild(pre);
  document.title = "probed";
});
</script>
"""


def chromium() -> str | None:
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def _with_probe(report: Path, tmp: Path, only: str | None) -> Path:
    text = report.read_text(errors="replace")
    probed = tmp / "report_probe.html"
    head, body_end, tail = text.rpartition("</body>")  # the page's own end (a library holds the string too)
    probed.write_text(head + _PROBE % {"only": json.dumps(only)} + body_end + tail)
    return probed


def _run(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    exe = chromium()
    if exe is None:
        raise RuntimeError(f"no Chromium found ({', '.join(CHROMIUM_NAMES)}); Debian: apt-get install chromium")
    base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--virtual-time-budget=30000", "--window-size=1600,1000"]
    return subprocess.run(base + args, capture_output=True, text=True, timeout=timeout)


def probe(report: Path, timeout: int = 180) -> dict:
    """{"categories": {category: [subcategories]}, "results": {path: what showed}}."""
    with tempfile.TemporaryDirectory() as tmp:
        page = _with_probe(Path(report), Path(tmp), None)
        r = _run(["--dump-dom", page.as_uri()], timeout)
    start = r.stdout.find('<pre id="probe">')
    end = r.stdout.find("</pre>", start)
    if start < 0:
        raise RuntimeError(f"the report did not finish rendering in Chromium:\n{r.stderr[-2000:]}")
    return json.loads(html.unescape(r.stdout[start + len('<pre id="probe">'):end]))


def screenshot(report: Path, out: Path, result: str | None = None, timeout: int = 180) -> None:
    """Save a PNG of the report window, showing ``result`` (a report path) if given."""
    with tempfile.TemporaryDirectory() as tmp:
        page = _with_probe(Path(report), Path(tmp), result or "")
        r = _run([f"--screenshot={Path(out).resolve()}", page.as_uri()], timeout)
    if not Path(out).is_file():
        raise RuntimeError(f"Chromium wrote no screenshot:\n{r.stderr[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("--screenshot", type=Path, help="write a PNG of the report window instead of probing")
    ap.add_argument("--result", help="with --screenshot: the result to show (its path in the report)")
    a = ap.parse_args(argv)
    if a.screenshot:
        screenshot(a.report, a.screenshot, a.result)
        print(f"wrote {a.screenshot}")
        return 0
    found = probe(a.report)
    bad = {p: s for p, s in found["results"].items() if not s.startswith(("image ", "html table"))}
    for cat, subs in found["categories"].items():
        print(f"{cat}: {', '.join(subs)}")
    for path, shown in found["results"].items():
        print(f"  {shown:16s} {path}")
    print(f"{len(found['results']) - len(bad)} of {len(found['results'])} results show")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
