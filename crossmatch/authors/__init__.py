"""The authors' own CrossMatch code (AiEson/CrossMatch, MIT) as an implementation
in the grid, beside ours: method ``crossmatch_authors``.

Nothing of that code is in this repository. ``code.obtain`` fetches its files
at a pinned commit (or reads a local checkout) and checks each against the
sha256 manifest in ``manifests/<commit>.tsv``; ``run.train`` runs its ACDC
training script as published, on CUDA as is and on a CPU through a device
shim applied at run time (``shim``); its snapshots are mapped onto our
network (``crossmatch.models.reference``) and written as one of our run
folders, so that our evaluator, protocol analysis and tables score it
exactly as they score our runs. docs/fidelity.md ("The authors' code in the
grid") says how to use it.
"""
from __future__ import annotations

REPOSITORY = "AiEson/CrossMatch"
# the commits offered by name: the paper's numbers were made with d00de40;
# 59772e0 is today's (what our parity tests and defaults follow)
COMMITS = {
    "d00de40": "d00de406ecccc18b00fc0154f4b9a55467279585",
    "59772e0": "59772e00c3d2bee5e3a603e596ef120eb9f88fd3",
}
COMMIT_NOTES = {
    "d00de40": "the paper's commit (2024-05): CutMix-source pass in eval mode, the pre-fix CutMix streams, "
               "loss (sup + .5 s1 + .5 s2 + kd) / 3",
    "59772e0": "today's commit (2025-12): after the CutMix fix (71ac4d4) and the train-mode source pass (cd1e25c)",
}


def raw_url(commit: str) -> str:
    """Where the files of ``commit`` are served byte for byte (archives are not byte-stable)."""
    return f"https://raw.githubusercontent.com/{REPOSITORY}/{COMMITS[commit]}"
