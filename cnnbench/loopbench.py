"""`cnnbench loop-bench`: the project's training loop against the loop a user would write.

Both train the same model (the default study's baseline) on the same data for the same number of
steps, in one process, alternating A/B so machine noise hits both alike; warm-up steps are not timed.
Reference: a `DataLoader` over a `TensorDataset` of float images in the default NCHW layout.
Project: `cnnbench.train.train_epoch` (uint8 tensor on the device, index-slice batches, channels_last).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cnnbench.config import VariantSpec, load_study
from cnnbench.data import load_source
from cnnbench.models.build import build_model
from cnnbench.train import Images, make_optimizer, sync, train_epoch

WARMUP = 5  # untimed steps before each measurement


def _spec(config: str | Path, variant: str) -> VariantSpec:
    study = load_study(config)
    return study.variants[variant or study.baseline]


def project_loop(spec: VariantSpec, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> float:
    """img/s of the project's loop."""
    torch.manual_seed(seed)
    model = build_model(spec.plan(), spec.input_shape).to(memory_format=torch.channels_last)
    opt = make_optimizer(model, spec.train)
    images = Images(x, *Images.stats(x))
    bs = spec.train["batch_size"]
    n_perm = -(-(steps + WARMUP) * bs // len(y))
    gen = torch.Generator().manual_seed(seed)
    perm = torch.cat([torch.randperm(len(y), generator=gen) for _ in range(n_perm)])
    _, _, warm_at = train_epoch(model, opt, None, images, y, perm, bs, steps + WARMUP, warmup_steps=WARMUP)
    return steps * bs / (time.perf_counter() - warm_at)


def reference_loop(spec: VariantSpec, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> float:
    """img/s of a plain PyTorch loop: DataLoader(TensorDataset), NCHW, the same model and optimiser."""
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(seed)
    model = build_model(spec.plan(), spec.input_shape)
    opt = make_optimizer(model, spec.train)
    xf = x.float() / 255
    mean, std = xf.mean(dim=(0, 2, 3), keepdim=True), xf.std(dim=(0, 2, 3), keepdim=True)
    loader = DataLoader(TensorDataset((xf - mean) / std, y), batch_size=spec.train["batch_size"], shuffle=True,
                        drop_last=True)
    done, start = 0, None
    model.train()
    while done < steps + WARMUP:
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done == WARMUP:
                sync(x.device)
                start = time.perf_counter()
            if done == steps + WARMUP:
                break
    sync(x.device)
    return steps * spec.train["batch_size"] / (time.perf_counter() - start)


def loop_bench(config: str | Path = "config/config.yaml", variant: str | None = None, steps: int = 150,
               repeats: int = 3, threads: int = 1) -> dict:
    torch.set_num_threads(threads)
    spec = _spec(config, variant)
    images = load_source({"name": spec.data["name"], **{k: v for k, v in spec.data.items() if k != "name"}})
    n_train = len(images.y) * (spec.split["folds"] - 1) // spec.split["folds"]  # one fold's training part
    x = torch.from_numpy(np.ascontiguousarray(images.x[:n_train]))
    y = torch.from_numpy(images.y[:n_train])
    ref, proj = [], []
    for r in range(repeats):
        ref.append(reference_loop(spec, x, y, steps, seed=r))
        proj.append(project_loop(spec, x, y, steps, seed=r))
    return {"variant": spec.name, "steps": steps, "batch_size": spec.train["batch_size"], "threads": threads,
            "reference_img_per_s": statistics.median(ref), "project_img_per_s": statistics.median(proj),
            "ratio": statistics.median(proj) / statistics.median(ref), "reference_all": ref, "project_all": proj}


def format_result(r: dict) -> str:
    return "\n".join([
        f"loop benchmark: variant {r['variant']!r}, {r['steps']} timed steps of batch {r['batch_size']}, "
        f"{r['threads']} thread(s), median of {len(r['project_all'])} alternating repeats",
        f"  reference loop (DataLoader, NCHW): {r['reference_img_per_s']:8,.0f} img/s   "
        f"[{', '.join(f'{v:,.0f}' for v in r['reference_all'])}]",
        f"  cnnbench loop (tensor, channels_last): {r['project_img_per_s']:4,.0f} img/s   "
        f"[{', '.join(f'{v:,.0f}' for v in r['project_all'])}]",
        f"  speed-up: {r['ratio']:.2f}x",
    ])
