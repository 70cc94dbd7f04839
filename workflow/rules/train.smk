# Training jobs. `execution.runs_per_job` says how many (fold, seed) runs one job trains: "all" (the
# local default) pays process start-up once per variant; 1 (profiles/slurm) fans a study out to one
# cluster job per run. Groups are consecutive runs in seed-major order (RUN_GROUPS), so a new seed adds
# groups without moving old runs; and every finished run is kept in the run store (`.resume`, keyed by
# spec hash and split), so regrouping or rerunning a job reuses it instead of retraining.
# What a run depends on (the resolved spec without its description) and its hash, which covers the
# network it builds, are params: editing a variant's knobs, or changing code so that a variant builds a
# different network, reruns exactly that variant's jobs; editing its description reruns nothing.
for _index, _group in enumerate(RUN_GROUPS):

    rule:
        name:
            train_rule(_index)
        input:
            splits=ancient(rules.split.output[0]),
            pretrained=lambda w: pretrained_weights(w.variant),
        output:
            runs=[f"{RESULTS}/runs/{{variant}}/{run}.json" for run in _group],
            weights=f"{RESULTS}/models/{{variant}}{group_suffix(_index)}.pt",
        log:
            f"{RESULTS}/logs/train/{{variant}}{group_suffix(_index)}.log",
        benchmark:
            f"{RESULTS}/benchmarks/train/{{variant}}{group_suffix(_index)}.tsv"
        priority: TRAIN_PRIORITY
        conda:
            ENV
        threads: STUDY.execution["threads"]
        resources:
            gpu=gpus_per_job,
            gpu_slots=train_gpu_slots,
            runtime=lambda w, _n=len(_group): job_minutes(w.variant, _n),
            mem_mb=lambda w: job_mem_mb(w.variant),
        params:
            data=DATA,  # a param, not an input: see data.smk
            spec=lambda w: json.dumps(STUDY.variants[w.variant].run_dict(), sort_keys=True),
            spec_hash=lambda w: STUDY.variants[w.variant].spec_hash,
            record_schema=RECORD_SCHEMA,
            runs=" ".join(_group),
            device=STUDY.execution["device"],
            jobs_per_gpu=JOBS_PER_GPU,
            out_dir=lambda w, output: os.path.dirname(output.runs[0]),
            resume=f"{RESULTS}/.resume",
            pretrained=lambda w, input: f"--pretrained {input.pretrained}" if input.pretrained else "",
        shell:
            "cnnbench train --spec {params.spec:q} --data {params.data} --splits {input.splits} "
            "--runs {params.runs} --out-dir {params.out_dir} --weights {output.weights} "
            "--resume-root {params.resume} --threads {threads} --device {params.device} --jobs-per-gpu {params.jobs_per_gpu} {params.pretrained} 2> {log}"
