# Data and split are pure functions of the config (their params): regenerating them byte-identically
# (a deleted or touched cache) must not retrain anything. Downstream rules therefore depend on the split
# only, as ancient() (the split depends on the data, so the order holds), and get the data cache's path
# as a param: a deleted cache makes Snakemake rerun prepare_data and split, and nothing after them.
# `collect` checks every run's recorded data and split hashes against the files on disk instead.
rule prepare_data:
    output:
        DATA,
    log:
        f"{RESULTS}/logs/prepare_data.log",
    conda:
        ENV
    params:
        data=json.dumps(STUDY.data, sort_keys=True),
        split_seed=STUDY.split["split_seed"],
    shell:
        "cnnbench prepare-data --data-json {params.data:q} --split-seed {params.split_seed} " "--out {output} 2> {log}"


rule split:
    input:
        ancient(rules.prepare_data.output[0]),
    output:
        f"{RESULTS}/splits.json",
    log:
        f"{RESULTS}/logs/split.log",
    conda:
        ENV
    params:
        folds=STUDY.split["folds"],
        repeats=STUDY.split["repeats"],
        split_seed=STUDY.split["split_seed"],
    shell:
        "cnnbench split --data {input} --folds {params.folds} --repeats {params.repeats} "
        "--split-seed {params.split_seed} --out {output} 2> {log}"
