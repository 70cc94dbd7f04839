# One job per variant trains all of its (fold, seed) runs in one process and writes one file per run.
# What a run depends on (the resolved spec without its description) and its hash, which covers the
# network it builds, are params: editing a variant's knobs, or changing code so that a variant builds a
# different network, reruns exactly that variant's job; editing its description reruns nothing.
rule train:
    input:
        splits=ancient(rules.split.output[0]),
    output:
        runs=run_files("{variant}"),
        weights=f"{RESULTS}/models/{{variant}}.pt",
    params:
        data=DATA,  # a param, not an input: see data.smk
        spec=lambda w: json.dumps(STUDY.variants[w.variant].run_dict(), sort_keys=True),
        spec_hash=lambda w: STUDY.variants[w.variant].spec_hash,
        record_schema=RECORD_SCHEMA,
        folds=" ".join(map(str, STUDY.fold_ids)),
        seeds=" ".join(map(str, STUDY.seeds)),
        device=STUDY.execution["device"],
        out_dir=lambda w, output: os.path.dirname(output.runs[0]),
        resume=f"{RESULTS}/.resume",
    threads: STUDY.execution["threads"]
    resources:
        gpu=GPUS_PER_JOB,
    priority: lambda w: PRIORITY[w.variant]
    log:
        f"{RESULTS}/logs/train/{{variant}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{variant}}.tsv"
    conda:
        ENV
    shell:
        "cnnbench train --spec {params.spec:q} --data {params.data} --splits {input.splits} "
        "--folds {params.folds} --seeds {params.seeds} --out-dir {params.out_dir} "
        "--weights {output.weights} --resume-root {params.resume} --threads {threads} "
        "--device {params.device} 2> {log}"
