"""The tiny study through profiles/slurm on a real one-node Slurm cluster, one run per cluster job.

.ci/run installs and starts the cluster (`.ci/slurm-ci.sh`, from shared/slurm); without one this test
skips and says how to start it. The workflow runs under a timeout, so a hang (the executor plugin polls
a failing sacct forever on a cluster without accounting unless told to use squeue) fails instead of
stalling CI.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, TINY_STUDY, run_numbers, tiny_study, write_yaml
from tests.test_workflow import snakemake

pytestmark = [pytest.mark.slow, pytest.mark.slurm]
START = "SLURM_ACCT=none bash .ci/slurm-ci.sh install && SLURM_ACCT=none bash .ci/slurm-ci.sh start"
TIMEOUT_S = 600


def cluster_is_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    return out.returncode == 0 and bool({"idle", "mix"} & set(out.stdout.split()))


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    """Skips, with the command that starts one, where no Slurm cluster is up (CI starts one)."""
    if not cluster_is_up():
        pytest.skip(f"no Slurm cluster is up (sinfo finds no idle node); start a one-node one as root with: {START}")
    if shutil.which("sbatch") is None:
        pytest.skip(f"sbatch is not installed; {START}")


@pytest.fixture(scope="module")
def slurm_study(slurm_cluster, tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("slurm")
    write_yaml(workdir / "study.yaml", TINY_STUDY)
    out = run_on_slurm(workdir)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    (workdir / "snakemake.log").write_text(out.stdout + out.stderr)
    return workdir


def run_on_slurm(workdir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
           "--configfile", str(workdir / "study.yaml"), "--workflow-profile", str(REPO / "profiles" / "slurm"),
           # a cluster without accounting (the CI one): squeue, and a quick first check (README, shared/slurm)
           "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "3"]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        subprocess.run(["scancel", "--user", os.environ.get("USER", "root")], capture_output=True)
        pytest.fail(f"the Slurm workflow did not finish within {TIMEOUT_S} s: {str(e.stderr)[-2000:]}")


def test_a_gpu_study_asks_slurm_for_a_gpu_per_job(slurm_cluster, tmp_path):
    """Snakemake parses the workflow before it sets up the executor (workflow.local_exec is True while
    parsing): decided then, a GPU study's jobs asked Slurm for no GPU and for local GPU slots instead. The
    one-node cluster has no GPU, so sbatch refuses the request, which shows what was asked."""
    write_yaml(tmp_path / "study.yaml", tiny_study(execution={"device": "cuda", "threads": 2}, aa_control=False,
                                                   variants={"baseline": {"base": "cnn"}}))
    out = run_on_slurm(tmp_path)
    log = out.stdout + out.stderr
    assert out.returncode != 0 and "Invalid generic resource (gres) specification" in log, log[-3000:]
    calls = dict(re.findall(r"sbatch --parsable .*?--output \S*/slurm_logs/rule_(\w+)/\S* (.*)", log))
    assert "--gpus=1" in calls["train_0"] and "--gpus=1" in calls["time"], calls
    assert "--cpus-per-task=2" in calls["time"], calls  # execution.threads: a node of its own, not local cores
    assert "cnnbench: no slurm_partition set" in log  # the start-up note, which never printed either


def test_every_run_went_through_slurm_as_its_own_job(slurm_study):
    """runs_per_job 1 (profiles/slurm): one Slurm job per (variant, fold, seed) run, each with its own id."""
    runs = sorted((slurm_study / "results" / "tiny" / "runs").rglob("*.json"))
    assert len(runs) == 8  # 4 variants (A/A control included) x 2 folds
    log = (slurm_study / "snakemake.log").read_text()
    submitted = re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_(\w+)/", log)
    train_ids = {job for job, rule in submitted if rule.startswith("train_")}
    assert len(train_ids) == 8, submitted
    assert {rule for _, rule in submitted} >= {"prepare_data", "split", "train_0", "train_1", "time", "collect",
                                                "report"}


def test_report_renders_and_numbers_equal_a_local_run(slurm_study, tmp_path):
    html = (slurm_study / "reports" / "tiny" / "index.html").read_text()
    assert "Noise floor (A/A control)" in html and "data:image/png;base64," in html
    write_yaml(tmp_path / "study.yaml", tiny_study())
    local = snakemake(tmp_path)
    assert local.returncode == 0, local.stderr
    assert run_numbers(slurm_study / "results" / "tiny" / "runs") == run_numbers(tmp_path / "results" / "tiny" / "runs")
