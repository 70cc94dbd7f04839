"""Fault injection on tiny real studies: kill -9 mid-run, a corrupt or deleted record, a deleted cache, two
workflows on one study, a diverging variant. Each must heal without retraining what was finished."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests import helpers
from tests.helpers import REPO, tiny_study, write_yaml
from tests.test_workflow import planned_train_jobs, snakemake

pytestmark = pytest.mark.slow

# One variant, 4 folds of 3 epochs: long enough (~10 s of training) to be killed in the middle.
CRASH_STUDY = tiny_study(study="crash", protocol={"folds": 4, "seeds": [0], "epochs": 3, "batch_size": 32},
                         variants={"baseline": {"base": "cnn"}}, aa_control=False)
RESULTS = Path("results") / "crash"


def start(workdir: Path) -> subprocess.Popen:
    """The workflow in the background, in its own process group (so kill -9 reaches its jobs too)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.Popen([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
                             "--configfile", str(workdir / "study.yaml"), "--cores", "2"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def wait_for(predicate, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for the workflow")
        time.sleep(0.2)


def run_numbers(workdir: Path) -> dict[str, dict]:
    return helpers.run_numbers(workdir / RESULTS / "runs")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("uninterrupted")
    write_yaml(workdir / "study.yaml", CRASH_STUDY)
    out = snakemake(workdir)
    assert out.returncode == 0, out.stderr
    return workdir


def test_kill_9_then_resume_loses_and_retrains_nothing(uninterrupted, tmp_path):
    write_yaml(tmp_path / "study.yaml", CRASH_STUDY)
    proc = start(tmp_path)
    resume = tmp_path / RESULTS / ".resume"
    wait_for(lambda: len(list(resume.rglob("fold*.json"))) >= 2)  # two runs finished, the job goes on
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.name: p.read_bytes() for p in resume.rglob("fold*.json")}
    assert 2 <= len(finished) < 4

    locked = snakemake(tmp_path)
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr  # what the README says to run
    assert snakemake(tmp_path, "--unlock").returncode == 0
    out = snakemake(tmp_path)  # profiles/default reruns the incomplete job by itself
    assert out.returncode == 0, out.stdout + out.stderr
    log = (tmp_path / RESULTS / "logs" / "train" / "baseline.log").read_text()
    assert log.count("finished earlier, reusing") == len(finished)
    for name, content in finished.items():  # reused byte for byte, not retrained
        assert (tmp_path / RESULTS / "runs" / "baseline" / name).read_bytes() == content
    assert run_numbers(tmp_path) == run_numbers(uninterrupted)
    assert (tmp_path / "reports" / "crash" / "index.html").exists()


def test_a_truncated_record_is_named_moved_aside_and_healed(uninterrupted, tmp_path):
    """The damaged copy is named and moved aside; the next run restores it from the run store without
    training. Damaged in the store too, exactly that run retrains."""
    import shutil

    workdir = tmp_path / "study"
    shutil.copytree(uninterrupted, workdir, symlinks=True)
    runs = workdir / RESULTS / "runs" / "baseline"
    before = {p.name: p.read_bytes() for p in runs.glob("*.json")}
    broken = runs / "fold2-seed0.json"
    broken.write_text(broken.read_text()[:200])

    out = snakemake(workdir)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "fold2-seed0.json" in text and "run snakemake again" in text
    assert "Traceback" not in (workdir / RESULTS / "logs" / "collect.log").read_text()
    assert (workdir / RESULTS / "quarantine" / "baseline" / "fold2-seed0.json").exists() and not broken.exists()

    assert planned_train_jobs(workdir) == ["baseline"]
    out = snakemake(workdir)
    assert out.returncode == 0, out.stdout + out.stderr
    log = (workdir / RESULTS / "logs" / "train" / "baseline.log").read_text()
    assert log.count("finished earlier, reusing") == 4  # restored from the run store: nothing trained
    assert {p.name: p.read_bytes() for p in runs.glob("*.json")} == before

    broken.write_text(broken.read_text()[:200])  # damaged in the output and in the run store
    stored = next((workdir / RESULTS / ".resume" / "baseline").rglob("fold2-seed0.json"))
    stored.write_text(stored.read_text()[:100])
    assert snakemake(workdir).returncode != 0  # collect names it and moves it aside
    out = snakemake(workdir)
    assert out.returncode == 0, out.stdout + out.stderr
    log = (workdir / RESULTS / "logs" / "train" / "baseline.log").read_text()
    assert log.count("finished earlier, reusing") == 3 and "run 3/4 (fold 2" in log  # only that run trained
    assert run_numbers(workdir) == run_numbers(uninterrupted)


def test_a_truncated_timing_record_is_moved_aside_and_the_study_timed_again(uninterrupted, tmp_path):
    """A trial: a cut-short timing file failed collect, Snakemake deleted collect's tables with it, and
    every later run said 'Nothing to be done' over a stale report and the corrupt file."""
    import shutil

    workdir = tmp_path / "study"
    shutil.copytree(uninterrupted, workdir, symlinks=True)
    timing = workdir / RESULTS / "timing" / "baseline.json"
    timing.write_text(timing.read_text()[:200])
    report = workdir / "reports" / "crash" / "index.html"
    report_before = report.stat().st_mtime_ns

    out = snakemake(workdir)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "timing record(s) unusable" in text and "baseline.json" in text
    assert "it times the study's variants again" in text and "Traceback" not in text
    assert (workdir / RESULTS / "quarantine" / "timing" / "baseline.json").exists() and not timing.exists()

    out = snakemake(workdir)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "rule train" not in out.stdout + out.stderr  # nothing retrained: only timed, collected, reported
    assert timing.is_file() and (workdir / RESULTS / "runs.parquet").is_file()
    assert report.stat().st_mtime_ns > report_before
    assert run_numbers(workdir) == run_numbers(uninterrupted)
    lost = workdir / RESULTS / "runs.parquet"  # a table lost by hand (or with a failed collect) is made again
    lost.unlink()
    out = snakemake(workdir)
    assert out.returncode == 0 and lost.is_file(), out.stdout + out.stderr


def test_a_deleted_record_is_retrained_alone(uninterrupted, tmp_path):
    import shutil

    workdir = tmp_path / "study"
    shutil.copytree(uninterrupted, workdir, symlinks=True)
    (workdir / RESULTS / "runs" / "baseline" / "fold1-seed0.json").unlink()
    assert planned_train_jobs(workdir) == ["baseline"]  # not "Nothing to be done"


def test_a_deleted_or_touched_cache_retrains_nothing(uninterrupted, tmp_path):
    import shutil

    workdir = tmp_path / "study"
    shutil.copytree(uninterrupted, workdir, symlinks=True)
    (workdir / RESULTS / "data.npz").unlink()
    os.utime(workdir / RESULTS / "splits.json")  # as if rewritten now
    assert planned_train_jobs(workdir) == []
    out = snakemake(workdir)
    assert out.returncode == 0, out.stderr
    assert (workdir / RESULTS / "data.npz").exists()
    assert run_numbers(workdir) == run_numbers(uninterrupted)


def test_two_workflows_on_one_study_at_once(tmp_path):
    write_yaml(tmp_path / "study.yaml", CRASH_STUDY)
    first = start(tmp_path)
    wait_for(lambda: (tmp_path / RESULTS / "logs" / "train" / "baseline.log").exists())
    second = snakemake(tmp_path)
    assert second.returncode != 0 and "lock" in (second.stdout + second.stderr).lower()
    assert first.wait(timeout=300) == 0
    assert len(list((tmp_path / RESULTS / "runs").rglob("*.json"))) == 4


def test_a_diverging_variant_is_reported_and_left_out_of_the_statistics(tmp_path):
    study = tiny_study(study="diverge", protocol={"folds": 2, "seeds": [0], "epochs": 4, "batch_size": 32},
                       variants={"baseline": {"base": "cnn"}, "huge_lr": {"base": "baseline", "lr": 90.0},
                                 "bn": {"base": "baseline", "bn": True}}, aa_control=False)
    write_yaml(tmp_path / "study.yaml", study)
    out = snakemake(tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    runs = pd.read_parquet(tmp_path / "results" / "diverge" / "runs.parquet")
    bad = runs[runs.variant == "huge_lr"]
    assert (bad["status"] == "diverged").all() and (bad["diverged_epoch"] < 4).all()
    assert (runs[runs.variant != "huge_lr"]["status"] == "ok").all()
    html = (tmp_path / "reports" / "diverge" / "index.html").read_text()
    assert "2 run(s) did not train" in html and re.search(r"huge_lr: 2 of 2 runs \((diverged \(non-finite loss\)|stuck at "
                                                        r"chance) at epochs \d, \d of 4\)", html)
    assert "<b>huge_lr</b>" not in html.split("Every variant against")[1].split("</ul>")[0]  # no verdict
    assert "Shaded" not in html  # no A/A control: the forest plot's caption promises no band (a trial)


def test_a_record_edited_by_hand_is_caught_and_restored_from_the_run_store(recorded, tmp_path):
    """Still valid JSON, but its headline metric no longer agrees with its own last epoch: collect refuses
    it by name and moves it aside; the run store's copy is untouched, so a rerun restores it; a store copy
    edited the same way is not reused (it would be refused again)."""
    import json
    import shutil

    from cnnbench.errors import CnnbenchError
    from cnnbench.results import load_records
    from cnnbench.runner import reusable

    root = tmp_path / "tiny"
    shutil.copytree(recorded.parents[2], root)
    path = root / "runs" / "batchnorm" / "fold1-seed0.json"
    record = json.loads(path.read_text())
    record["metrics"]["val_acc"] = 0.9999
    path.write_text(json.dumps(record))
    with pytest.raises(CnnbenchError, match=r"fold1-seed0.json: metrics.val_acc is 0.9999 but its last epoch's"):
        load_records([path], root / "data.npz", root / "splits.json")
    assert (root / "quarantine" / "batchnorm" / "fold1-seed0.json").exists() and not path.exists()
    stored = next((root / ".resume").rglob("fold1-seed0.json"))
    assert reusable(stored)
    stored.write_text(json.dumps(record))
    assert not reusable(stored)
    record["metrics"]["val_acc"], record["val_pred"] = record["epochs"][-1]["val_acc"], None  # damaged, not edited
    stored.write_text(json.dumps(record))
    assert not reusable(stored)
    path.write_text(json.dumps({**record, "val_pred": [], "data": "lost"}))
    with pytest.raises(CnnbenchError, match="not what a run record holds there"):  # named, not a crash
        load_records([path], root / "data.npz", root / "splits.json")
