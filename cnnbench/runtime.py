"""Where a job computes: the device (a GPU slot of its own on CUDA), torch's threads, and the kernels'
determinism, set once at a job's start, before any CUDA work (cuBLAS reads its workspace setting once)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from cnnbench.numerics import set_deterministic


def resolve_device(setting: str = "auto") -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        from cnnbench.errors import ConfigError

        raise ConfigError("execution.device (--device on the command line): 'cuda' but torch sees no CUDA device; "
                          "use auto or cpu")
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(setting)


def claim_device(setting: str = "auto", jobs_per_gpu: int = 1, *, exclusive: bool = False,
                 log: Callable[[str], None] | None = None) -> tuple[torch.device, dict | None]:
    """The device this job computes on. On CUDA: a slot of the least busy visible GPU (or, `exclusive`,
    a GPU of its own) that the process holds until it exits (cnnbench.gpuslots), and that GPU made the
    current device; returns the device and what was claimed, for the record."""
    device = resolve_device(setting)
    if device.type != "cuda":
        return device, None
    from cnnbench import gpuslots

    slot = gpuslots.acquire(gpuslots.visible_gpu_ids(), jobs_per_gpu, exclusive=exclusive, log=log)
    _HELD.append(slot)  # held for the life of the process
    device = torch.device("cuda", slot.index)
    torch.cuda.set_device(device)
    return device, slot.as_dict(jobs_per_gpu)


_HELD: list = []


def set_determinism(device: torch.device, threads: int, deterministic: bool = False) -> None:
    """Same config + same CPU + same threads => same numbers: the CPU kernels used here (oneDNN
    convolutions, GEMM, pooling) are deterministic at a fixed thread count, and every random draw comes
    from the run's seeded generators (tests/test_train.py checks bit-identical reruns). Not calling
    `torch.use_deterministic_algorithms` unless asked (`execution.deterministic`): it imports
    torch._dynamo, 1.6 s per job here. CUDA runs otherwise favour speed (cuDNN autotune), and their
    numbers are not promised to be bit-identical."""
    torch.set_num_threads(threads)
    if deterministic:
        set_deterministic(device)
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def start_job(setting: str, threads: int, jobs_per_gpu: int = 1, *, deterministic: bool = False,
              exclusive: bool = False, log: Callable[[str], None] | None = None) -> tuple[torch.device, dict | None]:
    """What every workflow job (train, pretrain, time) does first: threads and determinism, then its device
    and GPU slot (`exclusive`: a whole GPU, for timing alone). Returns the device and the slot's record."""
    set_determinism(resolve_device(setting), threads, deterministic)
    return claim_device(setting, jobs_per_gpu, exclusive=exclusive, log=log)
