# Test-set evaluation of the final and the best-on-validation checkpoint:
# per-case metrics, summary.json and saved predictions (for the figures).


rule evaluate:
    input:
        run_file("checkpoint", "final"),
    output:
        final=run_file("summary", "final"),
        best=run_file("summary", "best"),
        final_cases=run_file("per_case", "final"),
        best_cases=run_file("per_case", "best"),
    log:
        f"{R}/logs/evaluate/{{exp}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{{exp}}.tsv"
    conda:
        "../../envs/crossmatch-cuda.yaml"
    threads: job_threads
    resources:
        gpu=job_resource("gpu", 1),
        mem_mb=job_resource("mem_mb", 16000),
        runtime=60,
    params:
        run=lambda wc: run_dir(wc.exp),
    shell:
        "python -m crossmatch evaluate --run {params.run:q} --checkpoint both --threads {threads} > {log:q} 2>&1 "
        "|| (tail -n 20 {log:q} >&2; exit 1)"


# The papers' selection protocols, after training: every validation-point
# snapshot scored on the validation and test cases (crossmatch.protocols).
# Only the report reads its output; best.pt was chosen before it runs.
rule protocols:
    input:
        run_file("checkpoint", "final"),
    output:
        f"{R}/runs/{{exp}}/eval/protocols/summary.json",
    log:
        f"{R}/logs/protocols/{{exp}}.log",
    benchmark:
        f"{R}/benchmarks/protocols/{{exp}}.tsv"
    conda:
        "../../envs/crossmatch-cuda.yaml"
    threads: job_threads
    resources:
        gpu=job_resource("gpu", 1),
        mem_mb=job_resource("mem_mb", 16000),
        runtime=60,
    params:
        run=lambda wc: run_dir(wc.exp),
    shell:
        "python -m crossmatch protocols --run {params.run:q} --threads {threads} > {log:q} 2>&1 "
        "|| (tail -n 20 {log:q} >&2; exit 1)"
