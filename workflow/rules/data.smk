rule prepare_data:
    output:
        f"{RESULTS}/data.npz",
    params:
        data=json.dumps(STUDY.data, sort_keys=True),
        split_seed=STUDY.split["split_seed"],
    log:
        f"{RESULTS}/logs/prepare_data.log",
    conda:
        ENV
    shell:
        "cnnbench prepare-data --data-json {params.data:q} --split-seed {params.split_seed} "
        "--out {output} 2> {log}"


rule split:
    input:
        rules.prepare_data.output,
    output:
        f"{RESULTS}/splits.json",
    params:
        folds=STUDY.split["folds"],
        repeats=STUDY.split["repeats"],
        split_seed=STUDY.split["split_seed"],
    log:
        f"{RESULTS}/logs/split.log",
    conda:
        ENV
    shell:
        "cnnbench split --data {input} --folds {params.folds} --repeats {params.repeats} "
        "--split-seed {params.split_seed} --out {output} 2> {log}"
