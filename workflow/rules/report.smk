rule report:
    input:
        runs=rules.collect.output.runs,
        epochs=rules.collect.output.epochs,
        specs=rules.collect.output.specs,
        layers=rules.collect.output.layers,
        dead_filters=rules.collect.output.dead_filters,
        predictions=rules.collect.output.predictions,
        splits=ancient(rules.split.output[0]),
        weights=[f"{RESULTS}/models/{v}{group_suffix(0)}.pt" for v in STUDY.variants],  # the first run's
        benchmarks=[f for v in STUDY.variants for f in job_files("benchmarks/train", v, "tsv")],
        timing=rules.collect.output.timing,
        probe=rules.collect.output.probe,
        test_probs=rules.collect.output.test_probs,
    output:
        html=report(REPORT, caption="../report/study.rst", category="Study report"),
        per_example=f"reports/{STUDY.name}/per_example.csv",
    log:
        f"{RESULTS}/logs/report.log",
    conda:
        ENV
    params:
        data=DATA,  # a param, not an input: see data.smk
        results=lambda w, input: os.path.dirname(input.runs),
        models=lambda w, input: os.path.dirname(input.weights[0]),
        baseline=STUDY.baseline,
        title=STUDY.name,
        description=STUDY.description,
        variants=json.dumps({v: s.description for v, s in STUDY.variants.items()}),
        references=json.dumps(STUDY.references),
        chains=json.dumps({v: list(s.chain) for v, s in STUDY.variants.items()}),
    shell:
        "cnnbench report --results {params.results} --data {params.data} --splits {input.splits} "
        "--models {params.models} --baseline {params.baseline:q} --title {params.title:q} "
        "--description={params.description:q} --variant-descriptions {params.variants:q} --references {params.references:q} "
        "--chains {params.chains:q} "
        "--out {output.html} 2> {log}"
