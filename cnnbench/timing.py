"""Speed and memory of a variant measured alone: training img/s, s/epoch, latency, training memory.

Training jobs run side by side (`--cores all` runs two at once on two cores), so the speed a training
job sees depends on which variant happened to run beside it. The numbers the report compares come from
this measurement instead: the workflow's one `time` job times every variant of the study, back to back,
and holds every core of the machine (and a whole GPU), so no other job of the workflow runs meanwhile.
Warm-up steps are not timed; each figure is the median over repeated blocks, with the IQR as its spread.

Training memory is measured here too, after the speed: one epoch of a real run (same data copies,
optimiser, evaluation); on the CPU in a fresh process of the variant's own, with a steady heap (`measure.steady_heap`). In a training
job an earlier run's freed memory hides part of the next run's, and steadying the heap there would cost
every training job ~25% of its speed (width64: 4.4 vs 3.5 s/epoch).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from cnnbench.config import VariantSpec
from cnnbench.numtext import significant

REPEATS = 9  # timed blocks per figure
BLOCK_S = 0.25  # target length of one timed block of training steps
WARMUP_STEPS = 5


def time_study(specs: Sequence[VariantSpec], *, data_path: str | Path, splits_path: str | Path,
               device: str = "auto", threads: int = 1, jobs_per_gpu: int = 1, repeats: int = REPEATS,
               own_processes: bool | None = None, on_record: Callable[[dict], None] | None = None,
               log: Callable[[str], None] | None = None) -> list[dict]:
    """Time every variant of a study in one job, back to back: one machine (one node on a cluster) and one
    stretch of time, so their speeds compare; each record is passed to `on_record` as soon as it is made.

    On the CPU each variant is measured in a fresh process of its own (`own_processes`), as one job per
    variant did: memory is the process's RSS there, and measured one variant after another in one process
    the default study's variants read 1-21 MB off their fresh-process figures (2-vCPU Xeon). On CUDA
    the allocator measures memory exactly, so one process times them all and torch, CUDA and the data
    start once instead of once per variant (on an H200 a timing job took 12.6 s, most of it start-up)."""
    from cnnbench.runtime import resolve_device

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    if own_processes is None:  # (no torch import in this process for a plain CPU study)
        own_processes = device == "cpu" or resolve_device(device).type != "cuda"
    where = dict(data_path=data_path, splits_path=splits_path, device=device, threads=threads,
                 jobs_per_gpu=jobs_per_gpu, repeats=repeats)
    measured = _each_in_own_process(specs, where) if own_processes else _in_this_process(specs, **where)
    started, records = time.time(), []
    for record in measured:
        records.append(record)
        if on_record:
            on_record(record)
        done, now = len(records), time.time()
        # on the CPU every variant pays its process's start-up: the pace from the job's start; a shared
        # (CUDA) process pays it once: the pace from its first measurement
        pace = (now - (started if own_processes else records[0]["window"][0])) / done
        log(f"[{done}/{len(specs)}] {record['variant']} measured alone: {record['train_img_per_s']:,.0f} img/s "
            f"(IQR {record['train_img_per_s_iqr']:,.0f}), {significant(record['epoch_time_s'])} s/epoch, latency b=1 "
            f"{significant(record['latency_b1_ms'])} ms, training memory {record['train_mb']:.0f} MB; {now - started:.0f} s "
            f"so far, about {pace * (len(specs) - done):.0f} s left")
    return records


def time_variant(spec: VariantSpec, **where) -> dict:
    """One variant timed in this process (the unit `time_study` runs in a fresh process on the CPU)."""
    return next(_in_this_process([spec], **where))


def _each_in_own_process(specs: Sequence[VariantSpec], where: dict) -> Iterator[dict]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from cnnbench.errors import CnnbenchError

    for spec in specs:  # a new pool each time: one fresh process per variant
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            try:
                yield pool.submit(time_variant, spec, **where).result()
            except BrokenProcessPool:
                raise CnnbenchError(f"timing {spec.name!r}: its measuring process died (killed, or out of memory: "
                                    "see the job's log; on Slurm give the job more with --set-resources "
                                    "time:mem_mb=N)") from None


def _in_this_process(specs: Sequence[VariantSpec], *, data_path: str | Path, splits_path: str | Path,
                     device: str = "auto", threads: int = 1, jobs_per_gpu: int = 1,
                     repeats: int = REPEATS) -> Iterator[dict]:
    """Training throughput (the real step: augmentation, forward, backward, optimiser, at the run's
    precision) on fold 0's training images, eval-mode latency at batch 1 and at the training batch size,
    then training memory, for each variant in turn. On CUDA the process takes every slot of one GPU
    (cnnbench.gpuslots). Execution settings (determinism among them) are study-wide: the first spec's hold."""
    from cnnbench.data import load_cache, load_fold
    from cnnbench.env import environment
    from cnnbench.runtime import start_job
    from cnnbench.train import labels_per_class

    started = process_started()
    set_up = {"start_up": time.time() - started}  # interpreter and imports, before this call
    mark = time.perf_counter()

    def lap() -> float:
        nonlocal mark
        seconds, mark = time.perf_counter() - mark, time.perf_counter()
        return seconds

    dev, gpu_slot = start_job(device, threads, jobs_per_gpu,
                              deterministic=specs[0].numerics.get("deterministic", False),
                              exclusive=True, log=lambda m: print(m, file=sys.stderr))
    set_up["device"] = lap()
    images = load_cache(data_path)
    train_idx, val_idx = load_fold(splits_path, 0, images.y)
    set_up["data"] = lap()
    env = {**environment(dev), **({"gpu_slot": gpu_slot} if gpu_slot else {})}
    for spec in specs:
        if spec.numerics.get("compile") and len(specs) > 1:
            import torch._dynamo

            # each variant compiled afresh, as in a process of its own: variants share the network class's
            # forward code, and past torch's recompile limit (8) dynamo would quietly run the rest eager. (The
            # first one still pays the process's one-time compiler set-up: compile_time_s is not comparable.)
            torch._dynamo.reset()
        window_start = time.time()
        lap()
        # the images the runs train on (labels_per_class: a few per class), so the epoch time is theirs
        trained = labels_per_class(train_idx, images.y, spec.train.get("labels_per_class"))
        speed = training_speed(spec, images, trained, dev, repeats)  # also warms the process up
        phases = {"speed_and_latency": lap()}
        memory = training_memory(spec, images, train_idx, val_idx, dev)  # (fit draws the same subset itself)
        phases["memory"] = lap()
        yield {"study": spec.study, "variant": spec.name, "spec_hash": spec.spec_hash, **speed,
               "train_mb": memory["train_mb"], "memory_kind": memory["kind"],
               # where the job's time went: this variant's measurement, and the process's set-up, which
               # `set_up_shared_by` variants shared (one on the CPU, all of them on CUDA)
               "phases_s": {k: round(v, 3) for k, v in phases.items()},
               "set_up_s": {k: round(v, 3) for k, v in set_up.items()}, "set_up_shared_by": len(specs),
               "process": f"{os.getpid()}@{started:.2f}",  # which records share one process (and its set-up)
               "window": [window_start, time.time()],  # unix seconds: when the machine was held for this
               "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "env": env}


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

    if device.type != "cuda":  # RSS is measured here; on CUDA the allocator, which needs no help
        steady_heap()
    warm_up(spec, device)  # the heap's first allocations under the new thresholds (measured: +11% otherwise)
    one_epoch = replace(spec, train={**spec.train, "epochs": 1})
    # a transfer variant's memory does not depend on its weights' values: its own initial ones stand in
    stand_in = init_model(spec, 0, device).state_dict() if spec.train.get("pretrained") else None
    return fit(one_epoch, images, train_idx, val_idx, seed=run_seed(0, 0), device=device, pretrained=stand_in).memory
