rule collect:
    input:
        [f for v in STUDY.variants for f in run_files(v)],
    output:
        runs=f"{RESULTS}/runs.parquet",
        runs_csv=f"{RESULTS}/runs.csv",
        epochs=f"{RESULTS}/epochs.parquet",
        epochs_csv=f"{RESULTS}/epochs.csv",
        layers=f"{RESULTS}/layers.parquet",
        layers_csv=f"{RESULTS}/layers.csv",
        dead_filters=f"{RESULTS}/dead_filters.parquet",
        dead_filters_csv=f"{RESULTS}/dead_filters.csv",
        specs=f"{RESULTS}/specs.json",
    params:
        out_dir=lambda w, output: os.path.dirname(output.runs),
    log:
        f"{RESULTS}/logs/collect.log",
    conda:
        ENV
    shell:
        "cnnbench collect {input} --out-dir {params.out_dir} 2> {log}"
