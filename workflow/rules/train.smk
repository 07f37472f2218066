# One job per experiment id. The job resumes from the run's own
# checkpoints/latest.pt when it is re-run (after a failure, a retry, a
# kill or a preemption); only final.pt is declared, so Snakemake never
# deletes the resumable state of an unfinished run.


rule train:
    input:
        data_ready,
    output:
        f"{R}/runs/{{exp}}/checkpoints/final.pt",
    log:
        f"{R}/logs/train/{{exp}}.log",
    benchmark:
        f"{R}/benchmarks/train/{{exp}}.tsv"
    params:
        args=train_args,
        out=lambda wc: run_dir(wc.exp),
    threads: job_threads
    resources:
        gpu=job_resource("gpu", 1),
        mem_mb=job_resource("mem_mb", 16000),
        runtime=job_resource("runtime", 720),
    retries: config.get("retries", 1)
    conda:
        "../../envs/crossmatch-cuda.yaml"
    shell:
        "python -m crossmatch train {params.args} --set train.threads={threads} --out {params.out} "
        ">> {log} 2>&1 || (tail -n 20 {log} >&2; exit 1)"
