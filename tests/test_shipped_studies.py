"""The shipped studies are valid and, together, turn every knob and use every registered model."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cnnbench.config import load_study
from cnnbench.models.registry import list_models
from tests.helpers import REPO

CONFIGS = sorted((REPO / "config").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_study_is_valid(path: Path):
    study = load_study(path)
    assert study.baseline in study.variants


def _settings() -> dict[str, set]:
    """Every knob set explicitly anywhere (variants or protocol), with the values it takes."""
    seen: dict[str, set] = {}

    def add(entries: dict) -> None:
        for knob, value in entries.items():
            if knob == "augment":
                for k, v in value.items():
                    seen.setdefault(f"augment.{k}", set()).add(repr(v))
            else:
                seen.setdefault(knob, set()).add(repr(value))

    for path in CONFIGS:
        raw = yaml.safe_load(path.read_text())
        add(raw.get("protocol", {}))
        for variant in raw["variants"].values():
            add(variant)
    return seen


def test_every_knob_appears_in_a_shipped_variant():
    seen = _settings()
    knobs = ["width", "padding", "stride", "pool", "block", "shortcut", "bn", "dropout", "kernel_size", "dilation",
             "groups", "activation", "head", "blocks", "hidden", "weight_decay", "l1", "decay_biases", "activity",
             "optimizer", "lr", "schedule",
             "label_smoothing", "augment.flip", "augment.shift", "augment.rotate", "augment.shear",
             "augment.brightness", "augment.contrast", "augment.saturation"]
    assert [k for k in knobs if k not in seen] == []
    assert {"'relu'", "'sigmoid'", "'tanh'", "'gelu'"} <= seen["activation"]
    assert {"'gap'"} <= seen["head"] and {"'sgd'", "'adam'"} <= seen["optimizer"]
    assert len(seen["schedule"]) >= 3 and {"'none'", "'max'"} <= seen["pool"]


def test_every_registered_model_is_compared_somewhere():
    bases = {v["base"] for p in CONFIGS for v in yaml.safe_load(p.read_text())["variants"].values()}
    assert [m for m in list_models() if m not in bases] == []
