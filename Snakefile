# crossmatch-repro: raw data -> preprocessing -> training grid -> evaluation -> tables and figures.
#   snakemake --cores 2 all_tables                        (default: synthetic phantoms, CPU, minutes)
#   snakemake --cores 2 --configfile config/real.yaml --config data_root=../shared/data all_tables
#   snakemake --profile workflow/profiles/slurm --configfile config/paper.yaml all_tables
# The experiment grid is declared once in the config (crossmatch/grid.py expands it).

# The default config only when none is given: Snakemake would otherwise merge
# a --configfile into it (keys of the synthetic default leaking into a real run).
if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        all_tables(),
        all_figures(),


rule all_tables:
    input:
        all_tables(),


rule all_figures:
    input:
        all_figures(),


rule ablation_figures:
    input:
        ablation_figures(),
