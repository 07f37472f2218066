"""One writer per run folder: ``crossmatch train`` holds an exclusive lock on
the run while it writes it; ``evaluate`` and ``protocols`` share the run (they
write apart) and each holds its own part alone. So two processes can never mix
their checkpoints, logs or scores in one folder.

The lock is ``flock`` on ``<run>/.writer.lock`` (released by the kernel when
the process ends, however it ends); the file names its holder for the
message a second writer gets.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import ConfigError, CrossMatchError

LOCK_NAME = ".writer.lock"


class RunBusy(CrossMatchError):
    """Another process is writing the run folder."""


def _lock(path: Path, exclusive: bool, run_dir: Path) -> int:
    """flock ``path`` (exclusive or shared) without waiting; the descriptor, or RunBusy naming the holder."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunBusy(f"{run_dir} is being written by {holder}; wait for it to finish or stop it, "
                      f"then run this again (one writer per run folder)") from None
    return fd


@contextlib.contextmanager
def hold(run_dir: str | Path, action: str) -> Iterator[None]:
    """Hold ``run_dir``'s writer lock for ``action`` (train, evaluate, protocols);
    raise ``RunBusy`` naming the holder where another process has it. Training
    holds the run alone; ``evaluate`` and ``protocols`` write apart
    (``eval/<checkpoint>``, ``eval/protocols``), so they share the run and each
    holds its own part alone."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is a file, not a run folder: name a folder")
    if not run_dir.is_dir() and action != "train":
        yield   # nothing to write into: the command itself says what is missing
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fds = [_lock(run_dir / LOCK_NAME, action == "train", run_dir)]
    try:
        if action != "train":
            fds.append(_lock(run_dir / f".{action}.lock", True, run_dir))
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        text = f"crossmatch {action} (pid {os.getpid()} on {socket.gethostname()}, since {stamp}: " \
               f"{' '.join(sys.argv[1:])[:300]})"
        for fd in fds:
            os.ftruncate(fd, 0)
            os.pwrite(fd, text.encode(), 0)
        yield
    finally:
        for fd in fds:
            os.close(fd)   # closing the descriptor releases the lock
