# Speed measured alone: one job per variant that holds every core (and the GPU slot of a training job),
# so no other job of this workflow runs while it times; training jobs' own speed is kept in their
# records but measured under load. On a cluster the job asks Slurm for a node of its own (--exclusive in
# profiles/slurm). The A/A control builds the baseline's network: it is not timed again.
rule time:
    input:
        splits=ancient(rules.split.output[0]),
    output:
        f"{RESULTS}/timing/{{variant}}.json",
    log:
        f"{RESULTS}/logs/time/{{variant}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/time/{{variant}}.tsv"
    conda:
        ENV
    threads: timing_threads
    resources:
        gpu=gpus_per_job,
        gpu_slots=time_gpu_slots,
    params:
        data=DATA,  # a param, not an input: see data.smk
        spec=lambda w: json.dumps(STUDY.variants[w.variant].run_dict(), sort_keys=True),
        device=STUDY.execution["device"],
        jobs_per_gpu=JOBS_PER_GPU,
        torch_threads=STUDY.execution["threads"],
    shell:
        "cnnbench time --spec {params.spec:q} --data {params.data} --splits {input.splits} "
        "--threads {params.torch_threads} --device {params.device} --jobs-per-gpu {params.jobs_per_gpu} "
        "--out {output} 2> {log}"
