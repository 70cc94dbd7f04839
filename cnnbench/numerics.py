"""How a run computes: precision (autocast), torch.compile, and deterministic kernels.

`execution.precision`, `execution.compile` and `execution.deterministic` are study-wide (every variant of
a comparison shares them) and part of each run's identity when set. What a setting *resolved to* on the
device that ran the job (auto -> bf16 on a GPU that has it) is recorded in every run, and `collect`
refuses a comparison whose runs resolved differently (a heterogeneous cluster).

Precision, as is the norm for mixed precision in PyTorch: parameters, optimiser state and BatchNorm's
running statistics stay fp32, activations are bf16/fp16 under `torch.autocast`, and the loss is computed
in fp32 from the logits. fp16 adds a gradient scaler (its range is too small for raw gradients).
`fp32` on CUDA switches TF32 *off* (cuDNN convolutions use it by default), so it means what it says.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass

import torch

from cnnbench.errors import ConfigError

PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16")
COMPILE_MODES = (False, True, "max-autotune")
DEFAULTS = {"precision": "auto", "compile": False, "deterministic": False}
_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}
CUBLAS_WORKSPACE = ":4096:8"  # what the CUDA docs require for deterministic cuBLAS (CUDA >= 10.2)


def resolve_precision(setting: str, device: torch.device) -> str:
    """auto -> bf16 on a CUDA device that supports it, else fp32 (a pre-Ampere GPU or the CPU: fp16 there
    needs a loss scale and can diverge, so it is never chosen for you)."""
    if setting not in PRECISIONS:
        raise ConfigError(f"execution.precision: {setting!r} is not one of {', '.join(PRECISIONS)}")
    if device.type != "cuda":
        if setting == "tf32":
            raise ConfigError("execution.precision: tf32 is a mode of NVIDIA GPUs (Ampere and later); on the "
                              "CPU use fp32 or bf16")
        return "fp32" if setting == "auto" else setting
    if setting == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if setting == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"execution.precision: bf16 is not supported by {torch.cuda.get_device_name(device)}; "
                          "use fp16 or fp32")
    return setting


@dataclass
class Numerics:
    """A run's resolved numerics, and the pieces of the training step that depend on them."""

    precision: str  # fp32 | tf32 | bf16 | fp16 (resolved)
    setting: str  # what the config asked for
    compile: bool | str
    deterministic: bool
    device: torch.device

    @classmethod
    def for_run(cls, numerics: dict, device: torch.device) -> Numerics:
        n = {**DEFAULTS, **(numerics or {})}
        out = cls(resolve_precision(n["precision"], device), n["precision"], n["compile"], n["deterministic"],
                  device)
        out.apply_backend_flags()
        return out

    def apply_backend_flags(self) -> None:
        """TF32 on or off for CUDA matmuls and convolutions, as the precision says."""
        if self.device.type == "cuda":
            tf32 = self.precision == "tf32"
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32

    def autocast(self):
        """The forward pass's context: autocast to bf16/fp16, or nothing."""
        if self.precision in _DTYPE:
            return torch.autocast(self.device.type, dtype=_DTYPE[self.precision])
        return contextlib.nullcontext()

    def scaler(self) -> torch.amp.GradScaler:
        """fp16's dynamic loss scale; a no-op pass-through for every other precision."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def maybe_compile(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module to call in the training loop: `model` itself, or its torch.compile wrapper (which
        shares `model`'s parameters, so the optimiser, hooks and measurements keep using `model`)."""
        if not self.compile:
            return model
        return torch.compile(model, mode="max-autotune" if self.compile == "max-autotune" else None)

    def as_dict(self) -> dict:
        return {"precision": self.precision, "precision_setting": self.setting,
                "compile": {False: "off", True: "default"}.get(self.compile, self.compile),  # one type: a table column
                "deterministic": self.deterministic}


def set_deterministic(device: torch.device) -> None:
    """Deterministic kernels on request (execution.deterministic): torch's switch (errors on an op that has
    no deterministic implementation rather than silently not being), cuDNN without autotuning, and the
    cuBLAS workspace setting. The environment variable must be set before cuBLAS starts, so the training
    and timing jobs call this before any CUDA work."""
    if device.type == "cuda":
        if "CUBLAS_WORKSPACE_CONFIG" not in os.environ and torch.cuda.is_initialized():
            # torch reads the variable once, at the process's first cuBLAS call, and keeps the answer: set
            # now, it may come too late, and the first matmul would fail deep inside torch
            raise RuntimeError(
                f"execution.deterministic on CUDA needs CUBLAS_WORKSPACE_CONFIG={CUBLAS_WORKSPACE} before the "
                "process's first CUDA work; set it in the environment (or call set_deterministic first)")
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True)


def compile_warm_up(step, *, device: torch.device) -> float:
    """Seconds that `step()` (one training step and one evaluation batch of a throwaway copy of the
    model) takes while torch.compile traces and compiles it; the run's own model then reuses the compiled
    code, so compile time is recorded on its own and never lands in throughput. Random-number state is
    restored afterwards, so the run draws the same numbers as without the warm-up."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start
