"""The Snakemake workflow as a user runs it: lint, dry runs of every config,
schema and grid errors, the data check's failure, and the default config end
to end in a temporary working directory (then a partial re-run)."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

import crossmatch.config
from conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("snakemake") is None and not (
    Path(sys.executable).parent / "snakemake").exists(), reason="snakemake not installed "
    "(pip install -e '.[workflow]')")


def snakemake(workdir: Path, *args: str, timeout: int = 900, quiet: bool = False) -> subprocess.CompletedProcess:
    """Run the checkout's workflow with ``workdir`` as working directory; with each
    job's rule, files and reason printed (``--quiet host``: the tests read them)
    unless ``quiet`` (the default profile's terminal, as a user sees it)."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow/Snakefile"),
           "--directory", str(workdir), *(() if quiet else ("--quiet", "host")), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def job_counts(out: str) -> Counter:
    """The 'Job stats' table of a (dry) run -> {rule: count}."""
    table = out.split("Job stats:", 1)[1]
    return Counter({m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)})


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A working directory with the shipped config/ (results go below it)."""
    (tmp_path / "config").symlink_to(REPO / "config")
    return tmp_path


def write_config(workdir: Path, cfg: dict) -> Path:
    path = workdir / "test_config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def default_config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_lint_passes(workdir: Path) -> None:
    r = snakemake(workdir, "--lint")
    assert r.returncode == 0, r.stdout + r.stderr


def test_paper_grid_dry_run_counts_jobs_per_rule(workdir: Path) -> None:
    r = snakemake(workdir, "-n", "all_tables", "--configfile", str(REPO / "config/paper.yaml"),
                  "--config", "data_root=/data")
    assert r.returncode == 0, r.stderr[-3000:]
    n = job_counts(r.stdout)
    cfg = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    seeds = len(cfg["seeds"])
    # per dataset: supervised, crossmatch, unimatch, semsim (2D) or simcvd (3D), uamt, mcnet and bcp
    # per labeled count + full
    assert [d["methods"][2:7] for d in cfg["datasets"].values()] == [
        ["unimatch", kind, "uamt", "mcnet", "bcp"] for kind in ("semsim", "simcvd", "simcvd", "semsim")]
    comparison = sum(len(d["labeled"]) * 7 + 1 for d in cfg["datasets"].values())
    # ablation variants equal to a default run share it: one run per distinct setting
    # (and the implementation ablation: ours with the paper's source pass, the authors' code at 2 commits)
    ablation = 2 * ((5 - 1) + (7 - 1) + (3 - 1) + (2 - 1) + (3 - 1)) + 3
    assert n["experiment"] == n["train"] == n["evaluate"] == seeds * (comparison + ablation) == 384
    assert n["table"] == 4 + len(cfg["ablations"]) == 15
    # the protocol analysis of every comparison run and of the authors' code (the reproduction
    # table sets it beside ours), the evidence tables per dataset
    assert n["protocols"] == seeds * (comparison + 2) and n["evidence"] == 4
    # Pancreas-CT and ISIC have no manifest: preprocessing validates them itself
    assert n["check_data"] == 2 and n["preprocess"] == 4
    assert "phantom" not in n
    # the counts the README and docs/workflow.md quote are these
    readme, guide = docs_text("README.md"), docs_text("docs/workflow.md")
    assert f"{n['train']} trainings, {n['total']:,} jobs" in readme
    assert f"{n['train']} trainings, {n['total']:,} jobs" in guide
    assert (f"lists {n['total']:,} jobs ({n['experiment']} experiment configs, {n['train']} trainings, "
            f"{n['evaluate']} evaluations, {n['protocols']} protocol analyses, {n['table']} tables, "
            f"{n['evidence']} evidence jobs") in guide


def docs_text(name: str) -> str:
    """A doc's text with its line breaks as spaces (a count may wrap)."""
    return " ".join((REPO / name).read_text().split())


def test_the_default_runs_counts_in_the_docs_are_its_dry_run(workdir: Path) -> None:
    r = snakemake(workdir, "-n", "all")
    assert r.returncode == 0, r.stderr[-3000:]
    n = job_counts(r.stdout)
    assert f"{n['total']} jobs, {n['train']} trainings" in docs_text("README.md")
    figures = n["ablation_figure"] + n["training_curves"] + n["qualitative"]
    assert (f"runs {n['total']} jobs ({n['train']} trainings, {n['evaluate']} evaluations, {n['protocols']} "
            f"protocol analyses, {n['table']} tables, {n['evidence']} evidence jobs, {figures} figures"
            in docs_text("docs/workflow.md"))


def test_real_config_dry_run(workdir: Path) -> None:
    r = snakemake(workdir, "-n", "-p", "all", "--configfile", str(REPO / "config/real.yaml"),
                  "--config", "data_root=../shared/data")
    assert r.returncode == 0, r.stderr[-3000:]
    n = job_counts(r.stdout)
    assert n["train"] == 5 and n["check_data"] == 2 and "phantom" not in n
    # raw data use the package's split lists: no --split-dir at all (an empty one ate the next argument)
    commands = [line for line in r.stdout.splitlines() if "crossmatch preprocess" in line]
    assert len(commands) == 2 and not any("--split-dir" in c for c in commands), commands


def test_bad_config_rejected_by_schema(workdir: Path) -> None:
    cfg = default_config()
    cfg["seeds"] = ["zero"]
    r = snakemake(workdir, "-n", "--configfile", str(write_config(workdir, cfg)))
    assert r.returncode != 0
    assert "'zero' is not of type 'integer'" in r.stdout + r.stderr, r.stdout[-2000:]
    cfg = default_config()
    cfg["datasets"]["acdc"]["sorce"] = "raw"
    r = snakemake(workdir, "-n", "--configfile", str(write_config(workdir, cfg)))
    assert r.returncode != 0 and "'sorce' was unexpected" in r.stdout + r.stderr, r.stdout[-2000:]


def test_bad_experiment_setting_names_the_config_key(workdir: Path) -> None:
    cfg = default_config()
    cfg["ablations"]["tau"]["variants"][0]["set"] = {"method.tua": 0.8}
    r = snakemake(workdir, "-n", "--configfile", str(write_config(workdir, cfg)))
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "ablations.tau.variants[0]" in out and "method.tua" in out, out[-2000:]


def test_a_bad_value_stops_the_dry_run_with_its_key(workdir: Path) -> None:
    """Values are range-checked when the grid resolves each experiment, so
    `snakemake -n` names the bad key before any job runs."""
    cfg = default_config()
    cfg["datasets"]["acdc"]["experiment"]["train"]["lr"] = 0.0
    r = snakemake(workdir, "-n", "--configfile", str(write_config(workdir, cfg)))
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "train.lr must be in (0, inf), got 0.0" in out, out[-2000:]


@pytest.mark.parametrize("where,key,instead", [
    ("experiment", "train.seed", "seeds"),
    ("experiment", "dataset.labeled", "datasets.acdc.labeled"),
    ("experiment", "method.name", "datasets.acdc.methods or comparison.methods"),
    ("variant", "dataset.root", "results"),
])
def test_the_grid_refuses_keys_it_owns_and_names_the_workflow_key(where, key, instead) -> None:
    from crossmatch import grid
    from crossmatch.errors import ConfigError
    wf = default_config()
    section, sub = key.split(".")
    value = {"train.seed": 3, "dataset.labeled": 7, "method.name": "supervised", "dataset.root": "/tmp/x"}[key]
    if where == "experiment":
        wf["datasets"]["acdc"]["experiment"].setdefault(section, {})[sub] = value
        place = "datasets.acdc.experiment"
    else:
        wf["ablations"]["tau"]["variants"][0]["set"] = {key: value}
        place = "ablations.tau.variants[0]"
    with pytest.raises(ConfigError, match=re.escape(place) + ".*" + re.escape(f"{key} is set by the workflow")
                       + ".*" + re.escape(f"set {instead}")):
        grid.expand(wf)


def test_data_check_failure_names_missing_files_and_fix(workdir: Path) -> None:
    empty = workdir / "nodata"
    (empty / "ACDC").mkdir(parents=True)
    (empty / "LA").mkdir()
    r = snakemake(workdir, "--cores", "1", "results/real/data/acdc/check.json",
                  "--configfile", str(REPO / "config/real.yaml"), "--config", f"data_root={empty}",
                  timeout=300)
    assert r.returncode != 0
    err = r.stdout + r.stderr
    assert "200" in err and "missing" in err and str(empty / "ACDC") in err, err[-3000:]
    assert "download" in err and "github.com/AiEson/CrossMatch" in err
    # nothing trained: the failure stops the workflow before any training job
    assert not (workdir / "results/real/runs").exists()


@pytest.mark.realdata
def test_an_incomplete_la_copy_stops_unless_the_config_opts_in(workdir: Path) -> None:
    """The shared LA copy has 16 of 100 cases: the real config stops naming the
    missing files and the opt-in key; a second config file opting in runs on."""
    from conftest import needs_shared_data
    data = needs_shared_data("LA").parent
    args = ["--cores", "1", "results/real/data/la/check.json", "--configfile", str(REPO / "config/real.yaml")]
    r = snakemake(workdir, *args, "--config", f"data_root={data}", timeout=300)
    err = r.stdout + r.stderr
    assert r.returncode != 0 and "84 of 100 files missing" in err, err[-3000:]
    assert "opt in: datasets.la.missing_cases: subset" in err
    (workdir / "partial_la.yaml").write_text("datasets: {la: {missing_cases: subset}}\n")
    r = snakemake(workdir, *args, str(workdir / "partial_la.yaml"), "--config", f"data_root={data}", timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert json.loads((workdir / "results/real/data/la/check.json").read_text())["missing"] == 84


def read_md_rows(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.startswith("|")]


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory) -> Path:
    """The README's quick start (the default config as is) and its report,
    run once for the tests below; returns the working directory."""
    workdir = tmp_path_factory.mktemp("quick_start")
    (workdir / "config").symlink_to(REPO / "config")
    r = snakemake(workdir, "--cores", "2", "all", "--configfile", str(write_config(workdir, default_config())),
                  timeout=1200, quiet=True)
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    (workdir / "terminal.txt").write_text(r.stdout + r.stderr)
    r = snakemake(workdir, "--report", "report.html", "--configfile", str(workdir / "test_config.yaml"))
    assert r.returncode == 0, r.stderr[-2000:]
    return workdir


@pytest.mark.slow
def test_report_shows_every_table_and_figure_in_a_browser(quick_start: Path) -> None:
    """The report opened in headless Chromium (tests/browser.py): every result
    is shown (an image, or an HTML table), grouped by dataset."""
    import browser
    if browser.chromium() is None:
        pytest.skip("Chromium not installed (Debian: apt-get install chromium)")
    found = browser.probe(quick_start / "report.html")
    assert set(found["categories"]) == {f"{d} (synthetic)" for d in ("acdc", "la", "pancreas", "isic")}
    assert set(found["categories"]["acdc (synthetic)"]) == {"Tables", "Ablation figures", "Training curves",
                                                            "Qualitative", "Protocols and statistics"}
    # 9 tables, 5 ablation figures, 4 x (training curves, qualitative), 4 x (3 evidence tables, protocol curves)
    assert len(found["results"]) == 38, found["results"]
    bad = {p: s for p, s in found["results"].items() if not (s.startswith("image ") or s == "html table")}
    assert not bad, bad


@pytest.mark.slow
def test_the_quick_start_terminal_is_short_and_ends_with_where_things_are(quick_start: Path) -> None:
    """Progress and errors, not every job's command and file lists; the last
    lines say where the tables and figures are and how to build the report."""
    text = (quick_start / "terminal.txt").read_text()
    lines = text.splitlines()
    # a few lines of progress per job (Snakemake's scheduler lines), no command, file list or reason
    assert len(lines) <= 5.5 * job_counts(text)["total"] + 40, len(lines)
    assert max(map(len, lines)) < 400 and "reason:" not in text and "input:" not in text
    tail = "\n".join(lines[-6:])   # then only Snakemake's log path and elapsed time
    assert "Done. Tables: results/synthetic/tables/" in tail and "figures: results/synthetic/figures/" in tail
    assert "One HTML page of everything: snakemake --report results/synthetic/report.html" in tail


@pytest.mark.slow
def test_committed_evidence_regenerates_the_workflows_tables_without_its_runs(quick_start: Path,
                                                                           tmp_path: Path) -> None:
    """`crossmatch report archive`: the light files of every run (no checkpoints)
    are enough to rebuild the comparison and evidence tables byte for byte, from
    another folder, with the workflow's results gone (a fresh clone)."""
    res = quick_start / "results/synthetic"
    dest, clone = tmp_path / "committed", tmp_path / "clone"
    script = [sys.executable, "-m", "crossmatch", "report"]
    r = subprocess.run([*script, "archive", str(res), str(dest), "--config", "config/config.yaml"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not list(dest.rglob("*.pt")), "checkpoints were collected"
    clone.mkdir()
    (clone / "config").symlink_to(REPO / "config")
    shutil.rmtree(dest / "tables")
    r = subprocess.run([*script, "rebuild", str(dest)], capture_output=True, text=True, cwd=clone,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-3000:]
    names = [f"{kind}_{d}.md" for d in ("acdc", "la", "pancreas", "isic")
             for kind in ("comparison", "protocols", "paired", "reproduction")]
    for name in names:
        assert (dest / "tables" / name).read_text() == (res / "tables" / name).read_text(), name
    assert (dest / "figures/protocol_curves_acdc.png").stat().st_size > 1000
    prov = json.loads((dest / "provenance.json").read_text())
    assert prov["config"] == "config/config.yaml" and prov["collected"]["torch"]
    assert all(p["commit"] and p["device"] == "cpu" for p in prov["runs"].values())


@pytest.mark.slow
def test_default_config_end_to_end_then_partial_rerun(quick_start: Path) -> None:
    # every dataset, method, table and figure of the default config (the
    # report's multi-seed cells: tests/test_report.py)
    workdir, cfg = quick_start, default_config()
    cf = ("--configfile", str(workdir / "test_config.yaml"))
    res = workdir / "results/synthetic"
    grid = yaml.safe_load((res / "grid.json").read_text())
    for table in grid["tables"]:
        for ext in ("md", "tex", "html", "csv"):
            assert (res / "tables" / f"{table['name']}.{ext}").stat().st_size > 0
    for dataset, extra in (("acdc", ["unimatch", "semsim"]), ("la", ["simcvd"]), ("pancreas", []), ("isic", [])):
        comp = (res / f"tables/comparison_{dataset}.md").read_text()
        for method in ("supervised", "crossmatch", *extra, "fully_supervised"):
            assert method in comp, (dataset, method)
        assert "SYNTHETIC" in comp.upper()
        # the protocols side by side, paired statistics, the reproduction verdict
        for kind in ("protocols", "paired", "reproduction"):
            for ext in ("md", "html"):
                assert (res / "tables" / f"{kind}_{dataset}.{ext}").stat().st_size > 100, (kind, dataset)
            with open(res / "tables" / f"{kind}_{dataset}.csv") as f:
                reader = csv.DictReader(f)
                rows = list(reader)
            assert len(reader.fieldnames) > 3, (kind, dataset, reader.fieldnames)
            # no paper reports a Pancreas-CT Dice: its reproduction table is
            # empty and says why; every other table has rows
            assert bool(rows) != (kind == "reproduction" and dataset == "pancreas"), (kind, dataset)
        assert (res / "figures" / f"protocol_curves_{dataset}.png").stat().st_size > 1000
        rep = (res / f"tables/reproduction_{dataset}.md").read_text()
        assert "| reproduced |" not in rep and "| not reproduced |" not in rep
        if dataset == "acdc":  # the one dataset whose phantom has a labeled count a paper reports
            assert "| crossmatch | 3 | 88.27 | final@val; 20 volumes (10 patients) | ours |" in rep
            assert "not comparable: synthetic phantom data" in rep
        assert "Δ +" not in comp and "Δ −" not in comp
    with open(res / "tables/ablation_tau.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["row"] for r in rows} == {"0.80", "0.95"}
    for name in ("ablation_tau", "ablation_eta", "ablation_dropout_type", "ablation_strong_views",
                 "ablation_loss_streams", "training_curves_acdc", "training_curves_la",
                 *(f"{kind}_{d}" for kind in ("training_curves", "qualitative") for d in ("pancreas", "isic")),
                 "qualitative_acdc", "qualitative_la"):
        for ext in ("png", "pdf"):
            assert (res / "figures" / f"{name}.{ext}").stat().st_size > 1000, name
    # learnable phantoms: trained models score well above chance (all background
    # or all foreground: Dice below 0.1 on every phantom) at the quick start's budget
    import json
    for dataset, floor in (("acdc", 0.5), ("la", 0.5), ("pancreas", 0.3), ("isic", 0.5)):
        for method in ("supervised", "fully_supervised"):
            exp = next(e for e, v in grid["experiments"].items()
                       if v["dataset"] == dataset and v["method"] == method)
            s = json.loads((res / "runs" / exp / "eval/best/summary.json").read_text())
            assert s["mean"]["dice"]["mean"] > floor, (exp, s["mean"]["dice"])

    html = (workdir / "report.html").read_text(errors="replace")
    assert "comparison_acdc" in html and "ablation_tau" in html

    # delete one run: a re-run rebuilds that branch only
    exp = next(e for e, v in grid["experiments"].items() if "dropout_typealpha" in e)
    shutil.rmtree(res / "runs" / exp)
    r = snakemake(workdir, "--cores", "2", "-n", "all", *cf)
    n = job_counts(r.stdout)
    assert n["train"] == 1 and n["evaluate"] == 1, n
    assert n["table"] == 1 and n["ablation_figure"] == 1 and "preprocess" not in n, n
    r = snakemake(workdir, "--cores", "2", "all", *cf, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    assert "Nothing to be done" in snakemake(workdir, "--cores", "1", "-n", "all", *cf).stdout

    # each job read its experiment.yaml: the grid's resolved config, and its log says so
    for exp, e in grid["experiments"].items():
        assert crossmatch.config.load(res / "runs" / exp / "experiment.yaml") == e["config"], exp
    log = (res / "logs/train" / f"{exp}.log").read_text()
    assert f"crossmatch train --config results/synthetic/runs/{exp}/experiment.yaml" in log, log[:500]
    # a changed setting re-runs exactly the experiments it changes
    cfg["datasets"]["isic"]["experiment"]["train"]["lr"] = 0.02
    changed = workdir / "changed_lr.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    r = snakemake(workdir, "--cores", "1", "-n", "all", "--configfile", str(changed))
    n = job_counts(r.stdout)
    isic = sum(v["dataset"] == "isic" for v in grid["experiments"].values())
    assert n["experiment"] == n["train"] == n["evaluate"] == isic, n
    # ... and they train afresh, the old runs kept under superseded/
    r = snakemake(workdir, "--cores", "2", "all", "--configfile", str(changed), timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    for exp in (e for e, v in grid["experiments"].items() if v["dataset"] == "isic"):
        assert len(list((res / "runs" / exp / "superseded").iterdir())) == 1, exp
        assert yaml.safe_load((res / "runs" / exp / "config.yaml").read_text())["train"]["lr"] == 0.02


def test_loading_the_workflow_does_not_import_torch(workdir: Path) -> None:
    """The DAG needs only the torch-free config code: a dry run of the paper grid,
    in this interpreter, leaves torch out of sys.modules (so the Snakemake
    environment needs no torch, and every dry run is spared its import)."""
    probe = ("import atexit, sys; atexit.register(lambda: print('TORCH_IMPORTED', 'torch' in sys.modules)); "
             "from snakemake.cli import main; sys.argv[0] = 'snakemake'; main()")
    cmd = [sys.executable, "-c", probe, "--snakefile", str(REPO / "workflow/Snakefile"), "--directory", str(workdir),
           "-n", "all_tables", "--configfile", str(REPO / "config/paper.yaml"), "--config", "data_root=/data"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "Job stats:" in r.stdout, r.stderr[-3000:]
    assert "TORCH_IMPORTED False" in r.stdout, r.stdout[-1000:]


def test_schema_repeats_the_code_defaults_and_choices_it_must() -> None:
    """The JSON schema cannot import Python: where it states a default or the
    choices of a key that the code also knows, they must agree."""
    from crossmatch.config import default
    from crossmatch.data.specs import DATASETS
    from crossmatch.data.splits import MISSING_POLICIES
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    ds = schema["properties"]["datasets"]
    assert ds["propertyNames"]["enum"] == list(DATASETS)
    missing = ds["additionalProperties"]["properties"]["missing_cases"]
    assert missing["enum"] == list(MISSING_POLICIES) and missing["default"] == default("dataset", "missing_cases")


def test_seeds_on_the_command_line_work_and_a_bad_value_names_its_key(workdir: Path) -> None:
    one = job_counts(snakemake(workdir, "-n", "all", "--config", "seeds=[0]").stdout)
    two = job_counts(snakemake(workdir, "-n", "all", "--config", "seeds=[0,1]").stdout)
    default = job_counts(snakemake(workdir, "-n", "all").stdout)
    assert 2 * one["train"] == two["train"] and default["train"] == len(default_config()["seeds"]) * one["train"] > 0
    assert job_counts(snakemake(workdir, "-n", "all", "--config", "seeds=0").stdout)["train"] == one["train"]
    r = snakemake(workdir, "-n", "all", "--config", "seeds=[zero]")
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "invalid config (keys: config/README.md):\n  seeds.0: 'zero' is not of type 'integer'" in out, out[-2000:]


def test_eta_ablation_says_what_eta_weighs() -> None:
    """η balances the two distillation streams (kd = (1 - η) L_tkd + η L_dkd): the
    figure title must not call it a feature-perturbation weight."""
    for name in ("config.yaml", "paper.yaml"):
        ablations = yaml.safe_load((REPO / "config" / name).read_text())["ablations"]
        titles = [a["title"] for a in ablations.values() if any("method.eta" in (v.get("set") or {})
                                                                for v in a["variants"])]
        assert titles and all("kd = (1 − η) L_tkd + η L_dkd" in t for t in titles), (name, titles)


def test_workflow_files_are_snakefmt_clean() -> None:
    """`snakefmt --check` (pinned in the test extra, settings in pyproject.toml)."""
    snakefmt = Path(sys.executable).parent / "snakefmt"
    if not snakefmt.exists():
        pytest.skip("snakefmt not installed (pip install -e '.[test]')")
    r = subprocess.run([str(snakefmt), "--check", "workflow/Snakefile", "workflow/rules"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:] + "\nrun: snakefmt workflow/Snakefile workflow/rules"
