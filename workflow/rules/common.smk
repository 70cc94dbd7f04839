# Validate and resolve the study once (one clear error naming the variant and field, before any job),
# check its memory and compute budget, and define the paths every rule shares. The logic lives in the
# cnnbench library.
import hashlib
import json
import math
import os
import sys
from pathlib import Path

from cnnbench.budget import check_study, detect_machine
from cnnbench.config import AA_CONTROL, load_study
from cnnbench.config_yaml import with_typed_overrides
from cnnbench.errors import ConfigError
from cnnbench.env import (
    local_gpu_memory_bytes,
    nvidia_gpus_visible,
    snakemake_takes_priority_functions,
    visible_gpu_count,
)
from cnnbench.runner import RECORD_SCHEMA


def _workflow_cores():
    try:
        return workflow.cores
    except Exception:  # no --cores given (e.g. --lint): every core of the host
        return None


_CONFIGFILE = " + ".join(map(str, workflow.configfiles)) or "config"  # merged in this order by Snakemake
if workflow.config_settings.config:  # an error may be in a --config value (given or from a profile)
    _CONFIGFILE += " + --config (command line or profile)"
# Snakemake parsed the config itself; the files are read again, strictly, for keys written twice. A bad
# config is one line and exit status 1: raised, Snakemake would wrap it in its own header and frames.
try:
    STUDY = load_study(
        # only --config's values: overwrite_config also holds every --configfile's, whose quoted "64" must
        # stay text (and be refused)
        with_typed_overrides(config, workflow.config_settings.config),
        name_hint=_CONFIGFILE,
        files=workflow.configfiles,
    )
    try:
        # the GPU memory of the host that runs Snakemake, where nvidia-smi tells (else 16 GB assumed)
        _ESTIMATE = check_study(
            STUDY,
            detect_machine(
                STUDY.execution,
                cores=_workflow_cores(),
                gpu_memory_bytes=local_gpu_memory_bytes() if nvidia_gpus_visible() else None,
            ),
        )
    except ConfigError as e:
        raise ConfigError(f"{_CONFIGFILE}: {e}") from None
except ConfigError as e:
    print(e, file=sys.stderr)
    sys.exit(1)
print(_ESTIMATE.summary(), file=sys.stderr)
RESULTS = f"results/{STUDY.name}"
DATA = f"{RESULTS}/data.npz"
REPORT = f"reports/{STUDY.name}/index.html"
ENV = "../envs/cnnbench.yaml"
RUNS = [f"fold{f}-seed{s}" for s in STUDY.seeds for f in STUDY.fold_ids]  # seed-major: a new seed appends
_PER_JOB = STUDY.execution["runs_per_job"]
_PER_JOB = len(RUNS) if _PER_JOB == "all" else _PER_JOB
RUN_GROUPS = [RUNS[i : i + _PER_JOB] for i in range(0, len(RUNS), _PER_JOB)]


def on_cluster():
    """Whether jobs go to a cluster executor (Slurm). Snakemake reads this file before it sets up the
    executor: while parsing, workflow.local_exec is True whatever --executor or the profile says. So every
    setting that depends on it is a function, asked when the jobs are made (threads, resources), or runs
    in onstart (cluster_notes)."""
    return not workflow.local_exec


def timing_threads(wildcards):
    """Timing holds every core the workflow has locally; on a cluster it gets a node of its own instead."""
    return STUDY.execution["threads"] if on_cluster() else (_workflow_cores() or 1)


def local_gpu_check():
    """At start, on this machine: a cuda study with training, pretraining or timing jobs to run where
    torch sees no GPU stops here, in one line, rather than in its first training job inside Snakemake's
    error block. The jobs' own test (torch.cuda.is_available: WSL2 and ROCm GPUs have no /dev/nvidia*);
    a run that only rebuilds the report needs none. (Not while parsing: a cluster run parses on a login node without
    GPUs, and workflow.local_exec is only known once the executor is set up.)"""
    if on_cluster() or STUDY.execution["device"] != "cuda":
        return
    dag = getattr(workflow, "dag", None)
    if dag is not None and not any(
        job.rule.name.startswith(("train", "time", "pretrain")) for job in dag.needrun_jobs()
    ):
        return
    import torch

    if torch.cuda.is_available():
        return
    print(
        f"{_CONFIGFILE}: execution.device: 'cuda' but torch sees no GPU on this machine (none, no driver, a "
        "CPU-only torch, or CUDA_VISIBLE_DEVICES hides them); use device: auto or cpu, or run on a GPU node",
        file=sys.stderr,
    )
    raise SystemExit(1)


def cluster_notes():
    """At start, on a cluster: where jobs go when no partition or account is set."""
    if not on_cluster():
        return
    _res = workflow.resource_settings.default_resources
    _set = getattr(_res, "parsed", {}) if _res is not None else {}
    if STUDY.execution["device"] == "auto":
        print(
            "cnnbench: execution.device is auto: cluster jobs ask for no GPU; set execution.device: cuda in the "
            "study for GPU nodes",
            file=sys.stderr,
        )
    for _key, _what in (("slurm_partition", "partition"), ("slurm_account", "account")):
        if not _set.get(_key):
            print(
                f"cnnbench: no {_key} set: jobs go to the cluster's default {_what}; set it in "
                f"profiles/slurm/config.yaml or with --default-resources {_key}=NAME",
                file=sys.stderr,
            )


def pretrained_weights(variant):
    """The pretrain job's weights file a `pretrained:` variant starts from (none for the others)."""
    name = STUDY.variants[variant].train.get("pretrained")
    return [f"{RESULTS}/pretrained/{name}.pt"] if name else []


def train_rule(index):
    """Rule name of run group `index`: one `train` rule when a job trains all runs of a variant."""
    return "train" if len(RUN_GROUPS) == 1 else f"train_{index}"


def group_suffix(index):
    return "" if len(RUN_GROUPS) == 1 else f".g{index}"


def job_minutes(variant, runs):
    """Slurm runtime request of a training job: the budget's estimate for its runs x 3, at least 10 min."""
    v = _ESTIMATE.variants[variant]
    return max(10, math.ceil(3 * v.macs / v.runs * runs / _ESTIMATE.machine.macs_per_s / 60))


def timing_minutes():
    """Slurm runtime request of the timing job, which times every variant: per variant one epoch (its
    memory figure), a minute for the timed blocks and a process start (10 s here, slower from a cluster's
    shared file system), two more when compiling; x 3, at least 30 min (the profile's default for a job).
    A timing job that runs out of time loses every variant's figure, so the request errs long."""
    per_variant_s = 60 + (120 if STUDY.execution["compile"] else 0)
    seconds = sum(
        v.macs / v.runs / STUDY.variants[name].train["epochs"] / _ESTIMATE.machine.macs_per_s + per_variant_s
        for name, v in _ESTIMATE.variants.items()
        if name in TIMED
    )
    return max(30, math.ceil(3 * seconds / 60))


def job_mem_mb(variant):
    """Slurm memory request of a training job: the budget's estimate (already 2x on model and activations)."""
    return max(2000, math.ceil(_ESTIMATE.variants[variant].memory_bytes / 2**20))


# GPUs. Locally, each GPU has `execution.jobs_per_gpu` slots and the `gpu_slots` resource counts them
# (GPUs x jobs_per_gpu, unless given with --resources gpu_slots=N): a training job takes one slot, the
# timing job every slot of one GPU. Which GPU and slot a job gets is decided by the job itself
# (cnnbench/gpuslots.py: lock files), since Snakemake hands out no GPU ids locally. On a cluster, each
# job asks the executor for one GPU (the Slurm plugin's `gpu` resource) and Slurm assigns it.
_device = STUDY.execution["device"]
ON_GPU = _device == "cuda" or (_device == "auto" and nvidia_gpus_visible())
JOBS_PER_GPU = _ESTIMATE.jobs_per_gpu  # execution.jobs_per_gpu, auto resolved (cnnbench.budget)


def gpus_per_job(wildcards):
    """GPUs a job asks the cluster for (the Slurm plugin's `gpu` resource): one with device cuda, none locally.
    Not for `auto`: the GPUs of the host that submits (or of the node that runs the job step, which reads
    this file again) say nothing about what the job was allocated."""
    return int(_device == "cuda" and on_cluster())


def train_gpu_slots(wildcards):
    """Local GPU slots a training job holds: one on a GPU study run locally."""
    return int(ON_GPU and not on_cluster())


def time_gpu_slots(wildcards):
    """The timing job holds every slot of one GPU, locally."""
    return JOBS_PER_GPU * train_gpu_slots(wildcards)


# registered for every GPU study (a cluster's jobs ask for none of it); which executor runs is not known yet
if ON_GPU and "gpu_slots" not in workflow.global_resources:
    workflow.register_resource("gpu_slots", max(1, visible_gpu_count()) * JOBS_PER_GPU)


def _cost(variant):
    """Estimated training work of a variant: MACs per image x epochs."""
    spec = STUDY.variants[variant]
    return sum(r.macs for r in spec.layer_table()) * spec.train["epochs"]


# Longest jobs first, so that the most expensive variant does not run alone at the end. A Snakemake
# older than 9.17 takes no function here: the same jobs then start in its own order.
PRIORITY = {v: rank for rank, v in enumerate(sorted(STUDY.variants, key=_cost))}
TRAIN_PRIORITY = (lambda w: PRIORITY[w.variant]) if snakemake_takes_priority_functions() else 0


TIMED = [v for v in STUDY.variants if v != AA_CONTROL]  # the A/A control shares the baseline's network
TIMING_SPECS = json.dumps([STUDY.variants[v].run_dict() for v in TIMED], sort_keys=True)  # in study order
# what the timing records depend on: the specs, and (as for training) the networks the code builds from them
TIMING_SPECS_SHA256 = hashlib.sha256(
    json.dumps([TIMING_SPECS, [STUDY.variants[v].spec_hash for v in TIMED]]).encode()
).hexdigest()


def write_timing_specs(specs, path, log):
    """The timing job's input (measure.smk): the specs of the variants it times, as JSON."""
    Path(path).write_text(specs)
    Path(log).write_text(f"{len(TIMED)} variant specs -> {path}\n")


def run_files(variant):
    """Result files of one variant."""
    return [f"{RESULTS}/runs/{variant}/{run}.json" for run in RUNS]


def job_files(kind, variant, ext):
    """One file per training job of a variant: its weights (models), log or benchmark."""
    return [f"{RESULTS}/{kind}/{variant}{group_suffix(i)}.{ext}" for i in range(len(RUN_GROUPS))]


wildcard_constraints:
    variant="[A-Za-z0-9][A-Za-z0-9_.-]*",
