"""Provenance: where and with what a number was measured (versions, device, CPU, threads, git)."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import cnnbench

if TYPE_CHECKING:
    import torch


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def check_torchvision() -> None:
    """torchvision's compiled ops must come from the same torch build: a mismatched pair (e.g. a CPU torch
    wheel beside a CUDA torchvision from PyPI) trains fine and fails only when the report imports
    torchvision. The data step checks it first, so the study stops in seconds, not after training."""
    from cnnbench.errors import CnnbenchError

    try:
        import torchvision  # noqa: F401 - registering its ops is what fails
    except ModuleNotFoundError as e:  # torchvision itself, or one of its dependencies (PIL)
        raise CnnbenchError(f"torchvision cannot be imported: {e}; reinstall cnnbench (pip install -e .), which "
                            "installs it") from None
    except Exception as e:  # RuntimeError: operator torchvision::nms does not exist
        first = (str(e).splitlines() or [""])[0][:160]
        raise CnnbenchError(
            f"torchvision {_version('torchvision')} does not load with torch {_version('torch')} "
            f"({type(e).__name__}: {first}); they are from different builds: install a matching pair from one "
            "index, e.g. pip install --force-reinstall torch torchvision (or both with --index-url "
            "https://download.pytorch.org/whl/cpu)") from None


def nvidia_gpus_visible() -> bool:
    """Whether this host has NVIDIA device nodes, without importing torch (for the workflow's
    `gpu` resource at DAG-build time)."""
    import glob

    return bool(glob.glob("/dev/nvidia[0-9]*"))


def snakemake_takes_priority_functions(version: str | None = None) -> bool:
    """Whether this Snakemake evaluates a function given as a rule's priority (9.17 on). 9.15, which a
    wheelhouse resolved against a node with packaging 26 gets (later releases want packaging<26), stops
    with "Priority values have to be numeric": the workflow then leaves the order to Snakemake."""
    from packaging.version import Version

    return Version(version or _version("snakemake") or "0") >= Version("9.17")


def local_gpu_memory_bytes() -> float | None:
    """Memory of the smallest NVIDIA GPU on this host, from nvidia-smi (no torch at DAG-build time), or
    None where it cannot tell (no GPU, no nvidia-smi, a cluster's login node): the budget then assumes a
    16 GB card. All GPUs are listed, CUDA_VISIBLE_DEVICES or not: the smallest is the safe figure."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        mib = [float(line) for line in out.split() if line.strip()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return min(mib) * 2**20 if mib else None


def visible_gpu_count() -> int:
    """NVIDIA GPUs this process may use, without importing torch: the device nodes, narrowed by
    CUDA_VISIBLE_DEVICES when it is set (as Slurm and users do)."""
    import glob

    present = len(glob.glob("/dev/nvidia[0-9]*"))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return present
    return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_state(cwd: str | Path = ".") -> dict:
    """Commit and dirty flag of the checkout the run was started from (None outside git)."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": None if commit is None else bool(dirty)}


def environment(device: torch.device) -> dict:
    import torch

    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cnnbench": cnnbench.__version__,
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "numpy": _version("numpy"),
        "device": device.type,
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        **git_state(),
    }
    if device.type == "cuda":
        env |= {"device_name": torch.cuda.get_device_name(device), "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version()}
    else:
        env["device_name"] = env["cpu"]
    return env
