"""Options for the kernel benchmarks: `--bench-size small|full` (or CNNBENCH_BENCH_SIZE)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_configure(config):
    """`--benchmark-json results/bench/mine.json` (the README's command) on a fresh clone: pytest-benchmark
    writes the file only after every benchmark has run, and crashed then on the missing folder, losing
    the results. The folder is made first. (Releases that open the file while parsing the option, as the
    H200 image's did, hand over a file object; with those the folder must exist before pytest starts.)"""
    path = config.getoption("benchmark_json", default=None)
    if isinstance(path, (str, os.PathLike)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def pytest_addoption(parser):
    parser.addoption("--bench-size", choices=["small", "full"], default=os.environ.get("CNNBENCH_BENCH_SIZE", "small"),
                     help="small: seconds per benchmark on 2 CPU cores (CI); full: realistic sizes for real hardware")


    parser.addoption("--bench-threads", type=int, default=None,
                     help="torch threads (default: 1 for small, all cores for full); one thread keeps small "
                          "kernels clear of thread-scheduling noise on shared machines")


@pytest.fixture(scope="session")
def bench_size(request) -> str:
    return request.config.getoption("--bench-size")


@pytest.fixture(scope="session", autouse=True)
def steady_allocator():
    """Keep freed memory in the process (glibc's mallopt, as jemalloc/tcmalloc do for PyTorch on CPUs).
    With glibc's defaults, activations of ~1 MiB are mmap'ed or trimmed back to the OS between iterations
    depending on allocation order, so identical work measured 1.6 ms in one run and 3.6 ms in the next
    (residual block forward, measured here); with this the medians repeat within a few percent."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or "libc" not in name:
        yield None
        return
    libc = ctypes.CDLL(name)
    m_trim_threshold, m_mmap_threshold = -1, -3
    for limit in (1 << 30, 32 << 20):  # older glibc caps the mmap threshold at 32 MiB
        if libc.mallopt(m_mmap_threshold, limit) == 1:
            break
    libc.mallopt(m_trim_threshold, 1 << 30)
    yield limit


@pytest.fixture(scope="session", autouse=True)
def bench_threads(request, bench_size):
    """On a 2-vCPU VM two OpenMP threads made the same kernel 2.5x slower in some runs (measured here);
    at one thread the medians repeat."""
    import torch

    threads = request.config.getoption("--bench-threads") or (1 if bench_size == "small" else None)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    yield torch.get_num_threads()
    torch.set_num_threads(before)
