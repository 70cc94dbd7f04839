"""Speed and memory of a variant measured alone: training img/s, s/epoch, latency, training memory.

Training jobs run side by side (`--cores all` runs two at once on two cores), so the speed a training
job sees depends on which variant happened to run beside it. The numbers the report compares come from
this measurement instead: the workflow's `time` rule holds every core of the machine (and the GPU
slot), so no other job of the workflow runs meanwhile. Warm-up steps are not timed; each figure is the
median over repeated blocks, with the IQR as its spread.

Training memory is measured here too, after the speed: one epoch of a real run (same data copies,
optimiser, evaluation) in this fresh process, with a steady heap (`measure.steady_heap`). In a training
job an earlier run's freed memory hides part of the next run's, and steadying the heap there would cost
every training job ~25% of its speed (width64: 4.4 vs 3.5 s/epoch).
"""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from cnnbench.config import VariantSpec

REPEATS = 9  # timed blocks per figure
BLOCK_S = 0.25  # target length of one timed block of training steps
WARMUP_STEPS = 5


def time_variant(spec: VariantSpec, *, data_path: str | Path, splits_path: str | Path, device: str = "auto",
                 threads: int = 1, jobs_per_gpu: int = 1, repeats: int = REPEATS) -> dict:
    """Training throughput (the real step: augmentation, forward, backward, optimiser, at the run's
    precision) on fold 0's training images, eval-mode latency at batch 1 and at the training batch size,
    then training memory. On CUDA the job takes every slot of one GPU (cnnbench.gpuslots)."""
    from cnnbench.data import load_cache, load_fold
    from cnnbench.env import environment
    from cnnbench.runtime import start_job
    from cnnbench.train import labels_per_class

    phases = {"start_up": time.time() - process_started()}  # interpreter and imports, before this call
    mark = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal mark
        phases[name] = time.perf_counter() - mark
        mark = time.perf_counter()

    dev, gpu_slot = start_job(device, threads, jobs_per_gpu, deterministic=spec.numerics.get("deterministic", False),
                              exclusive=True, log=lambda m: print(m, file=sys.stderr))
    phase("device")
    images = load_cache(data_path)
    train_idx, val_idx = load_fold(splits_path, 0, images.y)
    phase("data")
    window_start = time.time()
    # the images the runs train on (labels_per_class: a few per class), so the epoch time is theirs
    trained = labels_per_class(train_idx, images.y, spec.train.get("labels_per_class"))
    speed = training_speed(spec, images, trained, dev, repeats)  # also warms the process up
    phase("speed_and_latency")
    memory = training_memory(spec, images, train_idx, val_idx, dev)  # (fit draws the same subset itself)
    phase("memory")
    return {"study": spec.study, "variant": spec.name, "spec_hash": spec.spec_hash, **speed,
            "train_mb": memory["train_mb"], "memory_kind": memory["kind"],
            # where the job's time went: on a GPU the measured part is a fraction of each timing job, and
            # timing jobs run one after another (each holds the GPU)
            "phases_s": {k: round(v, 3) for k, v in phases.items()},
            "window": [window_start, time.time()],  # unix seconds: when the machine was held for this
            "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "env": {**environment(dev), **({"gpu_slot": gpu_slot} if gpu_slot else {})}}


def process_started() -> float:
    """This process's start, unix seconds: from /proc (10 ms resolution; psutil's rounds the boot time to
    whole seconds, ~0.5 s off), else psutil, else now (a missing figure, not a failed measurement)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:
        return time.time()


def training_speed(spec: VariantSpec, images, train_idx: np.ndarray, dev, repeats: int) -> dict:
    import torch

    from cnnbench.images import Images
    from cnnbench.measure import Stopwatch, latency
    from cnnbench.numerics import Numerics
    from cnnbench.seeds import run_seed
    from cnnbench.train import init_model, make_optimizer, penalties, start_from, train_epoch

    seed = run_seed(0, 0)
    t = spec.train
    num = Numerics.for_run(spec.numerics, dev)
    model = init_model(spec, seed, dev)
    if t.get("freeze"):  # a frozen body computes no weight gradients: time what the runs do
        start_from(model, model.state_dict(), freeze=True)
    forward = num.maybe_compile(model)
    scaler = num.scaler()
    x_all = torch.from_numpy(images.x[train_idx]).to(dev)
    x = Images(x_all, *Images.stats(x_all), spec.train["augment"], torch.Generator(device=dev).manual_seed(seed))
    y = torch.from_numpy(images.y[train_idx]).to(dev)
    bs = t["batch_size"]
    steps_per_epoch = len(train_idx) // bs
    opt = make_optimizer(model, t)
    penalised, activity = penalties(model, t)
    gen = torch.Generator().manual_seed(seed)

    def block(steps: int) -> float:
        perm = torch.randperm(len(y), generator=gen)[: steps * bs].to(dev)
        with Stopwatch(dev) as watch:
            train_epoch(forward, opt, None, x, y, perm, bs, steps, t["label_smoothing"], t["l1"], penalised,
                        num=num, scaler=scaler, activity=activity)
        return watch.seconds

    warm_steps = min(WARMUP_STEPS, steps_per_epoch)
    compile_s = block(1) if num.compile else None  # tracing and code generation: recorded, never in speed
    warm = block(warm_steps)  # not counted: allocator, kernel selection, caches
    steps = int(np.clip(BLOCK_S / max(warm / warm_steps, 1e-6), 2, steps_per_epoch))
    img_per_s = steps * bs / np.array([block(steps) for _ in range(repeats)])
    lat = {f"batch_{b}": latency(forward, spec.input_shape, b, dev, autocast=num.autocast) for b in (1, bs)}
    q1, med, q3 = np.percentile(img_per_s, [25, 50, 75])
    epoch = steps_per_epoch * bs / img_per_s
    return {"train_img_per_s": float(med), "train_img_per_s_iqr": float(q3 - q1),
            "epoch_time_s": float(np.median(epoch)),
            "epoch_time_s_iqr": float(np.subtract(*np.percentile(epoch, [75, 25]))),
            "steps_per_block": steps, "blocks": repeats, "batch_size": bs,
            "latency_b1_ms": lat["batch_1"]["median_ms"], "latency_b1_iqr_ms": lat["batch_1"]["iqr_ms"],
            "latency_batch": bs, "latency_bN_ms": lat[f"batch_{bs}"]["median_ms"],
            "latency_bN_iqr_ms": lat[f"batch_{bs}"]["iqr_ms"],
            "timer": "cuda_events" if dev.type == "cuda" else "perf_counter",
            "numerics": {**num.as_dict(), "compile_time_s": compile_s}}


def training_memory(spec: VariantSpec, images, train_idx: np.ndarray, val_idx: np.ndarray, device) -> dict:
    """What one epoch of a run adds to the process's memory at its peak (see measure.PeakMemory); the
    process must have warmed up first (its one-time set-up is not the variant's)."""
    from dataclasses import replace

    from cnnbench.measure import steady_heap
    from cnnbench.seeds import run_seed
    from cnnbench.train import fit, init_model, warm_up

    steady_heap()
    warm_up(spec, device)  # the heap's first allocations under the new thresholds (measured: +11% otherwise)
    one_epoch = replace(spec, train={**spec.train, "epochs": 1})
    # a transfer variant's memory does not depend on its weights' values: its own initial ones stand in
    stand_in = init_model(spec, 0, device).state_dict() if spec.train.get("pretrained") else None
    return fit(one_epoch, images, train_idx, val_idx, seed=run_seed(0, 0), device=device, pretrained=stand_in).memory
