rule collect:
    input:
        runs=[f for v in STUDY.variants for f in run_files(v)],
        timings=rules.time.output,
        splits=ancient(rules.split.output[0]),
    output:
        runs=f"{RESULTS}/runs.parquet",
        runs_csv=report(f"{RESULTS}/runs.csv", caption="../report/runs.rst", category="Tables"),
        epochs=f"{RESULTS}/epochs.parquet",
        epochs_csv=report(f"{RESULTS}/epochs.csv", caption="../report/epochs.rst", category="Tables"),
        layers=f"{RESULTS}/layers.parquet",
        layers_csv=f"{RESULTS}/layers.csv",
        dead_filters=f"{RESULTS}/dead_filters.parquet",
        dead_filters_csv=f"{RESULTS}/dead_filters.csv",
        predictions=f"{RESULTS}/predictions.parquet",
        predictions_csv=f"{RESULTS}/predictions.csv",
        timing=f"{RESULTS}/timing.parquet",
        timing_csv=f"{RESULTS}/timing.csv",
        probe=f"{RESULTS}/probe.parquet",
        probe_csv=f"{RESULTS}/probe.csv",
        test_probs=f"{RESULTS}/test_probs.npz",  # for the ensembles; without runs where no images are held out
        specs=f"{RESULTS}/specs.json",
        study=f"{RESULTS}/study.json",
    log:
        f"{RESULTS}/logs/collect.log",
    conda:
        ENV
    params:
        data=DATA,  # a param, not an input: see data.smk
        out_dir=lambda w, output: os.path.dirname(output.runs),
        study=json.dumps({"study": STUDY.name, "baseline": STUDY.baseline, "references": STUDY.references}),
    shell:
        "cnnbench collect {input.runs} --timings {input.timings} --data {params.data} --splits {input.splits} "
        "--study-json {params.study:q} --out-dir {params.out_dir} 2> {log}"
