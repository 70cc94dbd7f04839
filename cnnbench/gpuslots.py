"""Which GPU a job runs on, when several jobs share a machine's GPUs.

Snakemake counts resources but assigns no GPU ids on a local machine, so every job would otherwise land
on cuda:0. Each GPU instead has `jobs_per_gpu` slots, one lock file each (`flock`, so a slot is freed
the moment its process exits, even on kill -9). A training job takes one free slot on the GPU where the
fewest slots are taken; the timing job takes every slot of one GPU, so it measures with the GPU to itself.
The workflow's `gpu_slots` resource (GPUs x jobs_per_gpu) keeps Snakemake from starting more jobs than
there are slots; the locks decide where each one goes.

Lock files are named after the GPU's UUID, not its index: on a cluster node each job sees its own GPUs
as cuda:0 (CUDA_VISIBLE_DEVICES), and two jobs' cuda:0 are different cards.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

POLL_S = 0.5


def lock_dir() -> Path:
    """Shared by every user of the machine (sticky, world-writable, like /tmp itself)."""
    path = Path(os.environ.get("CNNBENCH_GPU_LOCK_DIR") or Path(tempfile.gettempdir()) / "cnnbench-gpu-slots")
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        try:
            path.chmod(0o1777)
        except PermissionError:
            pass
    return path


def visible_gpu_ids() -> list[str]:
    """A stable id per visible CUDA device, in torch's index order: its UUID where torch reports one."""
    import torch

    ids = []
    for i in range(torch.cuda.device_count()):
        uuid = getattr(torch.cuda.get_device_properties(i), "uuid", None)
        ids.append(f"GPU-{uuid}" if uuid is not None else f"{os.uname().nodename}-cuda{i}")
    return ids


@dataclass
class Slot:
    """Slots held on GPU `index` (of the visible ones) until `release()` or process exit."""

    index: int
    gpu_id: str
    slots: list[int]
    _files: list = field(default_factory=list, repr=False)

    def release(self) -> None:
        for f in self._files:
            f.close()  # closing the descriptor drops its flock
        self._files.clear()

    def as_dict(self, jobs_per_gpu: int) -> dict:
        return {"gpu_index": self.index, "gpu_id": self.gpu_id, "slots": self.slots, "jobs_per_gpu": jobs_per_gpu}


def _try_lock(path: Path):
    f = open(path, "a+")
    try:
        os.chmod(path, 0o666)
    except PermissionError:
        pass
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return f
    except BlockingIOError:
        f.close()
        return None


def _taken(directory: Path, gpu_id: str, per_gpu: int) -> int:
    """How many of a GPU's slots are held now (a snapshot, used only to choose; the lock decides)."""
    n = 0
    for k in range(per_gpu):
        f = _try_lock(directory / f"{gpu_id}.{k}")
        if f is None:
            n += 1
        else:
            f.close()
    return n


def try_acquire(gpu_ids: list[str], per_gpu: int, *, exclusive: bool = False,
                directory: Path | None = None) -> Slot | None:
    """One attempt: a free slot on the least busy GPU (or, `exclusive`, every slot of a GPU nobody uses)."""
    directory = directory or lock_dir()
    order = sorted(range(len(gpu_ids)), key=lambda i: (_taken(directory, gpu_ids[i], per_gpu), i))
    for i in order:
        held, files = [], []
        for k in range(per_gpu):
            f = _try_lock(directory / f"{gpu_ids[i]}.{k}")
            if f is not None:
                held.append(k)
                files.append(f)
                if not exclusive:
                    break
            elif exclusive:
                break
        if held and (not exclusive or len(held) == per_gpu):
            return Slot(i, gpu_ids[i], held, files)
        for f in files:
            f.close()
    return None


def acquire(gpu_ids: list[str], per_gpu: int, *, exclusive: bool = False, directory: Path | None = None,
            timeout_s: float | None = None, log: Callable[[str], None] | None = None) -> Slot:
    """Wait for a slot (see try_acquire); says once that it is waiting, and gives up after `timeout_s`."""
    if not gpu_ids:
        raise RuntimeError("no CUDA device is visible to this job")
    start, said = time.monotonic(), False
    while True:
        slot = try_acquire(gpu_ids, per_gpu, exclusive=exclusive, directory=directory)
        if slot is not None:
            return slot
        if log and not said:
            log(f"waiting for {'a whole GPU' if exclusive else 'a GPU slot'}: all {len(gpu_ids)} GPU(s) x "
                f"{per_gpu} slot(s) are taken by other cnnbench jobs (locks in {directory or lock_dir()})")
            said = True
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"no {'whole GPU' if exclusive else 'GPU slot'} became free in {timeout_s:.0f} s")
        time.sleep(POLL_S)
