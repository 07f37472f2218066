# Config validation, the experiment grid, and every input function and
# target builder the rules call. No model logic here: crossmatch/grid.py
# expands the grid, the `crossmatch` CLI does the work.
import json
import os
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake_interface_executor_plugins.settings import DeploymentMethod
from snakemake.utils import min_version, validate

min_version("9.0")


def _seeds_from_command_line(cfg):
    """`--config seeds=[0,1]` arrives as ['0', '1'] and `seeds=0` as 0: make them integers."""
    seeds = cfg.get("seeds")
    if isinstance(seeds, (int, str)):
        seeds = [seeds]
    if isinstance(seeds, list) and all(
        isinstance(s, int) or (isinstance(s, str) and s.strip().isdigit()) for s in seeds
    ):
        cfg["seeds"] = [int(s) for s in seeds]


def _schema_errors(cfg, path):
    """Every schema violation on one line each, with its key (the bare schema dump hides it)."""
    import jsonschema
    import yaml

    schema = yaml.safe_load(Path(path).read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(cfg), key=lambda e: list(e.path))

    def line(e):
        where = ".".join(str(p) for p in e.path) or "(top level)"
        # a pattern's schema says in words what it allows (names and paths that become file names)
        hint = f" ({e.schema['description']})" if e.validator == "pattern" and "description" in e.schema else ""
        return f"{where}: {e.message}{hint}"

    return [line(e) for e in errors]


_seeds_from_command_line(config)
_errors = _schema_errors(config, Path(workflow.basedir) / "schemas/config.schema.yaml")
if _errors:
    raise WorkflowError("invalid config (keys: config/README.md):\n  " + "\n  ".join(_errors))
validate(config, schema="../schemas/config.schema.yaml")  # fills the schema's defaults

REPO = Path(workflow.basedir).parent  # workflow.basedir: the folder of workflow/Snakefile
sys.path.insert(0, str(REPO))  # a checkout without `pip install -e .`
from crossmatch.errors import ConfigError  # noqa: E402
from crossmatch import grid as xgrid  # noqa: E402
from crossmatch import config as xconfig  # noqa: E402
from crossmatch import layout  # noqa: E402

try:
    GRID = xgrid.expand(config)
except ConfigError as e:
    raise WorkflowError(f"invalid config: {e}") from None

R = config["results"]
# Jobs run the checkout's code (`python -m crossmatch`). With --use-conda the
# job's environment (envs/*.yaml) brings the dependencies and its `python`;
# otherwise jobs use the interpreter that runs Snakemake (the README's venv),
# whatever PATH says.
_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
# (shell.prefix is formatted like a shell command: literal braces are doubled)
_ENV = f"export PYTHONPATH={shlex.quote(str(REPO))}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
if not _CONDA:
    _ENV += f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH; "
shell.prefix(f"set -euo pipefail; {_ENV}")
EXPS = GRID["experiments"]
DATASETS = list(config["datasets"])
TABLES = {t["name"]: t for t in GRID["tables"]}
COMPARISON_DATASETS = [t["dataset"] for t in GRID["tables"] if t["kind"] == "comparison"]
ABLATIONS = [t["name"] for t in GRID["tables"] if t["kind"] == "ablation"]


wildcard_constraints:
    dataset="|".join(DATASETS),
    exp=r"[a-z0-9_]+/[a-z0-9_]+/l[a-z0-9]+/[^/]+/s[0-9]+",
    table="|".join(TABLES) or "none",
    ckpt="final|best",


def dataset_cfg(dataset):
    return config["datasets"][dataset]


def data_paths(dataset):
    return xgrid.dataset_paths(config, dataset)


def data_ready(wildcards):
    """The preprocessed root's manifest: what every job on a dataset waits for."""
    return f"{R}/data/{EXPS[wildcards.exp]['dataset']}/manifest.json"


def raw_ready(wildcards):
    """Phantoms are generated; real data is checked against its manifest
    first. Without a manifest (Pancreas-CT, ISIC: no checksummed copy to pin)
    the preprocessing's own checks, which read and validate every listed case
    before writing anything, are the data check."""
    d = dataset_cfg(wildcards.dataset)
    if d["source"] == "phantom":
        return f"{R}/phantoms/{wildcards.dataset}/phantom.json"
    return f"{R}/data/{wildcards.dataset}/check.json" if d.get("manifest") else []


# Argument lists, one item per shell word: `{params.args:q}` in a shell
# command quotes each item, so the shell never reads a config string.
def check_args(wildcards):
    d = dataset_cfg(wildcards.dataset)
    if not d.get("manifest"):
        raise WorkflowError(f"datasets.{wildcards.dataset}.manifest: needed for source: raw")
    args = ["--manifest", d["manifest"]]
    if d.get("download"):
        if not d.get("url"):
            raise WorkflowError(f"datasets.{wildcards.dataset}.download is true but no url is set")
        args += ["--download", "--url", d["url"]]
    if d.get("missing_cases") == "subset":
        args.append("--allow-missing")
    return args


def phantom_args(wildcards):
    p = dataset_cfg(wildcards.dataset).get("phantom") or {}
    args = ["--seed", p.get("seed", 0)]
    if "cases" in p:
        args += ["--cases", p["cases"]]
    if "size" in p:
        args += ["--size", *p["size"]]
    return args


def split_dir_args(wildcards):
    """Phantoms bring their split lists; raw datasets use the package's standard
    lists: no --split-dir at all (an empty value would eat the next argument)."""
    split_dir = data_paths(wildcards.dataset)["split_dir"]
    return ["--split-dir", split_dir] if split_dir else []


def experiment_settings(wildcards):
    """What the config sets for one experiment, as `section.key=value` items:
    the rerun trigger of its experiment.yaml and its training (a changed code
    default re-runs nothing; a changed setting re-runs exactly its runs)."""
    return xgrid.settings_text(EXPS[wildcards.exp]["raw"])


def experiment_yaml(exp):
    return xgrid.experiment_yaml(EXPS[exp]["config"], exp, run_dir(exp))


def job_resource(key, default):
    """A resource of a job on one experiment, from datasets.<name>.resources."""

    def get(wildcards, attempt=1):
        res = dataset_cfg(EXPS[wildcards.exp]["dataset"]).get("resources") or {}
        value = res.get(key, default)
        # a retried job may have died of memory: give it more
        return value * attempt if key == "mem_mb" else value

    return get


def job_threads(wildcards):
    return (dataset_cfg(EXPS[wildcards.exp]["dataset"]).get("resources") or {}).get("threads", 4)


def report_category(wildcards):
    """The report groups results by dataset (marked when synthetic), then by kind."""
    dataset = TABLES[wildcards.table]["dataset"] if "table" in wildcards.keys() else wildcards.dataset
    return f"{dataset} (synthetic)" if GRID["synthetic"].get(dataset) else dataset


def output_prefix(wildcards, output):
    """A report job's outputs share one prefix (`.md/.tex/.html/.csv`, `.png/.pdf/.txt`)."""
    return os.path.splitext(output[0])[0]


def run_dir(exp):
    return str(layout.run_dir(R, exp))


def run_file(what, *args):
    """A file of the run folder of `{exp}` (a rule's pattern), e.g. run_file("summary", "best")."""
    attr = getattr(layout.Run(run_dir("{exp}")), what)
    return str(attr(*args) if callable(attr) else attr)


def summaries(ids, ckpt="best"):
    return [str(layout.Run(run_dir(i)).summary(ckpt)) for i in ids]


def protocol_summaries(ids):
    return [str(layout.Run(run_dir(i)).protocols / "summary.json") for i in ids]


def comparison_ids(dataset):
    (table,) = [t for t in GRID["tables"] if t["kind"] == "comparison" and t["dataset"] == dataset]
    return xgrid.table_ids(table)


def evidence_runs(wildcards):
    return protocol_summaries(xgrid.evidence_ids(GRID, wildcards.dataset))


def reported_file(wildcards):
    """The reported-results CSV: an input of every table that shows it, so an edit rebuilds them."""
    return [config["reported"]] if config.get("reported") else []


def evidence_outputs():
    tables = [
        f"{R}/tables/{kind}_{d}.{ext}"
        for d in COMPARISON_DATASETS
        for kind in ("protocols", "paired", "reproduction")
        for ext in ("md", "html", "csv")
    ]
    return [*tables, *(f"{R}/figures/protocol_curves_{d}.{ext}" for d in COMPARISON_DATASETS for ext in ("png", "pdf"))]


def table_runs(wildcards):
    table = TABLES[wildcards.table]
    ids = xgrid.table_ids(table)
    # a comparison table sets each reported Dice beside ours under its own protocol
    protocols = protocol_summaries(ids) if table["kind"] == "comparison" else []
    return [*summaries(ids, "best"), *summaries(ids, "final"), *protocols]


def dataset_runs(wildcards):
    return summaries(comparison_ids(wildcards.dataset), "best")


def all_runs():
    """Every evaluated run: targets too, so a deleted run folder is rebuilt
    (Snakemake does not regenerate a missing intermediate file on its own
    while the tables made from it exist), and its tables with it."""
    return [*summaries(EXPS, "best"), *summaries(EXPS, "final")]


def all_tables():
    return [
        *all_runs(),
        *(f"{R}/tables/{name}.{ext}" for name in TABLES for ext in ("md", "tex", "csv")),
        *evidence_outputs(),
    ]


def ablation_figures():
    return [*all_runs(), *(f"{R}/figures/{name}.{ext}" for name in ABLATIONS for ext in ("png", "pdf"))]


def all_figures():
    per_dataset = [
        f"{R}/figures/{kind}_{d}.{ext}"
        for d in COMPARISON_DATASETS
        for kind in ("training_curves", "qualitative")
        for ext in ("png", "pdf")
    ]
    return [*ablation_figures(), *per_dataset]


def done_message():
    """The last lines of a successful run: where its outputs are, and the report."""
    configs = " ".join(f"--configfile {shlex.quote(str(f))}" for f in workflow.config_settings.configfiles)
    if not os.path.isdir(f"{R}/tables"):
        return f"Done: the outputs are under {R}/."
    return (
        f"Done. Tables: {R}/tables/ (Markdown, LaTeX, HTML, CSV); figures: {R}/figures/.\n"
        f"One HTML page of everything: snakemake --report {shlex.quote(os.path.join(R, 'report.html'))}"
        + (f" {configs}" if configs else "")
    )
