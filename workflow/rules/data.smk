# Raw data: synthetic phantoms are generated; real datasets are checked
# against a manifest (sizes, sha256; optional resumable download) before
# anything trains. Then the real preprocessing writes the training root.


rule phantom:
    output:
        f"{R}/phantoms/{{dataset}}/phantom.json",
    log:
        f"{R}/logs/phantom/{{dataset}}.log",
    conda:
        "../../envs/crossmatch-cpu.yaml"
    params:
        args=phantom_args,
        out=lambda wc: f"{R}/phantoms/{wc.dataset}",
    shell:
        "python -m crossmatch phantom --dataset {wildcards.dataset} --out {params.out} " "{params.args} > {log} 2>&1"


rule check_data:
    output:
        f"{R}/data/{{dataset}}/check.json",
    log:
        f"{R}/logs/check_data/{{dataset}}.log",
    conda:
        "../../envs/crossmatch-cpu.yaml"
    params:
        raw=lambda wc: data_paths(wc.dataset)["raw"],
        args=check_args,
    shell:
        "python -m crossmatch check-data --dataset {wildcards.dataset} --raw {params.raw:q} {params.args} "
        "--stamp {output} > {log} 2>&1 || (cat {log} >&2; exit 1)"


rule preprocess:
    input:
        raw_ready,
    output:
        f"{R}/data/{{dataset}}/manifest.json",
    log:
        f"{R}/logs/preprocess/{{dataset}}.log",
    conda:
        "../../envs/crossmatch-cpu.yaml"
    resources:
        mem_mb=4000,
    params:
        raw=lambda wc: data_paths(wc.dataset)["raw"],
        # raw datasets use the package's standard lists: no --split-dir (an empty value would eat the
        # next argument)
        split_arg=lambda wc: (
            f"--split-dir {shlex.quote(data_paths(wc.dataset)['split_dir'])}"
            if data_paths(wc.dataset)["split_dir"]
            else ""
        ),
        missing=lambda wc: dataset_cfg(wc.dataset).get("missing_cases", xconfig.default("dataset", "missing_cases")),
        root=lambda wc: data_paths(wc.dataset)["root"],
    shell:
        "python -m crossmatch preprocess --dataset {wildcards.dataset} --raw {params.raw:q} "
        "--out {params.root} --missing-cases {params.missing} "
        "{params.split_arg} > {log} 2>&1 || (tail -n 20 {log} >&2; exit 1)"
