# Speed measured alone: one job times every variant of the study, back to back, holding every core (and
# every slot of one GPU), so no other job of this workflow runs meanwhile and all speeds come from one
# machine in one stretch of time; training jobs' own speed is kept in their records but measured under
# load. On the CPU each variant is timed in a fresh process of its own, on CUDA all in one (see
# cnnbench/timing.py). On a cluster the job asks Slurm for a node of its own (--exclusive in
# profiles/slurm). The A/A control builds the baseline's network: it is not timed again.


# The specs go to the job in a file: a study's specs on one command line would pass Linux's 128 KiB limit
# on one argument at ~110 variants. A changed spec rewrites the file (the hash param), which re-times the
# study; so does a changed network built from the same spec (the hash covers the spec hashes).
# (Not ancient(): with the file's params changed, Snakemake 9.27 then planned that job alone, no training.)
rule timing_specs:
    output:
        f"{RESULTS}/timing-specs.json",
    log:
        f"{RESULTS}/logs/timing_specs.log",
    localrule: True
    params:
        specs_sha256=TIMING_SPECS_SHA256,  # (not the specs: Snakemake prints a changed param in full)
    run:
        write_timing_specs(TIMING_SPECS, output[0], log[0])


rule time:
    input:
        specs=rules.timing_specs.output[0],
        splits=ancient(rules.split.output[0]),
    output:
        [f"{RESULTS}/timing/{v}.json" for v in TIMED],
    log:
        f"{RESULTS}/logs/time.log",
    benchmark:
        f"{RESULTS}/benchmarks/time.tsv"
    conda:
        ENV
    threads: timing_threads
    resources:
        gpu=gpus_per_job,
        gpu_slots=time_gpu_slots,
        runtime=lambda w: timing_minutes(),
        mem_mb=lambda w: max(job_mem_mb(v) for v in TIMED),
    params:
        data=DATA,  # a param, not an input: see data.smk
        specs_sha256=TIMING_SPECS_SHA256,  # re-timed on a changed spec, or network built from it
        out_dir=lambda w, output: os.path.dirname(output[0]),
        device=STUDY.execution["device"],
        jobs_per_gpu=JOBS_PER_GPU,
        torch_threads=STUDY.execution["threads"],
    shell:
        "cnnbench time --specs {input.specs} --data {params.data} --splits {input.splits} "
        "--threads {params.torch_threads} --device {params.device} --jobs-per-gpu {params.jobs_per_gpu} "
        "--out-dir {params.out_dir} 2> {log}"
