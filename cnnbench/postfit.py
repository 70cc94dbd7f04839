"""What is measured on a trained network after its last epoch, as an ordered list of small functions.

Each measurement reads the finished fit (`Trained`) and returns its part of the run's result, or None where
it does not apply (a data set without test images; an external network, whose stages the translation probe
cannot find). `fit` runs them in MEASUREMENTS' order and keeps each result under the function's name, with
the seconds it took. A new measurement is a function here, an entry in MEASUREMENTS and the place the run
record keeps it (cnnbench.runner.make_record).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cnnbench import measure
from cnnbench.config import VariantSpec
from cnnbench.data import ImageData
from cnnbench.images import Images
from cnnbench.numerics import Numerics

PROBE_MAX_IMAGES = 1000  # validation images the translation probe's accuracy curve uses (its cost: ~11 passes)


@dataclass(frozen=True)
class Trained:
    """A finished fit, as the measurements see it."""

    spec: VariantSpec
    model: nn.Module  # the trained network: hooks attach here
    forward: nn.Module  # what to call for predictions: `model` or its torch.compile wrapper
    num: Numerics  # the run's precision: measurements run under it
    images: ImageData  # the whole data set (its test part, where it has one)
    x_val: Images  # the fold's validation images, normalised with the training part's statistics
    y_val: torch.Tensor

    @property
    def device(self) -> torch.device:
        return self.y_val.device


def official_test(t: Trained) -> dict | None:
    """Loss and accuracy on the data set's test images (its official split, or the held-out part), and
    their class probabilities (float16), which ensembles average."""
    from cnnbench.train import evaluate

    if not t.images.has_test:
        return None
    x_test = Images(torch.from_numpy(t.images.x_test).to(t.device), t.x_val.mean, t.x_val.std)
    y_test = torch.from_numpy(t.images.y_test).to(t.device)
    probs: list[torch.Tensor] = []
    loss, acc, _ = evaluate(t.forward, x_test, y_test, t.num, probs_out=probs)
    return {"test_loss": loss, "test_acc": acc, "n_test": int(len(y_test)), "prob": torch.cat(probs).numpy()}


def dead_filters(t: Trained) -> dict:
    """Per ReLU layer, the channels that never fire on the validation images, and those silent per image
    (cnnbench.measure.dead_filters)."""
    with t.num.autocast():
        return measure.dead_filters(t.model, t.x_val)


def translation_probe(t: Trained) -> dict | None:
    """Accuracy on shifted validation images and per-stage equivariance errors (cnnbench.probe), on at most
    PROBE_MAX_IMAGES images, shifted images filled with the black pixel of the run's normalisation. None for
    an external network: its stages are not known (torchvision's VGG has a `features` Sequential too, but
    not the design space's stage layout)."""
    from cnnbench.probe import black_fill, probe

    if t.spec.external or not isinstance(getattr(t.model, "features", None), nn.Sequential):
        return None
    n = min(len(t.y_val), PROBE_MAX_IMAGES)
    return probe(t.model, t.x_val[0:n], t.y_val[:n], num=t.num, fill=black_fill(t.x_val))


MEASUREMENTS: tuple[Callable[[Trained], Any], ...] = (official_test, dead_filters, translation_probe)


def measure_trained(t: Trained) -> tuple[dict[str, Any], dict[str, float]]:
    """Every measurement's result that applies, by name, and the seconds each of those took (synchronised)."""
    from cnnbench.runtime import sync

    results, seconds = {}, {}
    for measurement in MEASUREMENTS:
        start = time.perf_counter()
        out = measurement(t)
        sync(t.device)
        if out is not None:
            results[measurement.__name__] = out
            seconds[measurement.__name__] = time.perf_counter() - start
    return results, seconds
