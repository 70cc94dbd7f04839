# Transfer learning: each entry of the study's `pretrain:` section is trained once, on its source data
# (not once per fold), and the variants that start from it (`pretrained: NAME`) take its weights file as an
# input. What the file was made from is part of those variants' spec hash, so a changed source retrains
# them; its sha256 is in every run record they write.
rule pretrain:
    output:
        f"{RESULTS}/pretrained/{{name}}.pt",
    log:
        f"{RESULTS}/logs/pretrain/{{name}}.log",
    wildcard_constraints:
        name="|".join(STUDY.pretrain) or "(?!x)x",
    conda:
        ENV
    threads: STUDY.execution["threads"]
    resources:
        gpu=gpus_per_job,
        gpu_slots=train_gpu_slots,
    params:
        spec=lambda w: json.dumps(STUDY.pretrain[w.name].run_dict(), sort_keys=True),
        source=lambda w: json.dumps(STUDY.pretrain_sources[w.name], sort_keys=True),
        device=STUDY.execution["device"],
        jobs_per_gpu=JOBS_PER_GPU,
    shell:
        "cnnbench pretrain --spec {params.spec:q} --source {params.source:q} --out {output} --threads {threads} "
        "--device {params.device} --jobs-per-gpu {params.jobs_per_gpu} 2> {log}"
