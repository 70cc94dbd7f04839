# Validate and resolve the study once (one clear error naming the variant and field, before any job),
# check its memory and compute budget, and define the paths every rule shares. The logic lives in the
# cnnbench library.
import json
import os
import sys

from cnnbench.budget import check_study, detect_machine
from cnnbench.config import AA_CONTROL, load_study
from cnnbench.errors import ConfigError
from cnnbench.env import nvidia_gpus_visible
from cnnbench.runner import RECORD_SCHEMA


def _workflow_cores():
    try:
        return workflow.cores
    except Exception:  # no --cores given (e.g. --lint): every core of the host
        return None


_CONFIGFILE = " + ".join(map(str, workflow.configfiles)) or "config"  # merged in this order by Snakemake
# Snakemake parsed the config itself; the files are read again, strictly, for keys written twice.
STUDY = load_study(config, name_hint=_CONFIGFILE, files=workflow.configfiles)
try:
    _ESTIMATE = check_study(STUDY, detect_machine(STUDY.execution, cores=_workflow_cores()))
except ConfigError as e:
    raise ConfigError(f"{_CONFIGFILE}: {e}") from None
print(_ESTIMATE.summary(), file=sys.stderr)
RESULTS = f"results/{STUDY.name}"
DATA = f"{RESULTS}/data.npz"
REPORT = f"reports/{STUDY.name}/index.html"
ENV = "../envs/cnnbench.yaml"
RUNS = [f"fold{f}-seed{s}" for s in STUDY.seeds for f in STUDY.fold_ids]

# One GPU per training job when training runs on CUDA; profiles/default caps `gpu` at the cards present.
_device = STUDY.execution["device"]
GPUS_PER_JOB = int(_device == "cuda" or (_device == "auto" and nvidia_gpus_visible()))


def _cost(variant):
    """Estimated training work of a variant: MACs per image x epochs."""
    spec = STUDY.variants[variant]
    return sum(r.macs for r in spec.layer_table()) * spec.train["epochs"]


# Longest jobs first, so that the most expensive variant does not run alone at the end.
PRIORITY = {v: rank for rank, v in enumerate(sorted(STUDY.variants, key=_cost))}


TIMED = [v for v in STUDY.variants if v != AA_CONTROL]  # the A/A control shares the baseline's network


def run_files(variant):
    """Result files of one variant; run_files("{variant}") gives the train rule's output patterns."""
    return [f"{RESULTS}/runs/{variant}/{run}.json" for run in RUNS]


wildcard_constraints:
    variant="[A-Za-z0-9][A-Za-z0-9_.-]*",
