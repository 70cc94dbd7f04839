"""`cnnbench gpu-sweep`: aggregate training img/s with 1, 2, 4, 8 (and 16) jobs sharing one device.

A small CNN leaves a big GPU mostly idle, so several training jobs on one GPU may finish a study sooner
than one job at a time. This measures it the way the workflow would run it: N separate processes (as
Snakemake starts them), each training the variant with the project's loop (cnnbench.train.train_epoch)
at the study's numerics on the same device. The processes start once (JobPool) and each warms up (and
compiles) alone; for each count, N of them start timing together, train for the same number of seconds
and report the images they trained. Aggregate img/s is their sum; every count is measured twice, there and
back, for its spread; the best N is what `execution.jobs_per_gpu` should be on that GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
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


def worker(config: str, variant: str | None, device: str, threads: int, seed: int, fd: int) -> None:
    """One job, driven by JobPool: its lines go to the pipe `fd` (stdout may carry anything a library
    prints). Load, say "loaded"; on "warm", warm up, say "ready"; then for each "go SECONDS ID" train that
    long and report one JSON line carrying ID; stop at anything else or at the end of its input."""
    out = os.fdopen(fd, "w", buffering=1)

    def say(line: str) -> None:
        out.write(line + "\n")
        out.flush()

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

    say("loaded")
    if sys.stdin.readline().strip() != "warm":
        return
    chunk()  # warm-up, while no other job runs: allocator, cuDNN's choice, compilation
    say("ready")
    for line in sys.stdin:
        words = line.split()
        if len(words) != 3 or words[0] != "go":
            return
        seconds, done, start = float(words[1]), 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            done += chunk()
        elapsed = time.perf_counter() - start
        say(json.dumps({"id": int(words[2]), "images": done, "seconds": elapsed, "img_per_s": done / elapsed,
                        "precision": num.precision, "compile": num.as_dict()["compile"]}))


class JobPool:
    """The sweep's worker processes, started once and kept from one job count to the next: N separate
    processes as Snakemake starts them, but their start-up (importing torch, CUDA, the data; 14-28 s a
    count on the H200 when each count started its own) is paid once, so the sweep has time to measure
    every count twice. All load at once; then, with every one loaded, they warm up one at a time, so
    each picks its cuDNN kernels while nothing else runs (the workflow's jobs pick theirs while others
    train: where contention changes the choice, the sweep measures the kernels a job alone would pick).
    A worker that is not part of a count waits on its stdin: it keeps its CUDA context, model and data
    on the GPU (memory), but runs nothing. A worker after the first that fails or is late to start is
    left out, and the counts the others can run are still measured."""

    def __init__(self, size: int, config: str, variant: str | None, device: str, threads: int,
                 end: float | None = None, warm_end: float | None = None):
        """`end`: when every worker must have loaded (time.monotonic()); `warm_end` (default `end`): when
        the warm-ups must be done, so the workers that loaded in time still warm up past a late one."""
        self.cmd = [sys.executable, "-m", "cnnbench.gpusweep", "--config", str(config), "--device", device,
                    "--threads", str(threads)] + (["--variant", variant] if variant else [])
        self.procs: list[subprocess.Popen] = []
        self.lines: list[queue.Queue] = []
        # stdout and stderr to files, not pipes: a job's warnings could fill a pipe nobody reads
        self.errs = [tempfile.TemporaryFile(mode="w+") for _ in range(size)]
        self.failed_to_start: str | None = None
        self.sequence = 0
        try:
            for i in range(size):
                read, write = os.pipe()
                proc = subprocess.Popen(self.command(i, write), stdin=subprocess.PIPE, stdout=self.errs[i],
                                        stderr=self.errs[i], pass_fds=(write,), text=True,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
                os.close(write)
                lines: queue.Queue = queue.Queue()
                threading.Thread(target=_read_lines, args=(os.fdopen(read), lines), daemon=True).start()
                self.procs.append(proc)
                self.lines.append(lines)
            for stage in ("loaded", "ready"):  # all loaded, then one warm-up at a time
                for i in range(self.size):
                    try:
                        if stage == "ready":
                            self._send(i, "warm")
                        self._expect(i, stage, end if stage == "loaded" or warm_end is None else warm_end)
                    except (CnnbenchError, subprocess.TimeoutExpired) as e:
                        if i == 0:
                            if isinstance(e, subprocess.TimeoutExpired):
                                raise
                            raise CnnbenchError(f"a sweep job failed before it started: {e}") from None
                        why = "not ready before the deadline" if isinstance(e, subprocess.TimeoutExpired) else str(e)
                        self._keep(i, f"only {i} of {size} jobs started; job {i + 1}: {why}")
                        break
        except BaseException:
            self.close()
            raise

    def command(self, i: int, fd: int) -> list[str]:
        """Worker i's command line: the same job, its own seed, its lines to the pipe `fd`."""
        return [*self.cmd, "--seed", str(i), "--fd", str(fd)]

    @property
    def size(self) -> int:
        return len(self.procs)

    def measure(self, n: int, seconds: float, end: float | None = None) -> dict:
        """N of the workers train together for `seconds`: aggregate and per-job img/s. Each measurement has
        its own id, so no line of an earlier one can be taken for it."""
        self.sequence += 1
        for i in range(n):  # go, all at once
            self._send(i, f"go {seconds} {self.sequence}")
        results = []
        for i in range(n):
            while (r := json.loads(self._expect(i, "{", end)))["id"] != self.sequence:
                pass
            results.append(r)
        per_job = [r["img_per_s"] for r in results]
        return {"jobs": n, "aggregate_img_per_s": sum(per_job), "per_job_img_per_s": per_job,
                "precision": results[0]["precision"], "compile": results[0]["compile"]}

    def close(self) -> None:
        """Stop every worker at once (16 CUDA processes shut down in parallel, within gpu-check's margin)."""
        _stop(self.procs)
        for proc in self.procs:
            if proc.stdin:
                proc.stdin.close()
        for f in self.errs:
            f.close()

    def __enter__(self) -> JobPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _keep(self, n: int, why: str) -> None:
        """Keep the first n workers; stop the rest."""
        _stop(self.procs[n:])
        self.procs, self.lines, self.failed_to_start = self.procs[:n], self.lines[:n], why

    def _send(self, i: int, line: str) -> None:
        try:
            self.procs[i].stdin.write(line + "\n")
            self.procs[i].stdin.flush()
        except BrokenPipeError:
            self.procs[i].wait()
            raise CnnbenchError(self._tail(i)) from None

    def _expect(self, i: int, start: str, end: float | None) -> str:
        """Worker i's next line that starts with `start`; past `end` subprocess.TimeoutExpired, and a
        worker that ends first a CnnbenchError with its last error line."""
        while True:
            wait = None if end is None else max(0.0, end - time.monotonic())
            try:
                line = self.lines[i].get(timeout=wait)
            except queue.Empty:
                raise subprocess.TimeoutExpired(self.cmd, 0) from None
            if line is None:
                self.procs[i].wait()
                raise CnnbenchError(self._tail(i))
            if line.startswith(start):
                return line

    def _tail(self, i: int) -> str:  # the worker's own last line (its error), not its traceback
        self.errs[i].seek(0)
        lines = self.errs[i].read().strip().splitlines()
        return lines[-1][:500] if lines else "(nothing on its stderr)"  # the head names the error


def _stop(procs: list[subprocess.Popen]) -> None:
    """Kill them all, then wait for them all: their shut-downs overlap rather than queue."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        proc.wait()


def _read_lines(stream, lines: queue.Queue) -> None:
    with stream:
        for line in stream:
            lines.put(line.strip())
    lines.put(None)  # the worker ended


def measurement_order(counts, repeats: int = 2) -> list[int]:
    """Each count `repeats` times, there and back (1 2 4 8 16 16 8 4 2 1): a drift over the sweep (a GPU
    warming, clocks settling) then weighs on every count alike, and the repeats give each count a spread."""
    order: list[int] = []
    for r in range(repeats):
        order += list(counts) if r % 2 == 0 else list(reversed(counts))
    return order


START_SHARE = 0.6  # of the time to a deadline, what the pool's start may take: the rest is for measuring
EACH_S = 1.5  # per measurement beyond its seconds: the chunk under way at the bell, the report line
MIN_SECONDS = 3.0  # shorter measurements are mostly noise: fewer repeats instead
NO_DEADLINE_START_S = 600  # without a deadline (gpu-sweep by hand), a hung start still ends


def fit_seconds(left: float, measurements: int) -> float:
    """Seconds a measurement may train for so that `measurements` of them fit in `left` seconds (at most 10)."""
    return min(10.0, left / measurements - EACH_S)


def sweep(config: str | Path, variant: str | None = None, counts=None, device: str = "cuda",
          seconds: float | None = 10.0, threads: int = 1, log=None, deadline: float | None = None,
          repeats: int = 2) -> dict:
    """Aggregate img/s of 1, 2, 4, ... concurrent jobs, each count measured `repeats` times (there and
    back), after one unrecorded measurement that settles the GPU (on a fresh H200 the first count once ran
    at half the rate of later ones). With a `deadline` (time.monotonic()), what was measured before it
    is the result and the counts never measured are named (on an H200, 16 jobs ran past gpu-check's
    limit, and the sweep's whole result was lost): `seconds=None` then fits the measurements into the
    time left once the jobs have started (one pass instead of two where two would be under MIN_SECONDS
    each); a measurement is not started when 1.5x the longest one so far would pass the deadline, and one
    that runs past it, or loses a job, ends the sweep with what it had. Only jobs that cannot start, or
    a first measurement that cannot finish, are an error."""
    counts = tuple(counts or sweep_counts(threads=threads))
    started = time.monotonic()
    start_end = (started + NO_DEADLINE_START_S if deadline is None
                 else started + START_SHARE * (deadline - started))
    try:
        pool = JobPool(max(counts), str(config), variant, device, threads, end=start_end,
                       warm_end=deadline if deadline is not None else start_end)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"the sweep's {max(counts)} job(s) did not start in {start_end - started:.0f} s") from None
    rows, stopped = [], None
    with pool:
        start_s = time.monotonic() - started
        runnable = [c for c in counts if c <= pool.size]
        if not runnable:
            raise CnnbenchError(f"no job count of {', '.join(map(str, counts))} can run: {pool.failed_to_start}")
        if log:
            log(f"  {pool.size} job(s) started and warmed up in {start_s:.0f} s"
                + (f" ({pool.failed_to_start})" if pool.failed_to_start else ""))
        if seconds is None:
            left = (deadline - time.monotonic()) if deadline is not None else 10 * (2 * len(runnable) + 1)
            if fit_seconds(left, len(measurement_order(runnable, repeats)) + 1) < MIN_SECONDS:
                repeats = 1
            seconds = max(1.0, fit_seconds(left, len(measurement_order(runnable, repeats)) + 1))
        order = measurement_order(runnable, repeats)
        for k, n in enumerate([runnable[0], *order]):  # the first: settling, not recorded
            now = time.monotonic()
            if rows and deadline is not None and now + 1.5 * max(r["wall_s"] for r in rows) > deadline:
                stopped = "not started, too little time left"
                break
            end = deadline if deadline is not None else now + 10 * seconds + 120
            try:
                row = pool.measure(n, seconds, end=end)
            except (subprocess.TimeoutExpired, CnnbenchError) as e:
                if not rows:
                    if isinstance(e, CnnbenchError):
                        raise CnnbenchError(f"a sweep job failed: {e}") from None
                    raise RuntimeError(f"the sweep's first count ({n} job(s)) did not finish before its deadline") from None
                stopped = (f"{n} job(s) stopped at the deadline" if isinstance(e, subprocess.TimeoutExpired)
                           else f"a job failed while {n} ran: {e}")
                break
            if k == 0:
                if log:
                    log(f"  {n} job(s): {row['aggregate_img_per_s']:,.0f} img/s in all (settling, not recorded)")
                continue
            rows.append({**row, "wall_s": time.monotonic() - now})
            if log:
                log(f"  {n} job(s): {row['aggregate_img_per_s']:,.0f} img/s in all")
    measured = {row["jobs"] for row in rows}
    left_out = [c for c in dict.fromkeys(counts) if c not in measured]
    if log and len(rows) < len(order):
        log(f"  {len(rows)} of {len(order)} measurements made ({stopped or pool.failed_to_start})"
            + (f"; never measured: {', '.join(map(str, left_out))} job(s)" if left_out else ""))
    rates = mean_rates(rows)
    best = max(rates, key=rates.get)
    base_jobs, base = baseline_rate(rows)
    return {"config": str(config), "variant": variant, "device": device, "seconds": seconds, "repeats": repeats,
            "start_s": start_s, "rows": rows, "left_out": left_out, "stopped": stopped,
            "failed_to_start": pool.failed_to_start, "best_jobs_per_gpu": best, "speedup_base_jobs": base_jobs,
            "speedup_best": rates[best] / base}


def rates_by_count(rows: list[dict]) -> dict[int, list[float]]:
    """Each job count's aggregate img/s, one per time it was measured, the counts in ascending order."""
    by_count: dict[int, list[float]] = {}
    for row in sorted(rows, key=lambda row: row["jobs"]):
        by_count.setdefault(row["jobs"], []).append(row["aggregate_img_per_s"])
    return by_count


def mean_rates(rows: list[dict]) -> dict[int, float]:
    """Aggregate img/s per job count, the mean of its repeats: the best count and every speed-up compare
    means, so one lucky repeat does not pick the setting."""
    return {n: sum(r) / len(r) for n, r in rates_by_count(rows).items()}


def baseline_rate(rows: list[dict]) -> tuple[int, float]:
    """What the speed-ups are relative to: the fewest jobs measured (one job, unless --jobs left it out)."""
    rates = mean_rates(rows)
    return min(rates), rates[min(rates)]


def runner_up(rows: list[dict], best: int) -> str:
    """How the best count stands against the next best, descriptively (two repeats are no test): every
    repeat above every one of the runner-up's, or their ranges overlap."""
    rates, each = mean_rates(rows), rates_by_count(rows)
    others = [n for n in rates if n != best]
    if not others:
        return ""
    second = max(others, key=rates.get)
    if len(each[best]) < 2 or len(each[second]) < 2:
        return ""
    if min(each[best]) > max(each[second]):
        return f"; its slowest repeat faster than the fastest at {second} job(s): descriptive, not a test"
    return f"; its repeats overlap those at {second} job(s): these repeats do not separate the two"


def format_sweep(r: dict) -> str:
    base_jobs, base = baseline_rate(r["rows"])
    unit = "one job" if base_jobs == 1 else f"{base_jobs} jobs"
    lines = [f"concurrent training jobs on one {r['device']} device ({r['seconds']:g} s a measurement, "
             f"precision {r['rows'][0]['precision']}, compile {r['rows'][0]['compile']}):"]
    for n, each in rates_by_count(r["rows"]).items():
        mean = sum(each) / len(each)
        spread = f"; {len(each)} repeats: {min(each):,.0f}-{max(each):,.0f}" if len(each) > 1 else ""
        lines.append(f"  {n} job(s): {mean:10,.0f} img/s in all ({mean / base:.2f}x {unit}{spread})")
    if r.get("left_out"):
        why = "; ".join(x for x in (r.get("failed_to_start"), r.get("stopped")) if x)
        lines.append(f"  not measured: {', '.join(map(str, r['left_out']))} job(s) ({why})")
    against = runner_up(r["rows"], r["best_jobs_per_gpu"])
    if r["device"] == "cuda":
        lines.append(f"  best: execution.jobs_per_gpu: {r['best_jobs_per_gpu']} ({r['speedup_best']:.2f}x {unit}"
                     f"{against})")
    else:  # jobs_per_gpu is a GPU setting: a CPU sweep only shows the mechanics
        lines.append(f"  best: {r['best_jobs_per_gpu']} job(s) ({r['speedup_best']:.2f}x {unit}{against}); measured on "
                     f"the {r['device']}, so no execution.jobs_per_gpu advice (run it with --device cuda on the GPU)")
    return "\n".join(lines)


def _main() -> None:
    p = argparse.ArgumentParser(description="one job of the GPU concurrency sweep (started by cnnbench gpu-sweep)")
    p.add_argument("--config", required=True)
    p.add_argument("--variant")
    p.add_argument("--device", default="cuda")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fd", type=int, required=True, help="the pipe its lines go to")
    a = p.parse_args()
    worker(a.config, a.variant, a.device, a.threads, a.seed, a.fd)


if __name__ == "__main__":
    _main()
