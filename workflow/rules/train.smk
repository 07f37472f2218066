# One job per experiment id: `experiment` writes the experiment's resolved
# config (from grid expansion, once), `train` reads it. The job resumes from the run's own
# checkpoints/latest.pt when it is re-run (after a failure, a retry, a
# kill or a preemption); only final.pt is declared, so Snakemake never
# deletes the resumable state of an unfinished run.


rule experiment:
    output:
        run_file("experiment"),
    log:
        f"{R}/logs/experiment/{{exp}}.log",
    localrule: True
    params:
        # the settings the config gives this experiment: a changed one re-writes the file
        settings=experiment_settings,
    run:
        from crossmatch.io import write_text

        write_text(output[0], experiment_yaml(wildcards.exp))
        write_text(log[0], f"{wildcards.exp}: settings {params.settings}\n")


rule train:
    input:
        data_ready,
        # re-written when a setting of this experiment changes: the training re-runs
        config=run_file("experiment"),
    output:
        run_file("checkpoint", "final"),
    log:
        f"{R}/logs/train/{{exp}}.log",
    benchmark:
        f"{R}/benchmarks/train/{{exp}}.tsv"
    retries: config.get("retries", 1)
    conda:
        "../../envs/crossmatch-cuda.yaml"
    threads: job_threads
    resources:
        gpu=job_resource("gpu", 1),
        mem_mb=job_resource("mem_mb", 16000),
        runtime=job_resource("runtime", 720),
    params:
        out=lambda wc: run_dir(wc.exp),
    shell:
        "python -m crossmatch train --config {input.config:q} --set train.threads={threads} --out {params.out:q} "
        "--restart-if-changed >> {log:q} 2>&1 || (tail -n 20 {log:q} >&2; exit 1)"
