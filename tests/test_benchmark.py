"""The step benchmark runs every variant it reports (batch 1, one timed step)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "step_benchmark.py"


@pytest.mark.parametrize("variant", ["network", "supervised", "crossmatch", "crossmatch_looped", "semsim"])
def test_step_benchmark_variant_reports_a_timed_step(variant, tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--single", "--dataset", "acdc", "--variants", variant,
                          "--batch", "1", "--iters", "1", "--warmup", "0", "--threads", "1"],
                         capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["variant"] == variant and r["crop"] == [256, 256]
    assert r["batch"] == ("1" if variant in ("network", "supervised") else "1+1+1")
    assert len(r["seconds_all"]) == 1 and r["seconds_per_iter"] > 0 and r["peak_rss_gib"] > 0
