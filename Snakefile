# cnnbench: train every variant of a study on every fold, aggregate, and render the report.
#   snakemake --cores all                                    # the default study (config/config.yaml)
#   snakemake --cores all --configfile config/other.yaml     # another study (replaces the default)
from snakemake.utils import min_version

min_version("9.0")

if not workflow.configfiles:  # --configfile replaces the default study instead of being merged into it

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/measure.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/report.smk"


onstart:
    local_gpu_check()
    cluster_notes()
    print(
        f"cnnbench: each training job's progress (run, epoch, time left): {RESULTS}/logs/train/<variant>"
        + (".g<k>.log (k: the job's group of runs)" if len(RUN_GROUPS) > 1 else ".log")
        + f"; the timing job's (variant, time left): {RESULTS}/logs/time.log",
        file=sys.stderr,
    )


onsuccess:
    print(f"cnnbench: report: {REPORT}", file=sys.stderr)


rule all:
    default_target: True
    input:
        REPORT,
        [f for v in STUDY.variants for f in run_files(v)],  # a run record deleted by hand is retrained
        rules.time.output,  # a timing record moved aside is measured again,
        rules.collect.output,  # and a table lost with a failed collect is made again (not "nothing to do")
        rules.prepare_data.output[0],  # a deleted cache or split is made again; being ancient() inputs
        rules.split.output[0],  # everywhere, that retrains nothing
