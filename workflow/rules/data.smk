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
        "python -m crossmatch phantom --dataset {wildcards.dataset:q} --out {params.out:q} {params.args:q} "
        "> {log:q} 2>&1"


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
        "python -m crossmatch check-data --dataset {wildcards.dataset:q} --raw {params.raw:q} {params.args:q} "
        "--stamp {output:q} > {log:q} 2>&1 || (cat {log:q} >&2; exit 1)"


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
        split_args=split_dir_args,
        missing=lambda wc: dataset_cfg(wc.dataset).get("missing_cases", xconfig.default("dataset", "missing_cases")),
        root=lambda wc: data_paths(wc.dataset)["root"],
    shell:
        "python -m crossmatch preprocess --dataset {wildcards.dataset:q} --raw {params.raw:q} "
        "--out {params.root:q} --missing-cases {params.missing:q} "
        "{params.split_args:q} > {log:q} 2>&1 || (tail -n 20 {log:q} >&2; exit 1)"
