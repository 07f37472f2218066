"""Checkpoint files: ``save_checkpoint`` writes them, ``load_checkpoint`` reads
every one (``latest``, ``best``, ``final``, snapshots, the authors' snapshots).

Checkpoints hold plain data only: tensors, numbers, strings, None and
lists, tuples and dicts of them (the RNG states too, see
``crossmatch.train``). They are read with ``torch.load(weights_only=True)``,
which refuses a file that holds any other pickled Python object: unpickling
one can run arbitrary code, so a checkpoint from elsewhere could run code
under ``crossmatch evaluate``, ``protocols`` or a resumed ``train``. The one
exception is ``LEGACY_GLOBALS``: the numpy array of the RNG state that
``latest.pt`` held before (a uint32 array rebuilt by numpy's own
``_reconstruct``), so those runs still resume; nothing that can call other code
is on that list.

A refused or unreadable (truncated, corrupt) file stops with a ``DataError``:
one line naming the file and the way out, which the caller supplies.
"""
from __future__ import annotations

import errno
import pickle
import shutil
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import DataError
from .io import atomic_path

__all__ = ["save_checkpoint", "load_checkpoint", "LEGACY_GLOBALS", "RETRAIN", "REWRITE_FINAL", "RESTART"]

LOW_DISK = 256 << 20   # bytes free under which a failed write is a full disk

# ways out, for the messages (the caller picks the one that is true for its file)
RETRAIN = "train the run again into a new --out (or delete the run folder and re-run `crossmatch train`)"
REWRITE_FINAL = "delete it and re-run `crossmatch train` with the same arguments, which writes it again"
RESTART = "delete it and re-run `crossmatch train` with the same arguments: the run trains afresh from iteration 0"


def _legacy_globals() -> list[Any]:
    """numpy's array-rebuilding globals, under the names old checkpoints spell them
    (numpy 2 writes ``numpy._core``, numpy 1 wrote ``numpy.core``)."""
    core = getattr(np, "_core", None) or np.core  # numpy 1 has only numpy.core
    reconstruct = core.multiarray._reconstruct
    names = {f"{reconstruct.__module__}.{reconstruct.__qualname__}",
             "numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct"}
    return [np.ndarray, np.dtype, type(np.dtype(np.uint32)), *((reconstruct, n) for n in sorted(names))]


LEGACY_GLOBALS = _legacy_globals()


def save_checkpoint(path: Path, **state: Any) -> None:
    """Write ``state`` (plain data: ``load_checkpoint`` refuses anything else) atomically."""
    with atomic_path(path) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as e:   # torch's writer says only "basic_ios::clear: iostream error"
            if shutil.disk_usage(Path(tmp).parent).free < LOW_DISK:
                raise OSError(errno.ENOSPC, f"No space left on device ({e})", str(path)) from None
            raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", remedy: str = RETRAIN) -> dict:
    """The checkpoint at ``path`` under ``torch.load(weights_only=True)``; a file that
    holds pickled Python objects, or is truncated or corrupt, raises a ``DataError``
    naming it and ``remedy``, the way out."""
    try:
        with torch.serialization.safe_globals(LEGACY_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower():
            found = sorted({g or c for g, c in re.findall(r"GLOBAL (\S+)|but got <class '([^']+)'>", str(e))})
            what = f" ({', '.join(found)})" if found else ""
            raise DataError(f"{path}: refused: it holds pickled Python objects{what}, which could run code when "
                            "loaded (torch.load weights_only); crossmatch never writes them. Only load checkpoints "
                            f"you trust: {remedy}") from None
        raise DataError(_unreadable(path, e, remedy)) from None
    except OSError:  # not found, permission denied: their own message names the file
        raise
    except Exception as e:  # zip reader (RuntimeError), EOFError, a damaged pickle stream
        raise DataError(_unreadable(path, e, remedy)) from None


def _unreadable(path: str | Path, error: Exception, remedy: str) -> str:
    cause = str(error).split(". ")[0].strip()
    if not isinstance(error, RuntimeError):  # the zip reader's message says what it is; others need their type
        cause = f"{type(error).__name__}: {cause}" if cause else type(error).__name__
    return f"{path}: cannot be read, it is truncated or corrupt ({cause}); {remedy}"
