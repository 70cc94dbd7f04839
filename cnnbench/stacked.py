"""The other way to fill a GPU with small nets: the k fold models of one variant trained as one vmapped
computation, measured against the same models one after another (gpu-check's "stacked folds" step).
On the H200 it ran 2.56x one after another, but 0.41x of 8 concurrent jobs (gpusweep), so it is
measured, not offered as a setting."""

from __future__ import annotations

import time
from pathlib import Path


def stacked_folds(config: str | Path, variant: str | None = None, k: int = 5, steps: int = 100,
                  device: str = "cuda", repeats: int = 3, log=None) -> dict:
    """The other way to fill a GPU: the k fold models of one variant trained as one computation
    (torch.func.stack_module_state + vmap over parameters, and each model's own batch), against the same
    k models trained one after another. img/s counts every model's images. SGD, momentum and weight decay
    act elementwise, so one optimiser over the stacked parameters is k independent optimisers. Networks
    with BatchNorm are refused (its running statistics cannot be updated under vmap)."""
    import copy
    import statistics

    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, stack_module_state

    from cnnbench.config import load_study
    from cnnbench.data import load_source
    from cnnbench.images import Images
    from cnnbench.numerics import Numerics
    from cnnbench.runtime import resolve_device, set_determinism, sync
    from cnnbench.train import init_model, make_optimizer, train_epoch

    study = load_study(config)
    spec = study.variants[variant or study.baseline]
    dev = resolve_device(device)
    set_determinism(dev, torch.get_num_threads())  # cuDNN autotuning on CUDA, as in training jobs
    models = [init_model(spec, seed, dev) for seed in range(k)]
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in models[0].modules()):
        raise ValueError(f"variant {spec.name!r} has BatchNorm, which vmap cannot train with running statistics")
    t = spec.train
    if t["optimizer"] != "sgd" or not t.get("decay_biases", True) or t.get("pretrained"):
        raise ValueError(f"variant {spec.name!r}: the stacked models train with one plain SGD over every parameter, "
                         "so both sides compare alike only for optimizer: sgd, decay_biases: true, no pretrained")
    num = Numerics.for_run(spec.numerics, dev)
    images = load_source(study.data)  # root and path too
    x = torch.from_numpy(np.ascontiguousarray(images.x)).to(dev)
    y = torch.from_numpy(images.y).to(dev)
    data = Images(x, *Images.stats(x))
    bs = spec.train["batch_size"]
    gen = torch.Generator().manual_seed(0)

    params, buffers = stack_module_state(models)
    params = {n: p.detach().requires_grad_() for n, p in params.items()}
    skeleton = copy.deepcopy(models[0]).to("meta")
    opt = torch.optim.SGD(params.values(), lr=spec.train["lr"], momentum=spec.train["momentum"],
                          weight_decay=spec.train["weight_decay"])

    def one(p, b, xb):
        return functional_call(skeleton, (p, b), (xb,))

    def stacked_steps(n: int) -> float:
        start = None
        for i in range(n + 2):
            if i == 2:
                sync(dev)
                start = time.perf_counter()
            idx = torch.randint(len(y), (k, bs), generator=gen).to(dev)
            xb, yb = data[idx.flatten()].reshape(k, bs, *spec.input_shape), y[idx]
            with num.autocast():
                logits = torch.vmap(one, randomness="different")(params, buffers, xb)
            loss = F.cross_entropy(logits.float().flatten(0, 1), yb.flatten(), reduction="sum") / bs
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync(dev)
        return n * bs * k / (time.perf_counter() - start)

    def sequential_steps(n: int) -> float:
        total = 0.0
        for model in models:
            opt1 = make_optimizer(model, spec.train)
            perm = torch.randint(len(y), ((n + 2) * bs,), generator=gen).to(dev)
            _, _, warm_at = train_epoch(model, opt1, None, data, y, perm, bs, n + 2, warmup_steps=2, num=num,
                                        scaler=num.scaler())
            total += time.perf_counter() - warm_at
        return n * bs * k / total

    stacked, sequential = [], []
    for i in range(repeats):
        sequential.append(sequential_steps(steps))
        stacked.append(stacked_steps(steps))
        if log:
            log(f"  repeat {i + 1}/{repeats}: {k} models one after another {sequential[-1]:,.0f} img/s, "
                f"stacked {stacked[-1]:,.0f} img/s")
    s_med, q_med = statistics.median(stacked), statistics.median(sequential)
    return {"variant": spec.name, "k": k, "steps": steps, "device": str(dev), "stacked_img_per_s": s_med,
            "sequential_img_per_s": q_med, "ratio": s_med / q_med, "stacked_all": stacked, "sequential_all": sequential}
