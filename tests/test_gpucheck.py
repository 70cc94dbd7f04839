"""`cnnbench gpu-check` where there is no GPU, and its steps' mechanics on the CPU."""

from __future__ import annotations

import json

import pytest
import torch

from cnnbench import gpucheck
from cnnbench.cli import main
from tests.helpers import REPO


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: gpu-check would run for real")
def test_without_a_gpu_it_says_so_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "check" / "summary.json"
    assert main(["gpu-check", "--out", str(out)]) == 2
    text = capsys.readouterr().out
    assert "no CUDA GPU is visible to torch here" in text and "Run `cnnbench gpu-check` on a GPU node" in text
    assert not out.exists()


def test_a_failing_step_does_not_hide_the_others_and_the_budget_is_kept():
    steps = gpucheck.Steps(budget_s=100, log=lambda m: None)
    steps.run("broken", 20, lambda limit: 1 / 0)
    steps.run("fine", 20, lambda limit: {"value": limit})
    steps.deadline -= 100  # the budget is spent
    steps.run("late", 20, lambda limit: {})
    broken, fine, late = steps.results
    assert broken["status"] == "failed" and "ZeroDivisionError" in broken["why"]
    assert fine["status"] == "passed" and fine["value"] <= 20
    assert late["status"] == "skipped" and "budget" in late["why"]


def test_the_determinism_step_compares_two_runs_and_measures_the_slowdown(tmp_path):
    result = gpucheck.step_determinism(tmp_path, device="cpu")(60)
    assert result["status"] == "passed" and result["identical"] is True
    assert result["deterministic_slowdown"] > 0
    torch.use_deterministic_algorithms(False)


@pytest.mark.slow
def test_the_study_step_runs_a_study_end_to_end_and_reads_its_results(tmp_path):
    result = gpucheck.step_study(REPO, tmp_path, device="cpu")(600)
    assert result.get("status", "passed") == "passed", result
    assert result["runs"] == 4 * 3 and result["devices"] == ["cpu"] and result["precision"] == ["fp32"]
    assert set(result["val_acc"]) == {"baseline", "batchnorm", "dropout", "aa_control"}
    assert (tmp_path / "study" / "reports" / "gpucheck" / "index.html").is_file()
    json.dumps(result)  # what the summary file holds


def test_the_sweep_step_measures_concurrent_jobs_and_stacked_folds(tmp_path, monkeypatch):
    monkeypatch.setattr(gpucheck, "_has_mlxtend", lambda: False)  # the small digits study: fast here
    result = gpucheck.step_sweep(REPO, tmp_path, device="cpu", counts=(1, 2))(70)
    assert set(result["aggregate_img_per_s"]) == {1, 2} and result["best_jobs_per_gpu"] in (1, 2)
    assert result["stacked_5_folds_img_per_s"] > 0 and result["stacked_vs_best_concurrent"] > 0


@pytest.mark.slow
def test_the_loop_step_compares_compiled_and_eager_loops_with_the_tuned_one(tmp_path):
    result = gpucheck.step_loop_bench(REPO, device="cpu", steps=3)(600)
    assert result["status"] in ("passed", "failed")  # the 80% goal is for GPUs; on this CPU it is only run
    for mode, compile_label in (("compiled", "default"), ("eager", "off")):
        assert result[mode]["compile"] == compile_label and result[mode]["ratio_to_tuned"] > 0
    assert result["compile_speedup_project"] > 0
