"""`cnnbench gpu-sweep`: aggregate training img/s with 1, 2, 4, 8 (and 16) jobs sharing one device.

A small CNN leaves a big GPU mostly idle, so several training jobs on one GPU may finish a study sooner
than one job at a time. This measures it the way the workflow would run it: N separate processes (as
Snakemake starts them), each training the variant with the project's loop (cnnbench.train.train_epoch)
at the study's numerics on the same device. Each process warms up (and compiles) first; all start
timing together on a signal, train for the same number of seconds, and report the images they trained.
Aggregate img/s is their sum; the best N is what `execution.jobs_per_gpu` should be on that GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cnnbench.errors import CnnbenchError

COUNTS = (1, 2, 4, 8)
CHUNK_STEPS = 20  # optimiser steps between clock checks (train_epoch synchronises at its end)


def sweep_counts(cpus: int | None = None, threads: int = 1) -> tuple[int, ...]:
    """1, 2, 4, 8 jobs, and 16 where the node has the cores for it: each job's Python loop needs a core of
    its own (`threads` of them with more torch threads). On one H200 with 16 cores, 16 jobs of the
    default baseline gave 1.07-1.12x the img/s of 8 in every comparison of two runs (README)."""
    cpus = cpus or len(os.sched_getaffinity(0))  # the cores this process may use (Slurm, cgroups)
    return (*COUNTS, 16) if cpus >= 16 * threads else COUNTS


def worker(config: str, variant: str | None, device: str, seconds: float, threads: int, seed: int) -> dict:
    """One job: warm up, say ready, wait for the go line on stdin, train for `seconds`, report."""
    import numpy as np
    import torch

    from cnnbench.config import load_study
    from cnnbench.data import load_source
    from cnnbench.images import Images
    from cnnbench.numerics import Numerics
    from cnnbench.runtime import resolve_device, set_determinism
    from cnnbench.train import init_model, make_optimizer, train_epoch

    study = load_study(config)
    spec = study.variants[variant or study.baseline]
    dev = resolve_device(device)
    set_determinism(dev, threads)  # as a training job: cuDNN autotuning on CUDA
    num = Numerics.for_run(spec.numerics, dev)
    images = load_source(study.data)  # root and path too
    x = torch.from_numpy(np.ascontiguousarray(images.x)).to(dev)
    y = torch.from_numpy(images.y).to(dev)
    data = Images(x, *Images.stats(x))
    model = init_model(spec, seed, dev)
    forward = num.maybe_compile(model)
    opt, scaler, bs = make_optimizer(model, spec.train), num.scaler(), spec.train["batch_size"]
    gen = torch.Generator().manual_seed(seed)

    def chunk() -> int:
        perm = torch.randperm(len(y), generator=gen)[: CHUNK_STEPS * bs].to(dev)
        steps = len(perm) // bs
        train_epoch(forward, opt, None, data, y, perm, bs, steps, num=num, scaler=scaler)
        return steps * bs

    chunk()  # warm-up: allocator, kernel selection, compilation
    print("ready", flush=True)
    sys.stdin.readline()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        done += chunk()
    elapsed = time.perf_counter() - start
    return {"images": done, "seconds": elapsed, "img_per_s": done / elapsed, "precision": num.precision,
            "compile": num.as_dict()["compile"]}


def run_concurrent(n: int, config: str, variant: str | None, device: str, seconds: float, threads: int,
                   timeout: float | None = None) -> dict:
    """N worker processes started together; aggregate and per-job img/s. Past `timeout` seconds (start-up
    included) the workers are stopped and subprocess.TimeoutExpired is raised."""
    end = None if timeout is None else time.monotonic() + timeout

    def left(default: float) -> float:
        return default if end is None else max(0.1, end - time.monotonic())

    cmd = [sys.executable, "-m", "cnnbench.gpusweep", "--config", str(config), "--device", device,
           "--seconds", str(seconds), "--threads", str(threads)] + (["--variant", variant] if variant else [])
    # stderr to files, not pipes: a job's warnings (compile's, say) could fill a pipe nobody reads yet
    errs = [tempfile.TemporaryFile(mode="w+") for _ in range(n)]
    procs = [subprocess.Popen([*cmd, "--seed", str(i)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=errs[i], text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
             for i in range(n)]

    def tail(i: int) -> str:  # the worker's own last line (its error), not its traceback
        errs[i].seek(0)
        lines = errs[i].read().strip().splitlines()
        return lines[-1][:500] if lines else "(nothing on its stderr)"  # the head names the error

    try:
        for i, p in enumerate(procs):
            if end is not None and not select.select([p.stdout], [], [], left(0))[0]:
                raise subprocess.TimeoutExpired(cmd, timeout)
            line = p.stdout.readline().strip()
            if line != "ready":
                p.wait()
                raise CnnbenchError(f"a sweep job failed before it started: {tail(i)}")
        for p in procs:  # go, all at once
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for i, p in enumerate(procs):
            out, _ = p.communicate(timeout=left(seconds * 10 + 120))
            if p.returncode != 0:
                raise CnnbenchError(f"a sweep job failed: {tail(i)}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for f in errs:
            f.close()
    per_job = [r["img_per_s"] for r in results]
    return {"jobs": n, "aggregate_img_per_s": sum(per_job), "per_job_img_per_s": per_job,
            "precision": results[0]["precision"], "compile": results[0]["compile"]}


def sweep(config: str | Path, variant: str | None = None, counts=None, device: str = "cuda",
          seconds: float = 15.0, threads: int = 1, log=None, deadline: float | None = None) -> dict:
    """Aggregate img/s of 1, 2, 4, ... concurrent jobs. With a `deadline` (time.monotonic()), the counts
    measured before it are the result and the ones left out are named (on an H200, 16 jobs ran past
    gpu-check's limit, and the sweep's whole result was lost): a count is not started when 1.5x the
    previous count's wall time would pass the deadline, and one that runs past it is stopped. Only a
    first count that cannot finish in time is an error."""
    counts, rows, left_out = counts or sweep_counts(threads=threads), [], []
    for n in counts:
        now = time.monotonic()
        if rows and deadline is not None and now + 1.5 * rows[-1]["wall_s"] > deadline:
            left_out = [c for c in counts if c >= n]
            if log:
                log(f"  {', '.join(map(str, left_out))} job(s): not started, too little time left")
            break
        try:
            row = run_concurrent(n, str(config), variant, device, seconds, threads,
                                 timeout=None if deadline is None else deadline - now)
        except subprocess.TimeoutExpired:
            if not rows:
                raise RuntimeError(f"the sweep's first count ({n} job(s)) did not finish before its deadline") from None
            left_out = [c for c in counts if c >= n]
            if log:
                log(f"  {n} job(s): stopped at the deadline; left out: {', '.join(map(str, left_out))}")
            break
        rows.append({**row, "wall_s": time.monotonic() - now})
        if log:
            log(f"  {n} job(s): {rows[-1]['aggregate_img_per_s']:,.0f} img/s in all")
    rates = mean_rates(rows)
    best = max(rates, key=rates.get)
    base_jobs, base = baseline_rate(rows)
    return {"config": str(config), "variant": variant, "device": device, "seconds": seconds, "rows": rows,
            "left_out": left_out, "best_jobs_per_gpu": best, "speedup_base_jobs": base_jobs,
            "speedup_best": rates[best] / base}


def mean_rates(rows: list[dict]) -> dict[int, float]:
    """Aggregate img/s per job count, the mean where a count was measured more than once (`--jobs 16 8 16
    8`): the best count and every speed-up compare means, so one lucky repeat does not pick the setting."""
    by_count: dict[int, list[float]] = {}
    for row in rows:
        by_count.setdefault(row["jobs"], []).append(row["aggregate_img_per_s"])
    return {n: sum(r) / len(r) for n, r in by_count.items()}


def baseline_rate(rows: list[dict]) -> tuple[int, float]:
    """What the speed-ups are relative to: the fewest jobs measured (one job, unless --jobs left it out)."""
    rates = mean_rates(rows)
    return min(rates), rates[min(rates)]


def format_sweep(r: dict) -> str:
    base_jobs, base = baseline_rate(r["rows"])
    unit = "one job" if base_jobs == 1 else f"{base_jobs} jobs"
    lines = [f"concurrent training jobs on one {r['device']} device ({r['seconds']:g} s each, "
             f"precision {r['rows'][0]['precision']}, compile {r['rows'][0]['compile']}):"]
    for row in r["rows"]:
        lines.append(f"  {row['jobs']} job(s): {row['aggregate_img_per_s']:10,.0f} img/s in all "
                     f"({row['aggregate_img_per_s'] / base:.2f}x {unit})")
    if r["device"] == "cuda":
        lines.append(f"  best: execution.jobs_per_gpu: {r['best_jobs_per_gpu']} ({r['speedup_best']:.2f}x {unit})")
    else:  # jobs_per_gpu is a GPU setting: a CPU sweep only shows the mechanics
        lines.append(f"  best: {r['best_jobs_per_gpu']} jobs ({r['speedup_best']:.2f}x {unit}); measured on the "
                     f"{r['device']}, so no execution.jobs_per_gpu advice (run it with --device cuda on the GPU)")
    return "\n".join(lines)


def stacked_folds(config: str | Path, variant: str | None = None, k: int = 5, steps: int = 100,
                  device: str = "cuda", repeats: int = 3, log=None) -> dict:
    """The other way to fill a GPU: the k fold models of one variant trained as one computation
    (torch.func.stack_module_state + vmap over parameters, and each model's own batch), against the same
    k models trained one after another. img/s counts every model's images. SGD, momentum and weight decay
    act elementwise, so one optimiser over the stacked parameters is k independent optimisers. Networks
    with BatchNorm are refused (its running statistics cannot be updated under vmap)."""
    import copy
    import statistics

    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, stack_module_state

    from cnnbench.config import load_study
    from cnnbench.data import load_source
    from cnnbench.images import Images
    from cnnbench.numerics import Numerics
    from cnnbench.runtime import resolve_device, set_determinism, sync
    from cnnbench.train import init_model, make_optimizer, train_epoch

    study = load_study(config)
    spec = study.variants[variant or study.baseline]
    dev = resolve_device(device)
    set_determinism(dev, torch.get_num_threads())  # cuDNN autotuning on CUDA, as in training jobs
    models = [init_model(spec, seed, dev) for seed in range(k)]
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in models[0].modules()):
        raise ValueError(f"variant {spec.name!r} has BatchNorm, which vmap cannot train with running statistics")
    num = Numerics.for_run(spec.numerics, dev)
    images = load_source(study.data)  # root and path too
    x = torch.from_numpy(np.ascontiguousarray(images.x)).to(dev)
    y = torch.from_numpy(images.y).to(dev)
    data = Images(x, *Images.stats(x))
    bs = spec.train["batch_size"]
    gen = torch.Generator().manual_seed(0)

    params, buffers = stack_module_state(models)
    params = {n: p.detach().requires_grad_() for n, p in params.items()}
    skeleton = copy.deepcopy(models[0]).to("meta")
    opt = torch.optim.SGD(params.values(), lr=spec.train["lr"], momentum=spec.train["momentum"],
                          weight_decay=spec.train["weight_decay"])

    def one(p, b, xb):
        return functional_call(skeleton, (p, b), (xb,))

    def stacked_steps(n: int) -> float:
        start = None
        for i in range(n + 2):
            if i == 2:
                sync(dev)
                start = time.perf_counter()
            idx = torch.randint(len(y), (k, bs), generator=gen).to(dev)
            xb, yb = data[idx.flatten()].reshape(k, bs, *spec.input_shape), y[idx]
            with num.autocast():
                logits = torch.vmap(one, randomness="different")(params, buffers, xb)
            loss = F.cross_entropy(logits.float().flatten(0, 1), yb.flatten(), reduction="sum") / bs
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync(dev)
        return n * bs * k / (time.perf_counter() - start)

    def sequential_steps(n: int) -> float:
        total = 0.0
        for model in models:
            opt1 = make_optimizer(model, spec.train)
            perm = torch.randint(len(y), ((n + 2) * bs,), generator=gen).to(dev)
            _, _, warm_at = train_epoch(model, opt1, None, data, y, perm, bs, n + 2, warmup_steps=2, num=num,
                                        scaler=num.scaler())
            total += time.perf_counter() - warm_at
        return n * bs * k / total

    stacked, sequential = [], []
    for i in range(repeats):
        sequential.append(sequential_steps(steps))
        stacked.append(stacked_steps(steps))
        if log:
            log(f"  repeat {i + 1}/{repeats}: {k} models one after another {sequential[-1]:,.0f} img/s, "
                f"stacked {stacked[-1]:,.0f} img/s")
    s_med, q_med = statistics.median(stacked), statistics.median(sequential)
    return {"variant": spec.name, "k": k, "steps": steps, "device": str(dev), "stacked_img_per_s": s_med,
            "sequential_img_per_s": q_med, "ratio": s_med / q_med, "stacked_all": stacked, "sequential_all": sequential}


def _main() -> None:
    p = argparse.ArgumentParser(description="one job of the GPU concurrency sweep (started by cnnbench gpu-sweep)")
    p.add_argument("--config", required=True)
    p.add_argument("--variant")
    p.add_argument("--device", default="cuda")
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(json.dumps(worker(a.config, a.variant, a.device, a.seconds, a.threads, a.seed)), flush=True)


if __name__ == "__main__":
    _main()
