"""Config strings never reach a shell unquoted, and names that become file
names are checked: a `results` folder, a manifest path or a download URL that
holds shell syntax (`;`, `$(...)`, backticks, quotes) runs no command; a
`results` folder with a space in it works; an ablation name that would climb
out of `results` is refused before any job runs (issue 30)."""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest

import test_workflow
from test_workflow import default_config, job_counts, snakemake, workdir, write_config  # noqa: F401 (fixture)

pytestmark = test_workflow.pytestmark

# each would create a file named PWNED* in the job's working directory if a shell ran it
INJECT = "x; touch PWNED1; echo $(touch PWNED2) `touch PWNED3`"
# a results folder: a space, then the injection as one folder name
NASTY_RESULTS = "my results/" + INJECT


def pwned(root: Path) -> list[Path]:
    return list(root.rglob("PWNED*"))


def shell_commands(dry_run_stdout: str) -> list[str]:
    """The job commands a `snakemake -n -p` run prints (`run:` rules print None)."""
    return [line.split("Shell command: ", 1)[1] for line in dry_run_stdout.splitlines()
            if line.startswith("Shell command: ") and line != "Shell command: None"]


def acdc_only(cfg: dict) -> dict:
    """The default config on the ACDC phantom alone, its ablations dropped."""
    cfg["datasets"] = {"acdc": cfg["datasets"]["acdc"]}
    cfg["ablations"] = {}
    return cfg


def test_dry_run_quotes_every_config_value_in_every_command(workdir: Path) -> None:
    """Every rule's command, as the shell will split it: the injected results
    folder (and a manifest, a URL) stays one word, wherever it appears."""
    cfg, results = default_config(), NASTY_RESULTS + " it's"  # a quote too
    cfg["results"] = results
    r = snakemake(workdir, "-n", "-p", "all", "--configfile", str(write_config(workdir, cfg)))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    commands = shell_commands(r.stdout)
    rules = {shlex.split(c)[3] for c in commands}  # python -m crossmatch <command>
    assert rules == {"phantom", "preprocess", "train", "evaluate", "protocols", "report"}, rules
    for command in commands:
        words = shlex.split(command)
        assert "touch" not in words and not any(w.startswith(("PWNED", "$(", "`")) for w in words), command
        assert all(results in w for w in words if "PWNED" in w), command

    cfg = acdc_only(default_config())
    cfg["datasets"]["acdc"].update(source="raw", raw=str(workdir / "raw"), manifest=INJECT, download=True,
                                   url="https://example.org/" + INJECT)
    del cfg["datasets"]["acdc"]["phantom"]
    r = snakemake(workdir, "-n", "-p", "results/synthetic/data/acdc/check.json",
                  "--configfile", str(write_config(workdir, cfg)))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    (command,) = shell_commands(r.stdout)
    words = shlex.split(command)
    assert words[words.index("--manifest") + 1] == INJECT, command
    assert words[words.index("--url") + 1] == "https://example.org/" + INJECT, command
    assert "touch" not in words, command


def test_injection_in_results_runs_no_command(workdir: Path) -> None:
    """The first real jobs (phantom generation, preprocessing) in a results
    folder with a space and shell syntax in its name: they write there, and
    nothing the name spells is run."""
    cfg = acdc_only(default_config())
    cfg["results"] = NASTY_RESULTS
    r = snakemake(workdir, "--cores", "2", f"{NASTY_RESULTS}/data/acdc/manifest.json",
                  "--configfile", str(write_config(workdir, cfg)), timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    res = workdir / NASTY_RESULTS
    assert (res / "phantoms/acdc/phantom.json").is_file() and (res / "data/acdc/manifest.json").is_file()
    assert (res / "logs/phantom/acdc.log").is_file() and (res / "logs/preprocess/acdc.log").is_file()
    assert not pwned(workdir), pwned(workdir)


@pytest.mark.parametrize("field", ["manifest", "url"])
def test_injection_in_manifest_or_url_runs_no_command(workdir: Path, field: str) -> None:
    """The data check of a raw dataset runs with the injected manifest path,
    or the injected URL with `download: true`: the check fails on that very
    string (it arrived as one argument) and no command in it ran."""
    raw = workdir / "raw"
    raw.mkdir()
    manifest = workdir / "one_file.tsv"
    manifest.write_text("patient001_frame01.h5\t10\t" + "0" * 64 + "\n")
    cfg = acdc_only(default_config())
    del cfg["datasets"]["acdc"]["phantom"]
    cfg["datasets"]["acdc"].update(source="raw", raw=str(raw), manifest=str(manifest))
    if field == "manifest":
        cfg["datasets"]["acdc"]["manifest"] = INJECT
    else:
        cfg["datasets"]["acdc"].update(download=True, url=INJECT)
    r = snakemake(workdir, "--cores", "1", "results/synthetic/data/acdc/check.json",
                  "--configfile", str(write_config(workdir, cfg)), timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-3000:]
    log = (workdir / "results/synthetic/logs/check_data/acdc.log").read_text()
    # the command ran (its log holds the failure) and got the whole string as one argument
    assert INJECT in log, log[-3000:]
    assert not pwned(workdir), pwned(workdir)


def test_path_traversal_ablation_name_refused_before_any_job(workdir: Path) -> None:
    cfg = default_config()
    cfg["ablations"]["../../../../x"] = cfg["ablations"].pop("tau")
    r = snakemake(workdir, "--cores", "1", "all", "--configfile", str(write_config(workdir, cfg)))
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "invalid config" in out and "ablations: '../../../../x' does not match" in out, out[-3000:]
    assert "^[A-Za-z0-9][A-Za-z0-9_-]*$" in out and "file name" in out, out[-3000:]
    assert not (workdir / "results").exists() and not list(workdir.rglob("x.*"))


def test_unsafe_names_and_results_refused_with_their_keys(workdir: Path) -> None:
    """Every refused name in one message, each with its key: names with a
    slash, a space or a leading dash; a results folder with braces (Snakemake
    would read them as a wildcard) or a line break; an unknown dataset key."""
    cfg = default_config()
    for bad in ("a/b", "with space", "-x", "a.b"):
        cfg["ablations"][bad] = cfg["ablations"]["tau"]
    cfg["results"] = "results/{x}"
    cfg["datasets"]["../acdc"] = cfg["datasets"]["acdc"]
    r = snakemake(workdir, "-n", "all", "--configfile", str(write_config(workdir, cfg)))
    out = r.stdout + r.stderr
    assert r.returncode != 0
    for bad in ("a/b", "with space", "-x", "a.b"):
        assert f"ablations: '{bad}' does not match" in out, out[-3000:]
    assert "results: 'results/{x}' does not match" in out, out[-3000:]
    assert "datasets: '../acdc' is not one of" in out, out[-3000:]
    cfg = default_config()
    cfg["results"] = "results\nx"
    r = snakemake(workdir, "-n", "all", "--configfile", str(write_config(workdir, cfg)))
    assert r.returncode != 0 and "results: 'results\\nx' does not match" in r.stdout + r.stderr


def tiny_config(results: str) -> dict:
    """The default config cut to the ACDC phantom, two methods, a few
    iterations and one ablation sharing their runs: every rule, in little time."""
    cfg = acdc_only(default_config())
    acdc = cfg["datasets"]["acdc"]
    acdc["methods"] = ["supervised", "crossmatch"]
    acdc["experiment"]["train"].update(iterations=4, val_every=2, ckpt_every=2)
    cfg["ablations"] = {"method": {"dataset": "acdc", "labeled": 3, "variants": [
        {"label": "supervised", "method": "supervised"}, {"label": "crossmatch", "method": "crossmatch"}]}}
    cfg["results"] = results
    return cfg


@pytest.mark.slow
def test_results_folder_with_a_space_runs_end_to_end(workdir: Path) -> None:
    """Every rule of a small grid writes into `my results/...` (a path the
    shell would have split in two), and nothing is written beside it."""
    cfg = tiny_config("my results/synthetic")
    cf = ("--configfile", str(write_config(workdir, cfg)))
    n = job_counts(snakemake(workdir, "-n", "all", *cf).stdout)
    assert n["train"] == 2 and n["ablation_figure"] == 1 and n["evidence"] == 1, n
    r = snakemake(workdir, "--cores", "2", "all", *cf, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    res = workdir / "my results/synthetic"
    for name in ("comparison_acdc", "ablation_method"):
        for ext in ("md", "tex", "html", "csv"):
            assert (res / "tables" / f"{name}.{ext}").stat().st_size > 0, (name, ext)
    for name in ("ablation_method", "training_curves_acdc", "qualitative_acdc", "protocol_curves_acdc"):
        assert (res / "figures" / f"{name}.png").stat().st_size > 1000, name
    assert (res / "tables/paired_acdc.md").is_file()
    assert sorted(p.name for p in workdir.iterdir()) == [".snakemake", "config", "my results", "test_config.yaml"]
    assert "Nothing to be done" in snakemake(workdir, "--cores", "1", "-n", "all", *cf).stdout
