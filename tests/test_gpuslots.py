"""GPU slot assignment (cnnbench.gpuslots), exercised with lock files for made-up GPU ids: no GPU needed."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from cnnbench.errors import CnnbenchError
from cnnbench.gpuslots import acquire, try_acquire

GPUS = ["GPU-aaaa", "GPU-bbbb"]


def test_jobs_spread_over_gpus_and_never_share_a_slot(tmp_path):
    held = [try_acquire(GPUS, 2, directory=tmp_path) for _ in range(4)]
    assert [s.index for s in held] == [0, 1, 0, 1]  # the least busy GPU first
    assert len({(s.gpu_id, s.slots[0]) for s in held}) == 4  # four distinct slots
    assert try_acquire(GPUS, 2, directory=tmp_path) is None  # 2 GPUs x 2 slots: full
    held[1].release()
    again = try_acquire(GPUS, 2, directory=tmp_path)
    assert (again.index, again.slots) == (held[1].index, held[1].slots)


def test_an_exclusive_job_gets_a_whole_gpu_or_waits(tmp_path):
    trainer = try_acquire(GPUS, 3, directory=tmp_path)
    timer = try_acquire(GPUS, 3, exclusive=True, directory=tmp_path)
    assert timer.index != trainer.index and timer.slots == [0, 1, 2]
    assert try_acquire(GPUS, 3, exclusive=True, directory=tmp_path) is None  # one GPU busy, the other taken
    other = try_acquire(GPUS, 3, directory=tmp_path)
    assert other.index == trainer.index  # trainers share the GPU the timer does not hold
    with pytest.raises(TimeoutError, match="no whole GPU became free"):
        acquire(GPUS, 3, exclusive=True, directory=tmp_path, timeout_s=0.6)
    trainer.release()
    other.release()
    assert acquire(GPUS, 3, exclusive=True, directory=tmp_path, timeout_s=2).index == trainer.index


def test_a_killed_job_frees_its_slot(tmp_path):
    """flock dies with the process: a crashed or killed training job never leaves a GPU slot taken."""
    code = (f"import sys, time; sys.path.insert(0, {str(tmp_path)!r}); from pathlib import Path;"
            f"from cnnbench.gpuslots import try_acquire;"
            f"s = try_acquire(['GPU-only'], 1, directory=Path({str(tmp_path)!r})); print(s.index, flush=True);"
            f"time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "0"
        assert try_acquire(["GPU-only"], 1, directory=tmp_path) is None
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 5
    while (slot := try_acquire(["GPU-only"], 1, directory=tmp_path)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert slot is not None and slot.index == 0


def test_no_visible_gpu_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="no CUDA device is visible"):
        acquire([], 1, directory=tmp_path)


def test_the_concurrency_sweep_runs_separate_jobs_and_sums_their_speed(tmp_path):
    """The sweep's mechanics on the CPU (on a GPU it picks execution.jobs_per_gpu): N processes warm up,
    start together, and the aggregate is the sum of what each trained in the same window; each count is
    measured twice, there and back, by the same processes."""
    from cnnbench.gpusweep import format_sweep, sweep
    from tests.helpers import tiny_study, write_yaml

    cfg = write_yaml(tmp_path / "s.yaml", tiny_study())
    r = sweep(cfg, counts=(1, 2), device="cpu", seconds=1.0)
    assert [row["jobs"] for row in r["rows"]] == [1, 2, 2, 1] and r["left_out"] == [] and r["start_s"] > 0
    two = r["rows"][1]
    assert len(two["per_job_img_per_s"]) == 2 and two["aggregate_img_per_s"] == pytest.approx(sum(two["per_job_img_per_s"]))
    assert all(v > 0 for row in r["rows"] for v in row["per_job_img_per_s"])
    text = format_sweep(r)
    assert r["best_jobs_per_gpu"] in (1, 2) and "no execution.jobs_per_gpu advice" in text  # a CPU sweep
    assert "2 repeats: " in text and "1 s a measurement" in text
    assert "best: execution.jobs_per_gpu: 2" in format_sweep({**r, "device": "cuda", "best_jobs_per_gpu": 2})


def test_each_count_is_measured_there_and_back():
    from cnnbench.gpusweep import measurement_order

    assert measurement_order((1, 2, 4, 8, 16)) == [1, 2, 4, 8, 16, 16, 8, 4, 2, 1]
    assert measurement_order((1, 2), repeats=3) == [1, 2, 2, 1, 1, 2] and measurement_order((8,), 1) == [8]


class FakePool:
    """JobPool's interface without processes: `rates` are the aggregate img/s measured in turn (the first
    call is the sweep's unrecorded settling measurement), `cost(n)` the seconds a measurement of n jobs
    takes on the fake `clock` (the scheduling under test), `fail_at` the call that loses a job."""

    def __init__(self, rates=(), cost=None, clock=None, size=16, failed=None, fail_at=None):
        self.rates, self.cost, self.clock, self.size, self.failed_to_start = iter(rates), cost, clock, size, failed
        self.fail_at, self.calls = fail_at, []

    def __call__(self, size, config, variant, device, threads, end=None, warm_end=None):
        self.size = min(self.size, size)
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def measure(self, n, seconds, end=None):
        import subprocess

        self.calls.append((n, None if end is None or self.clock is None else end - self.clock[0], seconds))
        if len(self.calls) == self.fail_at:
            raise CnnbenchError("RuntimeError: CUDA error: an illegal memory access (test)")
        if self.cost is not None:
            cost = self.cost(n)
            if end is not None and self.clock[0] + cost > end:
                self.clock[0] = end
                raise subprocess.TimeoutExpired("sweep", 0)
            self.clock[0] += cost
        rate = next(self.rates, 100.0 * n)
        return {"jobs": n, "aggregate_img_per_s": rate, "per_job_img_per_s": [rate / n] * n, "precision": "bf16",
                "compile": "off"}


def test_speed_ups_and_the_best_count_compare_mean_rates_against_the_fewest_jobs(monkeypatch):
    """`gpu-sweep --jobs 16 8 16 8` (a paired re-measurement on an H200) printed "1.00x one job" for 16
    jobs: the first row was taken for one job. The base is the fewest jobs measured, each count's rate
    is the mean of its repeats (so one lucky repeat does not pick the setting), and the text names the base."""
    from cnnbench import gpusweep

    def run(counts, rates):
        monkeypatch.setattr(gpusweep, "JobPool", FakePool([1.0, *rates]))  # 1.0: the settling measurement
        return gpusweep.sweep("s.yaml", counts=counts, device="cuda", repeats=1)

    paired = run((16, 8, 16, 8), [206.0, 193.0, 207.0, 185.0])
    assert paired["best_jobs_per_gpu"] == 16 and paired["speedup_base_jobs"] == 8
    assert paired["speedup_best"] == pytest.approx(206.5 / 189.0) and len(paired["rows"]) == 4
    text = gpusweep.format_sweep(paired)
    assert "(1.00x 8 jobs; 2 repeats: 185-193)" in text and "(1.09x 8 jobs; 2 repeats: 206-207)" in text
    assert "one job" not in text and "1.0 img" not in text
    assert ("best: execution.jobs_per_gpu: 16 (1.09x 8 jobs; its slowest repeat faster than the fastest at 8 job(s): "
            "descriptive, not a test)") in text
    # each count is shown against the base by its mean
    repeated = run((1, 2, 2, 16), [30.0, 40.0, 50.0, 210.0])
    assert repeated["speedup_base_jobs"] == 1 and repeated["best_jobs_per_gpu"] == 16
    text = gpusweep.format_sweep(repeated)
    assert "(1.50x one job; 2 repeats: 40-50)" in text and "16 (7.00x one job)" in text
    assert gpusweep.mean_rates(repeated["rows"]) == {1: 30.0, 2: 45.0, 16: 210.0}
    lucky = run((8, 16, 8, 16), [200.0, 195.0, 170.0, 196.0])  # 8's best repeat (200) is its luck
    assert lucky["best_jobs_per_gpu"] == 16 and lucky["speedup_best"] == pytest.approx(195.5 / 185.0)
    assert "its repeats overlap those at 8 job(s): these repeats do not separate the two" in gpusweep.format_sweep(lucky)


def test_a_sweep_near_its_deadline_keeps_what_it_measured_and_names_what_it_left_out(monkeypatch):
    """gpu-check gives the sweep a deadline (on an H200 16 jobs ran past it, and all was lost): a
    measurement that would likely end past it is not started, one that runs past it is stopped, and what
    was measured is the result. A fake clock: a measurement takes 10 s, 25 s from 4 jobs on; the first
    (1 job, settling) is not recorded."""
    import types

    from cnnbench import gpusweep

    clock = [0.0]
    pools = []

    def sweep(deadline):
        clock[0] = 0.0
        pools.append(FakePool(cost=lambda n: 10.0 if n < 4 else 25.0, clock=clock))
        monkeypatch.setattr(gpusweep, "JobPool", pools[-1])
        return gpusweep.sweep("s.yaml", counts=(1, 2, 4, 8), device="cpu", deadline=deadline)

    monkeypatch.setattr(gpusweep, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    # at 30 s, 4 jobs would need ~1.5 x 10 s: past a 40-s deadline, so not started
    r = sweep(40.0)
    assert [row["jobs"] for row in r["rows"]] == [1, 2] and r["left_out"] == [4, 8] and len(pools[-1].calls) == 3
    assert r["best_jobs_per_gpu"] == 2 and [row["wall_s"] for row in r["rows"]] == [10.0, 10.0]
    assert "not measured: 4, 8 job(s) (not started, too little time left)" in gpusweep.format_sweep(r)
    # with 50 s, 4 jobs start with the 20 s that are left, run past them and are stopped
    r = sweep(50.0)
    assert [row["jobs"] for row in r["rows"]] == [1, 2] and r["left_out"] == [4, 8] and pools[-1].calls[-1][:2] == (4, 20.0)
    assert r["stopped"] == "4 job(s) stopped at the deadline"
    # time for one pass and a little: the second pass is cut, every count is measured once at least
    r = sweep(110.0)
    assert [row["jobs"] for row in r["rows"]] == [1, 2, 4, 8] and r["left_out"] == []
    r = sweep(120.0)
    assert [row["jobs"] for row in r["rows"]] == [1, 2, 4, 8, 8] and r["left_out"] == []
    with pytest.raises(RuntimeError, match="first count"):
        sweep(5.0)
    r = sweep(None)
    assert [row["jobs"] for row in r["rows"]] == [1, 2, 4, 8, 8, 4, 2, 1]


def test_a_sweep_fits_its_measurements_into_the_time_left_and_drops_to_one_pass_when_short(monkeypatch):
    import types

    from cnnbench import gpusweep

    clock = [0.0]
    monkeypatch.setattr(gpusweep, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))

    def sweep(deadline):
        pool = FakePool(clock=clock)
        monkeypatch.setattr(gpusweep, "JobPool", pool)
        return gpusweep.sweep("s.yaml", counts=(1, 2), device="cuda", seconds=None, deadline=deadline), pool

    r, pool = sweep(100.0)  # 4 measurements and the settling one: 20 s each, 10 s at the most
    assert r["repeats"] == 2 and r["seconds"] == 10.0 and {c[2] for c in pool.calls} == {10.0}
    r, pool = sweep(20.0)  # 4 s each would leave 2.5 s of training: one pass of 5.2 s instead
    assert r["repeats"] == 1 and r["seconds"] == pytest.approx(20 / 3 - gpusweep.EACH_S)
    assert [row["jobs"] for row in r["rows"]] == [1, 2]


def test_a_job_lost_mid_sweep_keeps_what_was_measured(monkeypatch):
    """A CUDA error in one of 16 jobs must not cost the 1-8 job measurements made before it."""
    from cnnbench import gpusweep

    monkeypatch.setattr(gpusweep, "JobPool", FakePool(fail_at=4))  # settle, 1, 2, then 4 fails
    r = gpusweep.sweep("s.yaml", counts=(1, 2, 4, 8), device="cuda")
    assert [row["jobs"] for row in r["rows"]] == [1, 2] and r["left_out"] == [4, 8]
    assert "a job failed while 4 ran: RuntimeError: CUDA error" in gpusweep.format_sweep(r)
    monkeypatch.setattr(gpusweep, "JobPool", FakePool(fail_at=2))  # nothing measured yet: an error
    with pytest.raises(CnnbenchError, match="a sweep job failed: RuntimeError: CUDA error"):
        gpusweep.sweep("s.yaml", counts=(1, 2), device="cuda")


def test_counts_beyond_the_jobs_that_started_are_named_with_the_reason(monkeypatch):
    from cnnbench import gpusweep

    monkeypatch.setattr(gpusweep, "JobPool", FakePool(size=2, failed="only 2 of 4 jobs started; job 3: out of memory"))
    r = gpusweep.sweep("s.yaml", counts=(1, 2, 4), device="cuda")
    assert [row["jobs"] for row in r["rows"]] == [1, 2, 2, 1] and r["left_out"] == [4]
    assert "not measured: 4 job(s) (only 2 of 4 jobs started; job 3: out of memory)" in gpusweep.format_sweep(r)
    with pytest.raises(CnnbenchError, match="no job count of 4, 8 can run: only 2 of 4"):
        gpusweep.sweep("s.yaml", counts=(4, 8), device="cuda")


def _tracked_popen(monkeypatch):
    """Every process the pool starts, to check that none is left running."""
    import subprocess

    started, real = [], subprocess.Popen

    def popen(*args, **kwargs):
        started.append(real(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(subprocess, "Popen", popen)
    return started


def test_sweep_jobs_past_their_timeout_are_stopped(tmp_path, monkeypatch):
    """The real workers: a deadline shorter than their start-up (importing torch) stops them all."""
    import subprocess
    import time

    from cnnbench.gpusweep import JobPool
    from tests.helpers import tiny_study, write_yaml

    cfg = write_yaml(tmp_path / "s.yaml", tiny_study())
    started = _tracked_popen(monkeypatch)
    begin = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        JobPool(2, str(cfg), None, "cpu", 1, end=time.monotonic() + 0.5)
    assert time.monotonic() - begin < 10 and len(started) == 2 and all(p.poll() is not None for p in started)


def test_a_failing_sweep_job_is_reported(tmp_path):
    from cnnbench.gpusweep import JobPool

    with pytest.raises(CnnbenchError, match="failed before it started: .*(missing.yaml|no such)"):
        JobPool(1, str(tmp_path / "missing.yaml"), None, "cpu", 1)


def test_a_pool_keeps_the_jobs_that_started_when_a_later_one_fails_or_is_late(tmp_path, monkeypatch):
    """16 CUDA processes may not all fit where 8 do: the jobs that started are kept (their counts are
    measured; each measurement's lines carry its id) and the failure is named, not the whole sweep lost."""
    import sys
    import time

    from cnnbench.gpusweep import JobPool
    from tests.helpers import tiny_study, write_yaml

    class LaterFail(JobPool):
        def command(self, i, fd):
            if i == 0:
                return super().command(i, fd)
            if i == 1:
                return [sys.executable, "-c", "import sys; sys.exit('RuntimeError: CUDA out of memory (test)')"]
            return [sys.executable, "-c", "import time; time.sleep(60)"]  # never loads

    cfg = write_yaml(tmp_path / "s.yaml", tiny_study())
    started = _tracked_popen(monkeypatch)
    with LaterFail(3, str(cfg), None, "cpu", 1) as pool:
        assert pool.size == 1 and pool.failed_to_start == "only 1 of 3 jobs started; job 2: RuntimeError: CUDA out of memory (test)"
        first, second = pool.measure(1, 0.3), pool.measure(1, 0.3)
        assert first["jobs"] == 1 and first["aggregate_img_per_s"] > 0 and pool.sequence == 2 and second["jobs"] == 1
    assert all(p.poll() is not None for p in started)

    class Late(JobPool):
        def command(self, i, fd):
            return super().command(i, fd) if i == 0 else [sys.executable, "-c", "import time; time.sleep(60)"]

    with Late(2, str(cfg), None, "cpu", 1, end=time.monotonic() + 20, warm_end=time.monotonic() + 60) as pool:
        assert pool.size == 1 and pool.failed_to_start == "only 1 of 2 jobs started; job 2: not ready before the deadline"


def test_gpu_sweep_without_a_gpu_says_so_in_one_line(capsys, monkeypatch):
    """A trial: `cnnbench gpu-sweep` (cuda by default) on a CPU machine ended in a nested traceback."""
    from cnnbench import gpucheck
    from cnnbench.cli import main

    monkeypatch.setattr(gpucheck, "no_gpu_reason", lambda: "no driver (test)")  # also on a GPU machine

    assert main(["gpu-sweep"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU here" in err and "--device cpu" in err and "Traceback" not in err


def test_stacked_fold_models_train_as_one_vmapped_computation(tmp_path):
    """k models under vmap on the CPU: both ways measured, and BatchNorm refused with a reason."""
    from cnnbench.stacked import stacked_folds
    from tests.helpers import tiny_study, write_yaml

    cfg = write_yaml(tmp_path / "s.yaml", tiny_study())
    r = stacked_folds(cfg, k=3, steps=3, device="cpu", repeats=1)
    assert r["stacked_img_per_s"] > 0 and r["sequential_img_per_s"] > 0 and r["k"] == 3
    with pytest.raises(ValueError, match="BatchNorm"):
        stacked_folds(cfg, "batchnorm", k=2, steps=2, device="cpu", repeats=1)
    study = tiny_study()
    study["variants"]["adam"] = {"base": "baseline", "optimizer": "adam"}  # one SGD would not be its optimiser
    with pytest.raises(ValueError, match="one plain SGD over every parameter"):
        stacked_folds(write_yaml(tmp_path / "a.yaml", study), "adam", k=2, steps=2, device="cpu", repeats=1)


def test_a_job_sets_determinism_before_it_claims_a_gpu(monkeypatch):
    """cuBLAS reads CUBLAS_WORKSPACE_CONFIG once, at the process's first CUDA work, and claiming a slot makes
    its GPU the current device: so a job's start sets threads and determinism first, then claims."""
    from cnnbench import runtime

    calls = []
    monkeypatch.setattr(runtime, "set_determinism", lambda *a: calls.append(("set_determinism", a)))
    monkeypatch.setattr(runtime, "claim_device", lambda *a, **k: calls.append(("claim_device", a, k)) or ("dev", None))
    assert runtime.start_job("cpu", 3, 2, deterministic=True, exclusive=True) == ("dev", None)
    assert [c[0] for c in calls] == ["set_determinism", "claim_device"]
    assert calls[0][1][1:] == (3, True) and calls[1][2]["exclusive"] is True
