"""The training loop: data as one tensor on the device, batches by index, augmentation on the device.

What a user would write with a DataLoader pays per-sample indexing and collation on every batch;
here a batch is one gather from a (N, C, H, W) uint8 tensor that already lives on the device, and the
model runs in channels_last, which oneDNN (CPU) and cuDNN (GPU) convolutions prefer.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnbench.config import VariantSpec
from cnnbench.data import ImageData
from cnnbench.images import Images
from cnnbench.measure import LayerNorms, PeakMemory, weights_digest
from cnnbench.numerics import Numerics, compile_warm_up
from cnnbench.postfit import Trained, measure_trained
from cnnbench.runtime import sync

WARMUP_STEPS = 5  # steps excluded from the throughput figure (allocator and kernel set-up)
EVAL_BATCH = 500  # images per forward pass when evaluating


@dataclass
class FitResult:
    model: nn.Module
    epochs: list[dict]  # per epoch: losses, accuracies, lr, train/eval seconds
    val_pred: np.ndarray  # final model's predicted class per validation image (validation order)
    train_img_per_s: float  # warm-up excluded
    train_time_s: float  # training steps only, all epochs
    images_seen: int
    wall_s: float  # the whole fit: model build, data to device, training, evaluation, measurement
    memory: dict  # memory that training added (see measure.PeakMemory)
    init_digest: str  # sha256 of the initial weights: same run of two same-architecture variants -> same
    numerics: dict  # resolved precision, compile, deterministic, and the compile time (s) kept out of speed
    # what was measured on the trained network (cnnbench.postfit), by measurement, and the seconds each took
    after: dict = field(default_factory=dict)
    after_s: dict = field(default_factory=dict)
    diverged: dict | None = None  # {"epoch", "reason"} when training was stopped as diverged

    @property
    def test(self) -> dict | None:
        """Loss, accuracy and count of the test images (the official split or the held-out part), or None."""
        t = self.after.get("official_test")
        return {k: v for k, v in t.items() if k != "prob"} if t else None

    @property
    def test_prob(self) -> np.ndarray | None:
        """(n_test, classes) float16 class probabilities: ensembles average them."""
        return self.after["official_test"]["prob"] if "official_test" in self.after else None


class DivergenceWatch:
    """Stops a run that has diverged: a non-finite loss, or - once the learning-rate warm-up is over
    (one-cycle: its first 20% of epochs; other schedules: the first epoch) - two epochs in a row with
    training accuracy no better than always answering the majority class *and* a training loss that no
    longer falls. A slow starter (a deep plain net, sigmoid units) whose loss still falls is left alone."""

    MARGIN = 0.01  # accuracy within 1 point of the majority-class rate counts as chance
    FALLING = 0.01  # a loss 1% below the previous epoch's is still falling

    def __init__(self, t: dict, y_train: np.ndarray, random_labels: bool = False):
        self.chance = float(np.bincount(y_train).max() / len(y_train))
        self.random_labels = random_labels  # synthetic data: chance accuracy is all there is to learn
        self.after = math.ceil(0.2 * t["epochs"]) if t["schedule"] == "onecycle" else 1
        self.stuck, self.last_loss, self.diverged = 0, math.inf, None

    def check(self, row: dict) -> bool:
        loss = row["train_loss"]
        if not (math.isfinite(loss) and math.isfinite(row["val_loss"])):
            self.diverged = {"epoch": row["epoch"], "reason": "non-finite loss"}
        elif row["epoch"] > self.after and not self.random_labels:
            at_chance = row["train_acc"] <= self.chance + self.MARGIN
            falling = loss < (1 - self.FALLING) * self.last_loss
            self.stuck = self.stuck + 1 if at_chance and not falling else 0
            if self.stuck >= 2:
                self.diverged = {"epoch": row["epoch"], "reason": f"training accuracy at chance ({self.chance:.1%}) "
                                 "and the loss no longer falling after the warm-up"}
        self.last_loss = loss if math.isfinite(loss) else self.last_loss
        return self.diverged is not None


def penalties(model: nn.Module, t: dict) -> tuple[list[torch.Tensor], ActivityPenalty | None]:
    """What the loss adds beyond cross-entropy: the parameters under the L1 penalty (kernels, and biases
    and BatchNorm parameters unless `decay_biases` is false) and the activity penalty, if any."""
    penalised = [p for n, p in model.named_parameters() if t.get("decay_biases", True) or is_kernel(n, p)] \
        if t["l1"] else []
    return penalised, ActivityPenalty(model, t["activity"]) if t.get("activity") else None


class ActivityPenalty:
    """`weight` x the sum over activation layers of the mean |output| of the current training forward
    pass, collected by forward hooks (training mode only; evaluation adds nothing)."""

    def __init__(self, model: nn.Module, weight: float):
        from cnnbench.models.build import ACTIVATIONS

        self.weight, self._terms = weight, []
        kinds = tuple(ACTIVATIONS.values())
        self.layers = [m for m in model.modules() if isinstance(m, kinds)]
        for m in self.layers:
            m.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args, out: torch.Tensor) -> None:
        if module.training and torch.is_grad_enabled():
            self._terms.append(out.float().abs().mean())

    def take(self) -> torch.Tensor:
        """The penalty of the forward pass just made; clears it for the next step."""
        total = self.weight * torch.stack(self._terms).sum()
        self._terms.clear()
        return total


def is_kernel(name: str, param: torch.Tensor) -> bool:
    """A conv or linear weight (what Keras calls a kernel), as opposed to a bias or a BatchNorm parameter."""
    return param.dim() > 1 and name.endswith("weight")


def make_optimizer(model: nn.Module, t: dict) -> torch.optim.Optimizer:
    """The run's optimiser over the parameters that train (frozen ones are left out). Weight decay acts on
    kernels only when `decay_biases` is false; with `pretrained`, every layer but the head learns at lr
    times `finetune_lr_factor`. Without either, one group of every parameter, in model order."""
    groups: dict[tuple[bool, bool], list] = {}
    for n, p in model.named_parameters():
        if p.requires_grad:
            pretrained = bool(t.get("pretrained")) and not n.startswith("head.")
            decayed = t.get("decay_biases", True) or is_kernel(n, p)
            groups.setdefault((pretrained, decayed), []).append(p)
    params = [{"params": ps, "lr": t["lr"] * (t.get("finetune_lr_factor", 1.0) if pretrained else 1.0),
               "weight_decay": t["weight_decay"] if decayed else 0.0}
              for (pretrained, decayed), ps in sorted(groups.items(), key=lambda kv: kv[0][0])]  # head first
    if t["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=t["lr"], momentum=t["momentum"],
                               nesterov=t["nesterov"] and t["momentum"] > 0, weight_decay=t["weight_decay"])
    cls = torch.optim.Adam if t["optimizer"] == "adam" else torch.optim.AdamW
    return cls(params, lr=t["lr"], betas=(t["momentum"], 0.999), weight_decay=t["weight_decay"])


def lr_factor(kind: str, step: int, total: int) -> float:
    """Multiplier of the peak lr after `step` of `total` optimiser steps."""
    t = step / max(total, 1)
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if kind == "onecycle":  # linear warm-up over the first 20%, then linear decay to 0 (airbench-style)
        return min((step + 1) / max(0.2 * total, 1), max(0.0, (total - step) / max(0.8 * total, 1)))
    if kind == "step":
        return 0.1 ** ((t >= 0.5) + (t >= 0.75))
    return 1.0


def init_model(spec: VariantSpec, seed: int, device: torch.device) -> nn.Module:
    """The run's initial network: weights drawn from the run seed, channels_last on the device."""
    torch.manual_seed(seed)
    return spec.network().to(device, memory_format=torch.channels_last)


def labels_per_class(train_idx: np.ndarray, y: np.ndarray, n: int | None) -> np.ndarray:
    """`n` images of each class of a fold's training part (all of a class that has fewer). The choice
    depends on the fold's training indices and `n` only, so every variant with the same `n` trains on
    the same images and stays paired; a larger `n` keeps the images of a smaller one (nested draws)."""
    if not n:
        return train_idx
    order = np.random.default_rng([len(train_idx), int(train_idx.sum() % 2**32)]).permutation(len(train_idx))
    labels = y[train_idx[order]]
    taken = [train_idx[order[labels == c][:n]] for c in np.unique(labels)]
    return np.sort(np.concatenate(taken))


def start_from(model: nn.Module, state: dict[str, torch.Tensor], freeze: bool) -> None:
    """Load pretrained weights into every layer but the head (a new task: the head starts afresh); with
    `freeze`, those layers do not train and stay in eval mode (a fixed feature extractor: BatchNorm
    normalises with the pretrained statistics, dropout in the body is off; `train_mode` keeps them so)."""
    body = {k: v for k, v in state.items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(body, strict=False)
    if unexpected or any(not k.startswith("head.") for k in missing):
        from cnnbench.errors import CnnbenchError

        raise CnnbenchError(f"pretrained weights do not fit this network: missing {missing[:3]}, unexpected "
                            f"{unexpected[:3]}")
    if freeze:
        for name, p in model.named_parameters():
            if not name.startswith("head."):
                p.requires_grad_(False)
        for name, m in model.named_children():
            if name != "head":
                m.cnnbench_frozen = True


def train_mode(model: nn.Module) -> None:
    """`model.train()`, except for the frozen body of a transfer run, which stays in eval mode (searched
    in all modules: a torch.compile wrapper holds the network one level down)."""
    model.train()
    for m in model.modules():
        if getattr(m, "cnnbench_frozen", False):
            m.eval()


def warm_up(spec: VariantSpec, device: torch.device, num: Numerics | None = None) -> None:
    """One training step and one evaluation batch of the variant's network on random data, so that
    one-time costs of the process (lazy library set-up, kernel and thread-pool caches: ~170 MB and a few
    hundred ms here; torch.compile's tracing and code generation) land before the first run rather than
    in its memory and time figures."""
    num = num or Numerics.for_run({**spec.numerics, "compile": False}, device)  # compiling: see fit
    model = init_model(spec, 0, device)
    forward = num.maybe_compile(model)
    opt = make_optimizer(model, spec.train)
    x = torch.randn(spec.train["batch_size"], *spec.input_shape, device=device).contiguous(
        memory_format=torch.channels_last)
    with num.autocast():
        logits = forward(x)
    F.cross_entropy(logits.float(), torch.zeros(len(x), dtype=torch.long, device=device)).backward()
    opt.step()
    with torch.inference_mode(), num.autocast():
        forward.eval()(torch.randn(EVAL_BATCH, *spec.input_shape, device=device).contiguous(
            memory_format=torch.channels_last))
    sync(device)


def fit(spec: VariantSpec, images: ImageData, train_idx: np.ndarray, val_idx: np.ndarray, *, seed: int,
        device: torch.device, on_epoch: Callable[[dict], None] | None = None,
        pretrained: dict[str, torch.Tensor] | None = None) -> FitResult:
    """Train one run. `seed` is the run seed (cnnbench.seeds.run_seed): initial weights, batch order,
    augmentation and dropout all draw from it. `pretrained`: the state dict a `pretrained:` variant
    starts from (every layer but the head; see `start_from`)."""
    t = spec.train
    if t.get("pretrained") and pretrained is None:
        from cnnbench.errors import CnnbenchError

        raise CnnbenchError(f"variant {spec.name!r} starts from pretrained weights {t['pretrained']!r}; pass them "
                            "(the workflow's pretrain job writes them)")
    train_idx = labels_per_class(train_idx, images.y, t.get("labels_per_class"))
    num = Numerics.for_run(spec.numerics, device)
    compile_s = compile_warm_up(lambda: warm_up(spec, device, num), device=device) if num.compile else None
    fit_start = time.perf_counter()
    memory = PeakMemory(device)
    with memory:
        model = init_model(spec, seed, device)  # also seeds the global stream that dropout draws from
        if pretrained is not None:
            start_from(model, pretrained, freeze=t.get("freeze", False))
        init_digest = weights_digest(model)
        forward = num.maybe_compile(model)
        shuffle_gen = torch.Generator().manual_seed(seed)
        aug_gen = torch.Generator(device=device).manual_seed(seed)

        x_all = torch.from_numpy(images.x).to(device)  # (N, C, H, W) uint8
        y_all = torch.from_numpy(images.y).to(device)
        tr, va = torch.from_numpy(train_idx).to(device), torch.from_numpy(val_idx).to(device)
        mean, std = Images.stats(x_all[tr])
        x_train, y_train = Images(x_all[tr], mean, std, t["augment"], aug_gen), y_all[tr]
        x_val, y_val = Images(x_all[va], mean, std), y_all[va]

        bs = t["batch_size"]
        steps = len(train_idx) // bs  # the last partial batch is dropped
        if steps == 0:
            from cnnbench.errors import ConfigError

            raise ConfigError(f"variant {spec.name!r}, field 'batch_size': {bs} exceeds the {len(train_idx)} "
                              "training images of a fold")
        total_steps = steps * t["epochs"]
        opt = make_optimizer(model, t)
        scaler = num.scaler()
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(t["schedule"], s, total_steps))
        penalised, activity = penalties(model, t)
        norms = LayerNorms(model)

        epochs, train_time, warm_time, warm_images = [], 0.0, None, 0
        watch = DivergenceWatch(t, images.y[train_idx], random_labels=spec.data.get("name") == "synthetic")
        for epoch in range(1, t["epochs"] + 1):
            perm = torch.randperm(len(train_idx), generator=shuffle_gen).to(device)
            sync(device)
            t0 = time.perf_counter()
            warm = WARMUP_STEPS if epoch == 1 else None
            loss_sum, correct, warm_at = train_epoch(forward, opt, sched, x_train, y_train, perm, bs, steps,
                                                     t["label_smoothing"], t["l1"], penalised, warm, norms,
                                                     num=num, scaler=scaler, activity=activity)
            if warm_at is not None:
                warm_time, warm_images = warm_at - t0, min(WARMUP_STEPS, steps - 1) * bs
            epoch_time = time.perf_counter() - t0
            train_time += epoch_time
            t1 = time.perf_counter()
            val_loss, val_acc, val_pred = evaluate(forward, x_val, y_val, num)
            row = {"epoch": epoch, "train_loss": loss_sum / (steps * bs), "train_acc": correct / (steps * bs),
                   "val_loss": val_loss, "val_acc": val_acc, "lr": opt.param_groups[0]["lr"],
                   "train_time_s": epoch_time, "eval_time_s": time.perf_counter() - t1, **norms.end_epoch()}
            epochs.append(row)
            if on_epoch:
                on_epoch(row)
            if watch.check(row):
                break  # a diverged run stops here: the rest of its schedule would be wasted time

    images_seen = steps * bs * len(epochs)
    warm_time = warm_time or 0.0
    throughput = (images_seen - warm_images) / max(train_time - warm_time, 1e-9)
    after, after_s = measure_trained(Trained(spec, model, forward, num, images, x_val, y_val))
    return FitResult(model, epochs, val_pred, throughput, train_time, images_seen, time.perf_counter() - fit_start,
                     memory.as_dict(), init_digest, {**num.as_dict(), "compile_time_s": compile_s}, after=after,
                     after_s=after_s, diverged=watch.diverged)


def train_epoch(model: nn.Module, opt: torch.optim.Optimizer, sched, x_train: Images,
                y_train: torch.Tensor, perm: torch.Tensor, bs: int, steps: int, label_smoothing: float = 0.0,
                l1: float = 0.0, penalised: list[torch.Tensor] = (), warmup_steps: int | None = None,
                norms: LayerNorms | None = None, *, num: Numerics | None = None,
                scaler: torch.amp.GradScaler | None = None,
                activity: ActivityPenalty | None = None) -> tuple[float, int, float | None]:
    """`steps` optimiser steps over batches `perm[i*bs:(i+1)*bs]`. Returns summed loss, correct count and,
    if `warmup_steps` is given, the perf_counter time when that many steps had finished (synchronised).
    `norms` samples per-layer gradient norms on a few evenly spaced steps. `num` sets the forward pass's
    precision (default fp32); the loss is always computed in fp32; `scaler` is fp16's loss scale."""
    every = norms.every(steps) if norms else 0
    train_mode(model)
    device = y_train.device
    num = num or Numerics.for_run({"precision": "fp32"}, device)
    scaler = scaler or num.scaler()
    loss_sum = torch.zeros((), device=device)  # accumulated on the device: no sync per step
    correct = torch.zeros((), device=device, dtype=torch.long)
    warm_at = None
    for i in range(steps):
        idx = perm[i * bs:(i + 1) * bs]
        xb, yb = x_train[idx], y_train[idx]
        with num.autocast():
            logits = model(xb)
        loss = F.cross_entropy(logits.float(), yb, label_smoothing=label_smoothing)
        objective = loss + l1 * sum(w.abs().sum() for w in penalised) if l1 else loss
        if activity is not None:
            objective = objective + activity.take()
        opt.zero_grad(set_to_none=True)
        scaler.scale(objective).backward()
        if norms and i % every == 0:
            scaler.unscale_(opt)  # true gradients, not fp16's scaled ones (a no-op for other precisions)
            norms.sample_gradients()
        scaler.step(opt)
        scaler.update()
        if sched is not None:
            sched.step()
        loss_sum += loss.detach() * bs
        correct += (logits.argmax(1) == yb).sum()
        if warmup_steps is not None and i + 1 == min(warmup_steps, steps - 1):
            sync(device)
            warm_at = time.perf_counter()
    sync(device)
    return loss_sum.item(), int(correct.item()), warm_at


@torch.inference_mode()
def evaluate(model: nn.Module, x: Images, y: torch.Tensor, num: Numerics | None = None,
             probs_out: list | None = None) -> tuple[float, float, np.ndarray]:
    """Mean cross-entropy, accuracy and predicted classes, in eval mode (BN statistics, no dropout), at
    the run's precision (the loss in fp32). With `probs_out`, the class probabilities (float16, what an
    ensemble averages) are appended to it."""
    model.eval()
    autocast = num.autocast if num else contextlib.nullcontext
    loss_sum, preds = 0.0, []
    for i in range(0, len(y), EVAL_BATCH):
        with autocast():
            logits = model(x[i:i + EVAL_BATCH]).float()
        loss_sum += F.cross_entropy(logits, y[i:i + EVAL_BATCH], reduction="sum").item()
        preds.append(logits.argmax(1))
        if probs_out is not None:
            probs_out.append(logits.softmax(1).half().cpu())
    pred = torch.cat(preds)
    return loss_sum / len(y), (pred == y).float().mean().item(), pred.cpu().numpy()
