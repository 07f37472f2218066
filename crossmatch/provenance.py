"""Where a result came from: the code's commit, the command, the date and the
machine, recorded beside every run (``config.yaml``) and every committed
archive of a workflow's light outputs (``provenance.json``). No torch import:
the report records it too."""
from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def git_commit(repo: Path = REPO) -> str:
    """The checkout's commit, ``+dirty`` when tracked files differ from it."""
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return head + ("+dirty" if dirty else "")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def record(command: str | None = None, device: str | None = None) -> dict[str, Any]:
    """The provenance of what this process is making."""
    out = {"commit": git_commit(), "command": command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "torch": _version("torch"),
           "python": platform.python_version(), "cpu": cpu_model(), "cpu_count": os.cpu_count()}
    if device:
        out["device"] = device
    return out
