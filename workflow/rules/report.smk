# The paper's tables and figures, from the evaluated runs of grid.json.


rule grid:
    output:
        f"{R}/grid.json",
    log:
        f"{R}/logs/report/grid.log",
    localrule: True
    params:
        # the expansion itself: a changed grid re-runs this rule and the report
        grid=json.dumps(GRID, sort_keys=True),
    run:
        from crossmatch.io import write_text

        write_text(output[0], params.grid)
        write_text(log[0], f"{len(GRID['experiments'])} experiments, {len(GRID['tables'])} tables\n")


rule table:
    input:
        grid=f"{R}/grid.json",
        runs=table_runs,
        reported=reported_file,
    output:
        md=f"{R}/tables/{{table}}.md",
        tex=f"{R}/tables/{{table}}.tex",
        # the report shows HTML (Markdown would only be a download there)
        html=report(
            f"{R}/tables/{{table}}.html", caption="../report/table.rst", category=report_category, subcategory="Tables"
        ),
        csv=f"{R}/tables/{{table}}.csv",
    log:
        f"{R}/logs/report/{{table}}.log",
    conda:
        "../../envs/crossmatch-cpu.yaml"
    params:
        prefix=output_prefix,
    shell:
        "python -m crossmatch report table --grid {input.grid:q} --name {wildcards.table:q} "
        "--runs {input.runs:q} --out {params.prefix:q} > {log:q} 2>&1 || (cat {log:q} >&2; exit 1)"


rule ablation_figure:
    input:
        grid=f"{R}/grid.json",
        runs=table_runs,
    output:
        png=report(
            f"{R}/figures/{{table}}.png",
            caption="../report/figure.rst",
            category=report_category,
            subcategory="Ablation figures",
        ),
        pdf=f"{R}/figures/{{table}}.pdf",
        caption=f"{R}/figures/{{table}}.txt",
    log:
        f"{R}/logs/report/figure_{{table}}.log",
    conda:
        "../../envs/crossmatch-cpu.yaml"
    params:
        prefix=output_prefix,
    shell:
        "python -m crossmatch report figure --grid {input.grid:q} --name {wildcards.table:q} "
        "--runs {input.runs:q} --out {params.prefix:q} > {log:q} 2>&1 || (cat {log:q} >&2; exit 1)"


rule training_curves:
    input:
        grid=f"{R}/grid.json",
        runs=dataset_runs,
    output:
        png=report(
            f"{R}/figures/training_curves_{{dataset}}.png",
            caption="../report/figure.rst",
            category=report_category,
            subcategory="Training curves",
        ),
        pdf=f"{R}/figures/training_curves_{{dataset}}.pdf",
        caption=f"{R}/figures/training_curves_{{dataset}}.txt",
    log:
        f"{R}/logs/report/training_curves_{{dataset}}.log",
    conda:
        "../../envs/crossmatch-cpu.yaml"
    params:
        prefix=output_prefix,
    shell:
        "python -m crossmatch report curves --grid {input.grid:q} --dataset {wildcards.dataset:q} "
        "--runs {input.runs:q} --out {params.prefix:q} > {log:q} 2>&1 || (cat {log:q} >&2; exit 1)"


rule qualitative:
    input:
        grid=f"{R}/grid.json",
        runs=dataset_runs,
    output:
        png=report(
            f"{R}/figures/qualitative_{{dataset}}.png",
            caption="../report/figure.rst",
            category=report_category,
            subcategory="Qualitative",
        ),
        pdf=f"{R}/figures/qualitative_{{dataset}}.pdf",
        caption=f"{R}/figures/qualitative_{{dataset}}.txt",
    log:
        f"{R}/logs/report/qualitative_{{dataset}}.log",
    conda:
        "../../envs/crossmatch-cpu.yaml"
    params:
        prefix=output_prefix,
        cases=config.get("figures", {}).get("qualitative_cases", 3),
    shell:
        "python -m crossmatch report qualitative --grid {input.grid:q} --dataset {wildcards.dataset:q} "
        "--cases {params.cases:q} --runs {input.runs:q} --out {params.prefix:q} > {log:q} 2>&1 "
        "|| (cat {log:q} >&2; exit 1)"


rule evidence:
    input:
        grid=f"{R}/grid.json",
        runs=evidence_runs,
        reported=reported_file,
    output:
        tables=[
            f"{R}/tables/{kind}_{{dataset}}.{ext}"
            for kind in ("protocols", "paired", "reproduction")
            for ext in ("md", "csv")
        ],
        html=[
            report(
                f"{R}/tables/{kind}_{{dataset}}.html",
                caption="../report/evidence.rst",
                category=report_category,
                subcategory="Protocols and statistics",
            )
            for kind in ("protocols", "paired", "reproduction")
        ],
        png=report(
            f"{R}/figures/protocol_curves_{{dataset}}.png",
            caption="../report/evidence.rst",
            category=report_category,
            subcategory="Protocols and statistics",
        ),
        pdf=f"{R}/figures/protocol_curves_{{dataset}}.pdf",
        caption=f"{R}/figures/protocol_curves_{{dataset}}.txt",
    log:
        f"{R}/logs/report/evidence_{{dataset}}.log",
    conda:
        "../../envs/crossmatch-cpu.yaml"
    params:
        # the results folder: the figure's grandparent
        out=lambda wildcards, output: os.path.dirname(os.path.dirname(output.png)),
    shell:
        "python -m crossmatch report evidence --grid {input.grid:q} --dataset {wildcards.dataset:q} "
        "--runs {input.runs:q} --out {params.out:q} > {log:q} 2>&1 || (cat {log:q} >&2; exit 1)"
