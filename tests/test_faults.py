"""Faults survived (issue 6, part 3), locally: a training job SIGKILLed
mid-run (CLI and workflow) resumes to the same weights; a job that fails
once is retried (`retries: 1`) and succeeds; an interrupted workflow leaves
no output that looks complete and the next run redoes exactly the unfinished
jobs (Ctrl-C, or `kill -INT` of Snakemake alone); a NaN/Inf loss stops the CLI with status 2 and keeps the last good
checkpoint. Every workflow run uses a tiny one-seed ACDC-phantom config
(two methods, no ablations) in a temporary working directory."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from conftest import REPO, tiny_overrides
from test_workflow import pytestmark as _needs_snakemake, snakemake

from crossmatch.evaluate import evaluate_run
from crossmatch.train import FAIL_ONCE_ENV, HOLD_ENV

pytestmark = [_needs_snakemake, pytest.mark.slow]

ITERS = 30
RES = "results/tiny"
SUP = "acdc/supervised/l1/default/s0"
CM = "acdc/crossmatch/l1/tau0.95-eta0.3/s0"
TINY = {
    "results": RES,
    "seeds": [0],
    "reported": "config/reported_results.csv",
    "datasets": {"acdc": {
        "source": "phantom", "phantom": {"cases": 6, "seed": 0}, "labeled": [1],
        "experiment": {"train": {"iterations": ITERS, "batch_size": 2, "crop": [32, 32], "optimizer": "adamw",
                                 "lr": 0.01, "val_every": 10, "ckpt_every": 2, "num_workers": 0}},
        "resources": {"gpu": 0, "mem_mb": 1000, "runtime": 10, "threads": 1}}},
    "comparison": {"methods": ["supervised", "crossmatch"]},
}
TIMINGS = ("train_seconds", "seconds_per_iteration")   # the only summary keys allowed to differ


# ---------------------------------------------------------------- helpers

def make_workdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config").symlink_to(REPO / "config")
    (path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    return path


def sm_args(workdir: Path, *args: str) -> list[str]:
    # targets before --configfile, which takes several files
    return ["--cores", "1", *args, "--configfile", str(workdir / "tiny.yaml")]


def eval_target(exp: str) -> str:
    return f"{RES}/runs/{exp}/eval/best/summary.json"


def popen_snakemake(workdir: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """Snakemake in the background, in its own session (a terminal's process group)."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow/Snakefile"),
           "--directory", str(workdir), "--quiet", "host", *args]   # each job's rule and files: read below
    # SIGINT back to its default: when the test suite itself was started in the
    # background of a non-interactive shell (nohup ... &), SIGINT is ignored and
    # every child would inherit that, so Ctrl-C (our SIGINT) would do nothing
    return subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"timed out after {timeout} s:\n{out[-3000:]}")
    return out


def wait_for(cond, what: str, proc: subprocess.Popen | None = None, timeout: float = 120,
             poll: float = 0.02):
    """Poll ``cond()`` until truthy; fail if ``proc`` ends first or on timeout."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"process ended (rc {proc.returncode}) before {what}:\n{out[-3000:]}")
        time.sleep(poll)
    if proc is not None:
        os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"timed out waiting for {what}")


def train_pids(workdir: Path, exp: str | None = None) -> list[int]:
    """The `python -m crossmatch train` processes running in ``workdir`` (for ``exp``)."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            argv = (p / "cmdline").read_bytes().decode().split("\0")
            cwd = os.readlink(p / "cwd")
        except OSError:
            continue
        if argv[1:4] == ["-m", "crossmatch", "train"] and cwd == str(workdir) and (
                exp is None or f"{RES}/runs/{exp}" in argv):
            pids.append(int(p.name))
    return pids


def kill_and_wait(pid: int, sig=signal.SIGKILL, timeout: float = 10) -> None:
    os.kill(pid, sig)
    end = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < end:
        try:  # reaped by its parent; a zombie still has /proc/<pid>
            if (Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]) == "Z":
                return
        except OSError:
            return
        time.sleep(0.01)


def ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = ckpt(a)["model"], ckpt(b)["model"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{a} and {b} differ at {k}"


def metrics(summary: Path | dict) -> dict:
    s = json.loads(summary.read_text()) if isinstance(summary, Path) else summary
    return {k: v for k, v in s.items() if k not in TIMINGS}


def log_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_run_equals_reference(workdir: Path, ref: Path, exp: str) -> None:
    """Bit-identical final and best weights, equal evaluation summaries and losses."""
    a, b = workdir / RES / "runs" / exp, ref / RES / "runs" / exp
    for name in ("final.pt", "best.pt"):
        assert_same_weights(a / "checkpoints" / name, b / "checkpoints" / name)
    for c in ("final", "best"):
        assert metrics(a / "eval" / c / "summary.json") == metrics(b / "eval" / c / "summary.json"), (exp, c)
    la, lb = pd.read_csv(a / "log.csv"), pd.read_csv(b / "log.csv")
    assert list(la["iteration"]) == list(range(1, ITERS + 1))
    pd.testing.assert_frame_equal(la.drop(columns="seconds"), lb.drop(columns="seconds"))


def kill_training_after_checkpoint(workdir: Path, proc: subprocess.Popen, exp: str) -> tuple[int, list[dict]]:
    """SIGKILL ``exp``'s training process once its latest.pt exists; returns
    the checkpoint's iteration and the log rows up to it (read while the
    process is stopped, before any retry can touch the run folder)."""
    run = workdir / RES / "runs" / exp
    wait_for(lambda: (run / "checkpoints/latest.pt").is_file(), f"{exp}'s first checkpoint", proc)
    (pid,) = wait_for(lambda: train_pids(workdir, exp), f"{exp}'s training process", proc)
    os.kill(pid, signal.SIGSTOP)
    k = ckpt(run / "checkpoints/latest.pt")["iteration"]
    rows = log_rows(run / "log.csv")[:k]
    kill_and_wait(pid)
    assert not (run / "checkpoints/final.pt").exists() and 0 < k < ITERS, k
    assert [int(r["iteration"]) for r in rows] == list(range(1, k + 1))
    return k, rows


def assert_resumed(workdir: Path, exp: str, k: int, rows_before: list[dict]) -> None:
    """The log continued from the checkpoint: rows 1..k are the killed
    attempt's own (wall-clock `seconds` included), then k+1..end follow once."""
    rows = log_rows(workdir / RES / "runs" / exp / "log.csv")
    assert [int(r["iteration"]) for r in rows] == list(range(1, ITERS + 1))
    # (columns that appeared later, such as val_dice, are empty in those rows)
    assert [{c: r[c] for c in before} for r, before in zip(rows, rows_before)] == rows_before, \
        "rows before the checkpoint were rewritten: the run restarted"


def assert_log_starts_at(workdir: Path, exp: str, k: int) -> None:
    """The (last attempt's) job log: its progress bar starts at checkpoint k, not at 0."""
    text = (workdir / RES / "logs/train" / f"{exp}.log").read_text()
    bars = re.findall(rf"(\d+)/{ITERS} \[", text)
    assert bars and int(bars[0]) == k and "0" not in bars, bars[:5]
    assert f"checkpoint: {RES}/runs/{exp}/checkpoints/final.pt" in text


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted tiny workflow, run once: its folder and its jobs."""
    wd = make_workdir(tmp_path_factory.mktemp("reference"))
    r = snakemake(wd, *sm_args(wd, "all_tables"), timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return {"dir": wd, "jobs": jobs_of(r.stdout + r.stderr)}


@pytest.fixture
def wd(reference, tmp_path: Path) -> Path:
    """A fresh working directory holding the reference's phantom and
    preprocessed data (their jobs are not what these tests are about)."""
    wd = make_workdir(tmp_path / "wd")
    for sub in ("phantoms", "data"):
        shutil.copytree(reference["dir"] / RES / sub, wd / RES / sub)  # mtimes kept: up to date
    return wd


def jobs_of(out: str) -> set[tuple[str, tuple[str, ...]]]:
    """(rule, outputs) of every job a (dry) run lists."""
    jobs = set()
    for m in re.finditer(r"^(?:local)?rule (\w+):\n((?:    .*\n?)*)", out, re.M):
        outputs = re.search(r"^    output: (.*)$", m[2], re.M)
        jobs.add((m[1], tuple(sorted(outputs[1].split(", "))) if outputs else ()))
    return jobs


# ---------------------------------------------------------------- 1. SIGKILL mid-run

def test_cli_train_sigkilled_then_rerun_equals_uninterrupted(acdc_root, tmp_path):
    raw = tiny_overrides(acdc_root, iterations=ITERS, ckpt_every=2, val_every=10, threads=1)
    raw["method"] = {"name": "crossmatch"}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def cmd(out):
        return [sys.executable, "-m", "crossmatch", "train", "--config", str(tmp_path / "exp.yaml"),
                "--out", str(tmp_path / out)]

    def run(out):
        r = subprocess.run(cmd(out), capture_output=True, text=True, timeout=180, env=env)
        assert r.returncode == 0, r.stderr[-3000:]

    run("full")
    proc = subprocess.Popen(cmd("cut"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    latest = tmp_path / "cut/checkpoints/latest.pt"
    try:
        wait_for(latest.is_file, "the first checkpoint", proc)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    k = ckpt(latest)["iteration"]
    assert not (tmp_path / "cut/checkpoints/final.pt").exists() and 0 < k < ITERS, k
    run("cut")                                                       # the same command resumes
    for name in ("final.pt", "best.pt"):
        assert_same_weights(tmp_path / "full/checkpoints" / name, tmp_path / "cut/checkpoints" / name)
    la, lb = pd.read_csv(tmp_path / "full/log.csv"), pd.read_csv(tmp_path / "cut/log.csv")
    assert list(lb["iteration"]) == list(range(1, ITERS + 1))
    pd.testing.assert_frame_equal(la.drop(columns="seconds"), lb.drop(columns="seconds"))
    for c in ("final", "best"):
        a = evaluate_run(tmp_path / "full", c, "cpu", save_predictions=False)
        b = evaluate_run(tmp_path / "cut", c, "cpu", save_predictions=False)
        assert metrics(a) == metrics(b), c


def test_workflow_training_sigkilled_is_retried_and_resumes(reference, wd):
    proc = popen_snakemake(wd, *sm_args(wd, eval_target(CM)))
    try:
        k, rows = kill_training_after_checkpoint(wd, proc, CM)
        out = finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-4000:]                       # one invocation: the retry succeeded
    assert "Trying to restart job" in out, out[-4000:]
    assert_resumed(wd, CM, k, rows)
    assert_run_equals_reference(wd, reference["dir"], CM)
    assert_log_starts_at(wd, CM, k)


# ---------------------------------------------------------------- 2. fails once, retried

def test_workflow_job_failing_once_is_retried_and_succeeds(reference, wd):
    marker = wd / "failed_once"
    proc = popen_snakemake(wd, *sm_args(wd, eval_target(SUP)), env={FAIL_ONCE_ENV: str(marker)})
    out = finish(proc)
    assert proc.returncode == 0, out[-4000:]
    assert marker.read_text().split() == [SUP, "2"]                # failed after the first checkpoint
    assert "Trying to restart job" in out and re.search(r"Error in rule train", out), out[-4000:]
    # Snakemake deletes a job's log before each attempt (`>> {log}` keeps nothing): the failed
    # attempt's message survives only in Snakemake's own output, through the rule's `tail`
    assert f"{FAIL_ONCE_ENV}: injected failure of {SUP} after the checkpoint at iteration 2" in out
    assert_log_starts_at(wd, SUP, 2)
    assert_run_equals_reference(wd, reference["dir"], SUP)


# ---------------------------------------------------------------- 3. interrupted workflow

def check_outputs_valid(workdir: Path, ref: Path) -> None:
    """Every declared output present is complete: parseable, and for final.pt
    the very weights of the uninterrupted run."""
    res = workdir / RES
    leftovers = [str(p.relative_to(res)) for p in res.rglob("*.tmp")]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    for p in res.rglob("final.pt"):
        assert ckpt(p)["iteration"] == ITERS
        assert_same_weights(p, ref / p.relative_to(workdir))
    for p in res.rglob("summary.json"):   # an evaluation's, or its protocol analysis' (eval/protocols/)
        assert ("protocols" if p.parent.name == "protocols" else "mean") in json.loads(p.read_text()), p
    for p in res.rglob("metrics_per_case.csv"):
        assert len(pd.read_csv(p)) > 0
    for p in (res / "tables").glob("*") if (res / "tables").exists() else ():
        assert p.read_bytes() == (ref / p.relative_to(workdir)).read_bytes(), p
    for name in ("grid.json", "phantoms/acdc/phantom.json", "data/acdc/manifest.json"):
        if (res / name).exists():
            json.loads((res / name).read_text())


def test_interrupted_workflow_leaves_no_complete_looking_output_and_rerun_redoes_the_rest(reference, wd):
    ref = reference["dir"]
    # retries=0: with a retry, the job that Ctrl-C failed can be restarted before Snakemake
    # stops, and Snakemake then waits for it to finish (config/README.md, `retries`)
    # the second training to checkpoint is held there (one core: the first has finished), so
    # Ctrl-C lands in a known state however busy the machine is
    hold = wd / "hold"
    hold.mkdir()
    (hold / "hold").write_text("2")
    proc = popen_snakemake(wd, *sm_args(wd, "all_tables"), "--config", "retries=0", env={HOLD_ENV: str(hold)})
    runs = wd / RES / "runs"
    try:
        wait_for((hold / "held").is_file, "the second training held at its first checkpoint", proc)
        assert len(list(runs.glob("**/checkpoints/final.pt"))) == 1
        os.killpg(proc.pid, signal.SIGINT)                          # Ctrl-C in the terminal
        out = finish(proc, timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0, out[-3000:]
    wait_for(lambda: not train_pids(wd), "the training process to end", timeout=20)
    check_outputs_valid(wd, ref)

    present = {p.relative_to(wd).as_posix() for p in (wd / RES).rglob("*") if p.is_file()}
    unfinished = {(rule, outs) for rule, outs in reference["jobs"]
                  if not outs or not set(outs) <= present}
    assert any(rule == "train" for rule, _ in unfinished), "interrupted after every training finished:\n" + out[-3000:]
    assert len(unfinished) < len(reference["jobs"])
    r = snakemake(wd, "-n", *sm_args(wd, "all_tables"), timeout=120)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert jobs_of(r.stdout + r.stderr) == unfinished

    r = snakemake(wd, *sm_args(wd, "all_tables"), timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    for exp in (SUP, CM):
        assert_run_equals_reference(wd, ref, exp)
    check_outputs_valid(wd, ref)
    assert {p.name for p in (wd / RES / "tables").iterdir()} == {p.name for p in (ref / RES / "tables").iterdir()}


# ---------------------------------------------------------------- 4. NaN / Inf loss

def test_cli_infinite_loss_exits_2_naming_experiment_and_iteration(acdc_root, tmp_path):
    """test_train covers the trainer with a NaN loss, in-process; this is the
    command line with an Inf loss: exit status 2, the message without a
    traceback, latest.pt kept (its iteration before the Inf, finite weights)."""
    bad = "inf"
    raw = tiny_overrides(acdc_root, iterations=4, ckpt_every=2, val_every=0)
    raw["method"] = {"name": "supervised"}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(raw))
    code = (
        "import sys\n"
        "import crossmatch.methods.supervised as sup\n"
        "real, calls = sup.supervised_loss, []\n"
        "def flaky(*a, **k):\n"
        "    calls.append(1)\n"
        "    ce, dice = real(*a, **k)\n"
        f"    return (ce * float('{bad}'), dice) if len(calls) == 3 else (ce, dice)\n"
        "sup.supervised_loss = flaky\n"
        "from crossmatch.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-c", code, "train", "--config", str(tmp_path / "exp.yaml"),
                        "--out", str(run)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    # (not anchored at a line start: the message follows the unclosed progress bar on its line)
    assert re.search(rf"error: acdc/supervised/l3/default/s0: loss is {bad} at iteration 3; .*"
                     rf"The last good checkpoint is {re.escape(str(run / 'checkpoints/latest.pt'))}",
                     r.stderr), r.stderr[-2000:]
    state = ckpt(run / "checkpoints/latest.pt")
    assert state["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (run / "checkpoints/final.pt").exists()
    assert [int(r["iteration"]) for r in log_rows(run / "log.csv")] == [1, 2]


def test_sigint_to_snakemake_alone_then_plain_rerun_redoes_the_rest(reference, wd):
    """`kill -INT <snakemake>` (not its process group, unlike Ctrl-C): Snakemake
    waits for the running training job, which completes, and marks its
    final.pt incomplete anyway. A plain re-run (the workflow profile sets
    rerun-incomplete) redoes only that job, cheaply, and what is left."""
    proc = popen_snakemake(wd, *sm_args(wd, eval_target(SUP)))
    latest = wd / RES / "runs" / SUP / "checkpoints/latest.pt"
    try:
        wait_for(latest.is_file, f"{SUP}'s first checkpoint", proc)
        proc.send_signal(signal.SIGINT)
        out = finish(proc, timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0, out[-3000:]
    assert not train_pids(wd)
    check_outputs_valid(wd, reference["dir"])
    final = wd / RES / "runs" / SUP / "checkpoints/final.pt"
    assert final.is_file()                                           # the job ran to its end
    # Snakemake marks the job that was running at the interrupt incomplete even
    # though it finished; the workflow profile's rerun-incomplete re-runs it,
    # and the trainer, finding latest.pt at the last iteration, only rewrites final.pt
    r = snakemake(wd, "-n", *sm_args(wd, eval_target(SUP)), timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "IncompleteFilesException" not in out, out[-3000:]
    assert {rule for rule, _ in jobs_of(out)} <= {"train", "evaluate"}, out[-3000:]
