"""`cnnbench loop-bench`: the project's training loop against two references.

All three train the same model (a study's baseline by default) on the same data for the same number of
steps at the same batch size, in one process, alternating so machine noise hits all alike; warm-up steps
(and with them torch.compile's compilation) are not timed.

- `dataloader`: the loop a user would write - a `DataLoader` over a `TensorDataset` of float images in the
  default NCHW layout, each batch copied to the device, fp32.
- `tuned`: a hand-tuned loop in the airbench style - the whole data set resident on the device,
  pre-normalised, stored in the compute dtype (bf16/fp16 when the precision is) and channels_last;
  batch indices drawn on the device; no host synchronisation inside the loop; the model compiled when
  `compile` is on. It is the ceiling the project's loop is measured against.
- `project`: `cnnbench.train.train_epoch` with the run's numerics (cnnbench.numerics): uint8 or
  pre-normalised images on the device, index-slice batches, channels_last, autocast, loss in fp32.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cnnbench.config import VariantSpec, load_study
from cnnbench.data import load_source
from cnnbench.images import Images
from cnnbench.models.build import build_model
from cnnbench.numerics import Numerics
from cnnbench.runtime import resolve_device, set_determinism, sync
from cnnbench.train import make_optimizer, train_epoch

WARMUP = 5  # untimed steps before each measurement
LOOPS = ("dataloader", "tuned", "project")


def _model(spec: VariantSpec, seed: int, device: torch.device, channels_last: bool = True) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(spec.plan(), spec.input_shape).to(device) if not spec.external else spec.network().to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _epoch_perm(n: int, steps: int, bs: int, seed: int, device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    rounds = -(-(steps + WARMUP) * bs // n)
    return torch.cat([torch.randperm(n, generator=gen) for _ in range(rounds)]).to(device)


def project_loop(spec: VariantSpec, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int,
                 num: Numerics) -> float:
    """img/s of the project's loop (cnnbench.train.train_epoch) at the given numerics."""
    model = _model(spec, seed, x.device)
    forward = num.maybe_compile(model)
    opt = make_optimizer(model, spec.train)
    images = Images(x, *Images.stats(x))
    bs = spec.train["batch_size"]
    perm = _epoch_perm(len(y), steps, bs, seed, x.device)
    _, _, warm_at = train_epoch(forward, opt, None, images, y, perm, bs, steps + WARMUP, warmup_steps=WARMUP,
                                num=num, scaler=num.scaler())
    return steps * bs / (time.perf_counter() - warm_at)


def tuned_loop(spec: VariantSpec, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int,
               num: Numerics) -> float:
    """img/s of a hand-tuned loop in the airbench style (see the module docstring)."""
    model = _model(spec, seed, x.device)
    forward = num.maybe_compile(model)
    opt = make_optimizer(model, spec.train)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(num.precision, torch.float32)
    xf = x.float().div_(255)
    mean, std = xf.mean(dim=(0, 2, 3), keepdim=True), xf.std(dim=(0, 2, 3), keepdim=True)
    data = ((xf - mean) / std).to(dtype).contiguous(memory_format=torch.channels_last)
    del xf
    bs = spec.train["batch_size"]
    perm = _epoch_perm(len(y), steps, bs, seed, x.device)
    scaler = num.scaler()
    model.train()
    start = None
    for i in range(steps + WARMUP):
        if i == WARMUP:
            sync(x.device)
            start = time.perf_counter()
        idx = perm[i * bs:(i + 1) * bs]
        with num.autocast():
            logits = forward(data[idx])
        loss = F.cross_entropy(logits.float(), y[idx])
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    sync(x.device)
    return steps * bs / (time.perf_counter() - start)


@contextlib.contextmanager
def pytorch_default_flags():
    """PyTorch's own backend defaults, as a plain loop gets them (cuDNN without autotuning, TF32 in
    convolutions but not in matmuls), whatever the run's numerics set; restored afterwards."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32)
    cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = False, True, False
    try:
        yield
    finally:
        cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = saved


def dataloader_loop(spec: VariantSpec, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int,
                    num: Numerics) -> float:
    """img/s of a plain PyTorch loop: DataLoader(TensorDataset) on the host, NCHW, fp32, the same model,
    at PyTorch's default backend flags."""
    with pytorch_default_flags():
        return _dataloader_loop(spec, x, y, steps, seed)


def _dataloader_loop(spec: VariantSpec, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> float:
    from torch.utils.data import DataLoader, TensorDataset

    device = x.device
    model = _model(spec, seed, device, channels_last=False)
    opt = make_optimizer(model, spec.train)
    xf = x.cpu().float() / 255
    mean, std = xf.mean(dim=(0, 2, 3), keepdim=True), xf.std(dim=(0, 2, 3), keepdim=True)
    loader = DataLoader(TensorDataset((xf - mean) / std, y.cpu()), batch_size=spec.train["batch_size"],
                        shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(seed))
    done, start = 0, None
    model.train()
    while done < steps + WARMUP:
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done == WARMUP:
                sync(device)
                start = time.perf_counter()
            if done == steps + WARMUP:
                break
    sync(device)
    return steps * spec.train["batch_size"] / (time.perf_counter() - start)


LOOP_FUNCTIONS = {"dataloader": dataloader_loop, "tuned": tuned_loop, "project": project_loop}


def loop_bench(config: str | Path = "config/config.yaml", variant: str | None = None, steps: int = 150,
               repeats: int = 3, threads: int = 1, device: str = "cpu", precision: str = "auto",
               compile: bool | str | None = None) -> dict:
    """Median img/s of each loop over `repeats` alternating measurements. `compile` (default: on for CUDA,
    off on the CPU, where it is slower end to end) and `precision` apply to the tuned and project loops."""
    dev = resolve_device(device)
    set_determinism(dev, threads)  # threads, and cuDNN autotuning on CUDA: the flags a training job runs with
    compile = dev.type == "cuda" if compile is None else compile
    num = Numerics.for_run({"precision": precision, "compile": compile}, dev)
    study = load_study(config)
    spec = study.variants[variant or study.baseline]
    images = load_source(study.data)  # the whole data section: root and path too
    n_train = len(images.y) * (spec.split["folds"] - 1) // spec.split["folds"]  # one fold's training part
    x = torch.from_numpy(np.ascontiguousarray(images.x[:n_train])).to(dev)
    y = torch.from_numpy(images.y[:n_train]).to(dev)
    measured: dict[str, list[float]] = {name: [] for name in LOOPS}
    for r in range(repeats):
        for name in LOOPS:
            measured[name].append(LOOP_FUNCTIONS[name](spec, x, y, steps, r, num))
    median = {name: statistics.median(v) for name, v in measured.items()}
    return {"variant": spec.name, "steps": steps, "batch_size": spec.train["batch_size"], "threads": threads,
            "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            **{k: v for k, v in num.as_dict().items() if k != "precision_setting"},
            **{f"{name}_img_per_s": median[name] for name in LOOPS}, **{f"{name}_all": measured[name] for name in LOOPS},
            "ratio": median["project"] / median["dataloader"], "ratio_to_tuned": median["project"] / median["tuned"]}


def format_result(r: dict) -> str:
    def line(label: str, name: str) -> str:
        return (f"  {label:<46} {r[f'{name}_img_per_s']:10,.0f} img/s   "
                f"[{', '.join(f'{v:,.0f}' for v in r[f'{name}_all'])}]")

    return "\n".join([
        f"loop benchmark: variant {r['variant']!r} on {r['device_name']}, {r['steps']} timed steps of batch "
        f"{r['batch_size']}, {r['threads']} thread(s), median of {len(r['project_all'])} alternating repeats",
        line("reference: DataLoader, NCHW, fp32", "dataloader"),
        line(f"reference: tuned ({r['precision']}, compile {r['compile']})", "tuned"),
        line(f"cnnbench loop ({r['precision']}, compile {r['compile']})", "project"),
        f"  speed-up over the DataLoader loop: {r['ratio']:.2f}x",
        f"  share of the tuned loop's speed: {r['ratio_to_tuned']:.0%} (goal: at least 80%)",
    ])
