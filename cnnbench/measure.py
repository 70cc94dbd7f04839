"""Per-run measurements beyond accuracy: cost, latency, peak memory, and diagnostics of the network.

Each number means one thing, measured the way the field's tools measure it:
- FLOPs from `torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix products; it counts
  2 FLOPs per multiply-accumulate), per image, for a forward pass and for a training step (with a
  correction for grouped-convolution backward on torch releases that lack it, see `_flop_fixes`);
- latency (and the timing job's training speed) with `Stopwatch`: CUDA events recorded around exactly the
  timed calls on a GPU (the host's clock would also count queueing and the final synchronisation),
  perf_counter on the CPU; median and IQR over repeated blocks after an untimed warm-up;
- training memory: what a run adds above the level it starts from - the CUDA allocator's peak after a
  reset on a GPU; on the CPU the process's peak RSS (VmHWM, reset per run) minus its RSS at the start,
  after freed memory is handed back to the OS so that earlier runs in the same process do not hide it;
- dead filters: channels whose ReLU output is zero for every validation image at every position;
- per-layer gradient and weight L2 norms of every conv and linear layer.
"""

from __future__ import annotations

import contextlib
import functools
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

FLOP_COUNTER = "torch.utils.flop_counter.FlopCounterMode (2 FLOPs per multiply-accumulate)"


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[float, float]:
    """FLOPs per image of a forward pass and of a training step (forward + backward; the input needs no
    gradient, so the first layer computes only its weight gradient)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, *input_shape)  # 2 images: BatchNorm needs more than one in training mode
    with FlopCounterMode(display=False, custom_mapping=_flop_fixes()) as fc:
        model(x)
    forward = fc.get_total_flops() / 2
    with FlopCounterMode(display=False, custom_mapping=_flop_fixes()) as fc:
        out = model(x)
        if out.requires_grad:  # a parameter-free module (pooling) has no backward of its own here
            out.sum().backward()
    model.zero_grad(set_to_none=True)
    return forward, fc.get_total_flops() / 2


@functools.cache
def _flop_fixes() -> dict:
    """Corrections to torch's FLOP formulas where the installed torch needs them.

    Before pytorch/pytorch#183405 (2026), the weight-gradient term of `convolution_backward` ignored
    `groups`: a depthwise conv's training step counted 66x its forward pass instead of 3x. Probe a
    4-group 1x1 conv (forward 32 FLOPs, weight gradient 32 FLOPs): a correct torch counts 64."""
    from torch.utils import flop_counter

    conv = nn.Conv2d(4, 4, 1, groups=4, bias=False)
    with flop_counter.FlopCounterMode(display=False) as fc:
        conv(torch.randn(1, 4, 2, 2)).sum().backward()
    if fc.get_total_flops() == 64:
        return {}

    def conv_backward_flop(grad_out, x, w, bias, stride, padding, dilation, transposed, output_padding, groups,
                           output_mask, out_shape=None, **kwargs) -> int:
        args = [grad_out, x, w, bias, stride, padding, dilation, transposed, output_padding, groups]
        grad_input = flop_counter.conv_backward_flop(*args, [output_mask[0], False, False], out_val=out_shape)
        grad_weight = flop_counter.conv_backward_flop(*args, [False, output_mask[1], False], out_val=out_shape)
        return grad_input + grad_weight // groups

    return {torch.ops.aten.convolution_backward: conv_backward_flop}


def cost(spec) -> dict:
    """Parameters, MACs (from the plan's formulas) and FLOPs (counted by torch) per image, of a freshly
    built model on the CPU: counts depend on neither weights nor device."""
    model = spec.network()
    forward, step = count_flops(model, spec.input_shape)
    return {"params": sum(p.numel() for p in model.parameters()),
            "macs_forward": int(sum(r.macs for r in spec.layer_table())),
            "flops_forward": int(forward), "flops_train_step": int(step), "flop_counter": FLOP_COUNTER}


class Stopwatch:
    """Seconds spent in a `with` block on `device`: between two CUDA events on a GPU (synchronised on
    the end event only after the block), perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.seconds = float("nan")

    def __enter__(self) -> Stopwatch:
        if self.cuda:
            self._start, self._end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            import time

            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self._end.record()
            self._end.synchronize()
            self.seconds = self._start.elapsed_time(self._end) / 1e3
        else:
            import time

            self.seconds = time.perf_counter() - self._t0


def latency(model: nn.Module, input_shape: tuple[int, ...], batch: int, device: torch.device,
            repeats: int = 25, block_s: float = 0.004, warmup: int = 3, autocast=contextlib.nullcontext) -> dict:
    """Inference latency of one batch in eval mode: median and IQR (ms) over `repeats` timed blocks,
    each block averaging enough calls to last ~`block_s`; `warmup` calls before are not timed.
    `autocast`: the run's precision context (cnnbench.numerics)."""
    was_training = model.training
    model.eval()
    x = torch.randn(batch, *input_shape, device=device).contiguous(memory_format=torch.channels_last)

    def block(calls: int) -> float:
        with torch.inference_mode(), autocast(), Stopwatch(device) as watch:
            for _ in range(calls):
                model(x)
        return watch.seconds / calls

    single = block(warmup)  # warm-up: allocator, kernel selection, caches
    number = max(1, int(block_s / max(single, 1e-7)))
    times = np.array([block(number) for _ in range(repeats)]) * 1e3
    model.train(was_training)
    q1, median, q3 = np.percentile(times, [25, 50, 75])
    return {"median_ms": float(median), "iqr_ms": float(q3 - q1), "blocks": repeats, "calls_per_block": number}


class PeakMemory:
    """Memory that what runs inside the `with` block adds at its peak, in MiB (`train_mb`).

    The process's own level (torch, the data, ~660 MB here) is not the model's: it is measured at the
    start and subtracted. On the CPU, glibc keeps memory freed by an earlier run and the next run reuses
    it without raising RSS, so one run measured after another showed no training memory at all; freed
    memory is handed back (`malloc_trim`) before the start level is read."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_allocator" if device.type == "cuda" else "process_rss"
        self.peak_mb = self.start_mb = float("nan")

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            import gc

            gc.collect()  # an earlier run's (or variant's) cyclic garbage may still hold device tensors
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_mb = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            release_freed_memory()
            _reset_peak_rss()
            self.start_mb = _status_kb("VmRSS") / 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.peak_mb = _status_kb("VmHWM") / 1024

    @property
    def train_mb(self) -> float:
        return self.peak_mb - self.start_mb

    def as_dict(self) -> dict:
        return {"train_mb": self.train_mb, "peak_mb": self.peak_mb, "start_mb": self.start_mb, "kind": self.kind}


def release_freed_memory() -> None:
    """Collect garbage and return the C heap's free pages to the OS (glibc only; elsewhere a no-op)."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def steady_heap() -> None:
    """Make a process's RSS follow its tensors: large allocations (>= 64 KiB) get their own mappings and
    freed memory above 128 KiB is returned, instead of glibc's adaptive thresholds, under which the same
    baseline run measured 52-72 MB in one process (48-50 MB with these settings, width64 170-190 MB).
    It costs ~25% of training speed (large tensors are mapped afresh each step), so only the memory
    measurement of the timing job uses it."""
    import ctypes

    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameters from glibc's malloc.h
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(m_mmap_threshold, 64 << 10)
        libc.mallopt(m_trim_threshold, 128 << 10)


def weights_digest(model: nn.Module) -> str:
    """sha256 of a model's parameters and buffers, in state_dict order (bit-exact identity of weights)."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _status_kb(field: str) -> float:
    try:
        return float(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))
    except (OSError, AttributeError):  # not Linux: the process's lifetime peak is the best available
        import resource

        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _reset_peak_rss() -> None:
    with contextlib.suppress(OSError):  # not Linux: the lifetime peak stays (see _status_kb)
        Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: resets VmHWM to the current RSS


@torch.inference_mode()
def dead_filters(model: nn.Module, x, batch: int = 500) -> dict[str, dict]:
    """For every ReLU, two views of channels that do not fire (`x[i:j]` must give model-ready batches):

    - strict (`dead`): the channel outputs zero for every image of `x` (the validation set) at every
      position - a kernel that never fires;
    - per image, as the course looks at activation maps: `zero_maps_probe`, how many of the layer's maps
      are entirely zero for the probe image (the first of `x`); `silent_fraction`, per channel, the share
      of images whose whole map is zero; `silent_half`, the channels silent on at least half the images.
    A layer can have no strictly dead kernel and still many maps that are blank for a given digit."""
    was_training = model.training
    model.eval()
    relus = {name: m for name, m in model.named_modules() if isinstance(m, nn.ReLU)}
    peak: dict[str, torch.Tensor] = {}
    silent: dict[str, torch.Tensor] = {}
    probe: dict[str, int] = {}

    def hook(name):
        def record(module, inputs, out):
            per_image = out.amax(dim=(2, 3)) if out.dim() == 4 else out  # (B, channels)
            m = per_image.amax(dim=0)
            quiet = (per_image <= 0).sum(dim=0)
            peak[name] = m if name not in peak else torch.maximum(peak[name], m)
            silent[name] = quiet if name not in silent else silent[name] + quiet
            if name not in probe:
                probe[name] = int((per_image[0] <= 0).sum())
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in relus.items()]
    try:
        for i in range(0, len(x), batch):
            model(x[i:i + batch])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out = {}
    for name, p in peak.items():
        fraction = (silent[name].float() / len(x)).cpu()
        out[name] = {"dead": int((p <= 0).sum()), "total": int(p.numel()), "zero_maps_probe": probe[name],
                     "silent_half": int((fraction >= 0.5).sum()), "silent_mean": float(fraction.mean()),
                     "silent_fraction": [round(float(f), 4) for f in fraction]}
    return out


class LayerNorms:
    """L2 norms of the gradient (sampled during an epoch, averaged) and of the weight (at the epoch's
    end) of every conv and linear layer: where gradients vanish, and what weight decay does."""

    def __init__(self, model: nn.Module, samples_per_epoch: int = 8):
        self.names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        self.weights = [model.get_submodule(n).weight for n in self.names]
        self.samples_per_epoch = samples_per_epoch
        self._sum = None
        self._count = 0

    def every(self, steps: int) -> int:
        return max(1, steps // self.samples_per_epoch)

    def sample_gradients(self) -> None:
        """Add this step's norms; a step whose gradients overflowed (fp16: the scaler skips that step) is
        not a sample. Stays on the device: no host sync per sample."""
        norms = torch.stack([torch.linalg.vector_norm(w.grad.float()) if w.grad is not None  # None: frozen
                             else torch.zeros((), device=w.device) for w in self.weights])
        finite = torch.isfinite(norms).all()
        norms = torch.where(finite, norms, torch.zeros_like(norms))
        self._sum = norms if self._sum is None else self._sum + norms
        self._count = self._count + finite.long()

    @torch.no_grad()
    def end_epoch(self) -> dict[str, dict[str, float]]:
        count = int(self._count)
        grads = (self._sum / count).tolist() if count else [float("nan")] * len(self.names)
        weights = torch.stack([torch.linalg.vector_norm(w) for w in self.weights]).tolist()
        self._sum, self._count = None, 0
        return {"grad_norm": dict(zip(self.names, grads)), "weight_norm": dict(zip(self.names, weights))}
