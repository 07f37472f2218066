"""SLURM: the default config through workflow/profiles/slurm on a real
single-node SLURM (installed with apt-get when missing, started and stopped by
tests/slurm/run_slurm_test.sh), GPU requests of training and evaluation jobs
checked in SLURM's own job records, a cancelled and a preempted training job
resumed and compared with uninterrupted local runs.

Root only; about 5-10 min on 2 CPU cores. Set CROSSMATCH_SKIP_SLURM=1 to skip.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import REPO

SCRIPT = REPO / "tests" / "slurm" / "run_slurm_test.sh"


def _skip_reason() -> str | None:
    if os.environ.get("CROSSMATCH_SKIP_SLURM") == "1":
        return "CROSSMATCH_SKIP_SLURM=1"
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root (installs and starts slurmctld, slurmd, munged)"
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        return "SLURM is not installed and apt-get is not available to install it"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm not installed (pip install -e '.[workflow]')"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_skip_reason() is not None,
                    reason=f"SLURM end-to-end test skipped: {_skip_reason()}")
def test_slurm_profile_on_a_real_single_node_slurm() -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    p = subprocess.Popen(["bash", str(SCRIPT)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=env, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=25 * 60)
    except subprocess.TimeoutExpired:
        # SIGINT to the whole group: Snakemake cancels its SLURM jobs, the
        # script's trap stops the daemons; SIGKILL only if that hangs
        os.killpg(p.pid, signal.SIGINT)
        try:
            out, _ = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, _ = p.communicate()
        pytest.fail(f"{SCRIPT.name} timed out after 25 min:\n{out[-6000:]}")
    assert p.returncode == 0, f"{SCRIPT.name} failed (exit {p.returncode}):\n{out[-6000:]}"
    assert "PASS" in out, out[-3000:]
    print(out[-2000:])
