"""The translation probe: convolutions are shift-equivariant, stride and pooling break exactness, a
global-average-pooling head is shift-invariant and a flatten head is not; accuracy on shifted images; the
probe's record entry, its tidy table and its report section."""

from __future__ import annotations

import json
from collections import OrderedDict
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cnnbench.images import Images
from cnnbench.models.build import ConvNet, Flatten, GlobalAvgPool
from cnnbench.models.registry import get_model
from cnnbench.probe import (
    TABLE_COLUMNS,
    black_fill,
    default_max_shift,
    equivariance_errors,
    head_invariance,
    probe,
    probe_table,
    shift_accuracy,
    shift_images,
    stage_geometry,
)

CPU = torch.device("cpu")
SIDE = 16


def conv_net(stride: int = 1, pool: bool = False, head: str = "gap", padding_mode: str = "circular") -> ConvNet:
    """Two 3x3 conv stages on 16x16 single-channel images; stage0 may have stride 2 or a 2x2 max pool."""
    torch.manual_seed(0)
    stage0 = [nn.Conv2d(1, 8, 3, stride, 1, padding_mode=padding_mode), nn.ReLU()] + ([nn.MaxPool2d(2)] if pool else [])
    features = nn.Sequential(OrderedDict(
        stage0=nn.Sequential(*stage0),
        stage1=nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, padding_mode=padding_mode), nn.ReLU())))
    side = SIDE // (2 if stride > 1 or pool else 1)
    head_layers = [GlobalAvgPool(), nn.Linear(8, 10)] if head == "gap" else [Flatten(), nn.Linear(8 * side * side, 10)]
    return ConvNet(features, nn.Sequential(*head_layers)).eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(16, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(1))


# --- the science -----------------------------------------------------------------------------------------

def test_stride1_convolutions_with_circular_padding_are_equivariant(x):
    errors = equivariance_errors(conv_net(), x, [1, 2, 3, 5], mode="circular")
    assert list(errors) == ["stage0", "stage1"]
    for stage in errors.values():
        assert stage["stride"] == 1
        assert all(e < 1e-5 for e in stage["error"].values()), stage
    # the same stack with zero padding is exactly equivariant only away from the border: the whole map
    # under a circular shift is not, its interior under a black-filled shift is
    zero_padded = conv_net(padding_mode="zeros")
    whole = equivariance_errors(zero_padded, x, [1, 3], mode="circular")
    interior = equivariance_errors(zero_padded, x, [1, 3], mode="zeros")
    assert all(e > 0.05 for e in whole["stage1"]["error"].values())
    assert all(e < 1e-5 for stage in interior.values() for e in stage["error"].values())


@pytest.mark.parametrize("kind", ["stride", "pool"])
@pytest.mark.parametrize("mode", ["circular", "zeros"])
def test_stride_and_pooling_break_exact_equivariance(x, kind, mode):
    net = conv_net(stride=2) if kind == "stride" else conv_net(pool=True)
    errors = equivariance_errors(net, x, [1, 2, 3, 4], mode=mode)
    for stage in errors.values():
        e = stage["error"]
        assert stage["stride"] == 2
        assert e[1] > 0.1 and e[3] > 0.1  # half a map pixel: no shift of the map matches
        assert e[2] < 1e-5 and e[4] < 1e-5  # multiples of the stride: exact again


def test_gap_head_is_invariant_to_circular_shifts_and_flatten_head_is_not(x):
    gap = conv_net(head="gap")
    assert all(e < 1e-5 for e in head_invariance(gap, x, [1, 2, 5]).values())
    with torch.inference_mode():
        moved = gap(torch.roll(x, shifts=(3, -2), dims=(2, 3)))
        assert (moved - gap(x)).abs().max() < 1e-5
    assert all(e > 0.1 for e in head_invariance(conv_net(head="flatten"), x, [1, 2, 5]).values())
    # with pooling, GAP is invariant only to shifts by multiples of the total stride (2)
    pooled = head_invariance(conv_net(pool=True), x, [1, 2, 4])
    assert pooled[2] < 1e-5 and pooled[4] < 1e-5 and pooled[1] > 1e-3


@pytest.mark.parametrize("knobs", [
    {}, {"block": "basic", "shortcut": True, "stride": 2, "pool": "none", "bn": True}, {"stem": "imagenet"},
    {"padding": "valid"}, {"pool_ceil": True, "widths": [8, 8, 8]}, {"block": "dwsep", "pool": "avg"},
    {"dilation": 2},
], ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "cnn")
def test_interior_of_zero_padded_cnnbench_models_is_exactly_equivariant_at_multiples_of_the_stride(knobs):
    """The geometry walk (stride, size, the positions free of padding) is right for the network family:
    where it finds an interior, shifting the input by the stride shifts the map by exactly one pixel."""
    torch.manual_seed(0)
    model = get_model("cnn", (1, 28, 28), 10, **knobs).eval()
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    geometry = stage_geometry(model.features, (28, 28))
    errors = equivariance_errors(model, x, [1, 2, 4, 8], mode="zeros")  # raises if the sizes disagree
    first = next(iter(errors.values()))
    assert first["error"][first["stride"]] is not None  # the first stage always has an interior here
    for name, stage in errors.items():
        r = stage["stride"]
        assert r == geometry[name][0].stride and r in (1, 2, 4, 8, 16)
        for s, e in stage["error"].items():
            if e is not None and s % r == 0:
                assert e < 1e-5, (name, s, e)
            elif e is not None:
                assert e > 0.01, (name, s, e)


# --- shifting ---------------------------------------------------------------------------------------------

def test_shift_images_moves_content_and_fills_with_the_black_pixel_value():
    raw = torch.randint(50, 256, (3, 2, 6, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images = Images(raw, *Images.stats(raw))
    x = images[0:3]
    black = black_fill(images)
    assert black.shape == (1, 2, 1, 1)
    assert torch.allclose(black, Images(torch.zeros(1, 2, 1, 1, dtype=torch.uint8), images.mean, images.std)[0:1])
    out = shift_images(x, 2, -1, "zeros", black)  # 2 right, 1 up
    assert out.shape == x.shape and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out[:, :, 0:5, 2:7], x[:, :, 1:6, 0:5])
    entered = torch.ones(6, 7, dtype=torch.bool)
    entered[0:5, 2:7] = False
    assert torch.equal(out[:, :, entered], black.expand(3, 2, 1, 1)[..., 0].expand(3, 2, int(entered.sum())))
    assert (shift_images(x, 2, -1)[:, :, entered] == 0).all()  # default fill 0: the mean, not black
    assert torch.equal(shift_images(x, -3, 2, "circular"), torch.roll(x, shifts=(2, -3), dims=(2, 3)))
    assert torch.allclose(shift_images(x, 7, 0, "zeros", black), black.expand_as(x))  # all out of frame


class BlackDetector(nn.Module):
    """Class 0 if any pixel is black (the normalised value of intensity 0), else class 1."""

    def __init__(self, black: torch.Tensor):
        super().__init__()
        self.black = black

    def forward(self, x):
        has_black = (x - self.black).abs().lt(1e-5).flatten(1).any(1).float()
        return torch.stack([has_black, 1 - has_black], dim=1)


def test_shift_accuracy_fills_normalised_images_with_black_by_default():
    raw = torch.randint(100, 200, (40, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images = Images(raw, *Images.stats(raw))
    y = torch.zeros(40, dtype=torch.long)  # "has a black pixel"
    model = BlackDetector(black_fill(images))
    assert shift_accuracy(model, images, y, [0, 1, 3]) == {0: 0.0, 1: 1.0, 3: 1.0}
    assert shift_accuracy(model, images, y, [1], fill=0.0) == {1: 0.0}  # 0 is grey here
    assert default_max_shift(28) == 7 and default_max_shift(32) == 8 and default_max_shift(8) == 2


# --- a trained model --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained():
    """The tiny study's cnn trained for 4 epochs on 200 digits (8x8), with its 100 validation images."""
    from cnnbench.config import load_study
    from cnnbench.data import load_source
    from cnnbench.runtime import set_determinism
    from cnnbench.train import fit
    from tests.helpers import tiny_study

    set_determinism(CPU, 1)
    study = load_study(tiny_study(protocol={"folds": 2, "epochs": 4, "batch_size": 32}))
    images = load_source(study.data, 0)
    train_idx, val_idx = np.arange(200), np.arange(200, 300)
    result = fit(study.variants["baseline"], images, train_idx, val_idx, seed=0, device=CPU)
    x_all = torch.from_numpy(images.x)
    mean, std = Images.stats(x_all[torch.from_numpy(train_idx)])
    x_val, y_val = Images(x_all[torch.from_numpy(val_idx)], mean, std), torch.from_numpy(images.y[val_idx])
    return result, x_val, y_val


def test_accuracy_at_shift_0_is_the_plain_accuracy_and_falls_with_the_shift(trained):
    from cnnbench.train import evaluate

    result, x_val, y_val = trained
    plain = evaluate(result.model, x_val, y_val)[1]
    assert plain == result.epochs[-1]["val_acc"] and plain > 0.3  # chance: 0.1
    acc = shift_accuracy(result.model, x_val, y_val, range(default_max_shift(8) + 1))
    assert acc[0] == pytest.approx(plain, abs=1e-6)  # the same predictions (evaluate's mean is float32)
    assert acc[1] < acc[0] - 0.1 and acc[2] < acc[0] - 0.1


def test_probe_is_small_json_and_consistent(trained):
    result, x_val, y_val = trained
    p = probe(result.model, x_val, y_val)
    text = json.dumps(p, allow_nan=False)  # strict JSON, as run records are written
    assert len(text) < 2000
    assert {"max_shift", "shifts", "accuracy", "equivariance_shifts", "equivariance", "head_invariance",
            "n_images", "n_probe_images", "time_s"} == set(p)
    assert p["max_shift"] == 2 and p["shifts"] == [0, 1, 2] and len(p["accuracy"]) == 3
    assert p["accuracy"][0] == pytest.approx(result.epochs[-1]["val_acc"], abs=1e-6)
    assert p["equivariance_shifts"] == [1, 2, 4]  # 1 and the strides of the two stages (pooling: 2, 4)
    assert list(p["equivariance"]) == ["stage0", "stage1"]
    stage0 = p["equivariance"]["stage0"]
    assert stage0["stride"] == 2 and stage0["error"][1] < 1e-5 and stage0["error"][0] > 0.1
    assert p["equivariance"]["stage1"]["error"] == [None, None, None]  # 8x8: its receptive field is the image
    assert all(e is not None for stage in p["equivariance"].values() for e in stage["error_circular"])
    assert len(p["head_invariance"]) == 3 and min(p["head_invariance"]) > 0.05  # a flatten head
    assert p["n_images"] == 100 and json.loads(text) == p


# --- the table and the report section ---------------------------------------------------------------------

def fake_probe(acc, head=(0.5, 0.6)) -> dict:
    return {"max_shift": 2, "shifts": [0, 1, 2], "accuracy": list(acc), "equivariance_shifts": [1, 2],
            "equivariance": {"stage0": {"stride": 2, "error": [0.6, 0.0], "error_circular": [0.6, 0.1]},
                             "stage1": {"stride": 4, "error": [None, None], "error_circular": [0.5, 0.4]}},
            "head_invariance": list(head), "n_images": 10, "n_probe_images": 10, "time_s": 0.01}


def record(variant, fold, acc, **kw) -> dict:
    return {"study": "s", "variant": variant, "fold": fold, "seed": 0, "spec_hash": f"h-{variant}",
            "probe": fake_probe(acc, **kw)}


def test_probe_table_is_tidy_and_skips_records_without_a_probe():
    records = [record("base", 0, [0.9, 0.5, 0.2]), {"study": "s", "variant": "old", "fold": 0, "seed": 0,
                                                  "spec_hash": "x"}]
    t = probe_table(records)
    assert list(t.columns) == TABLE_COLUMNS and set(t.variant) == {"base"}
    assert t.groupby("kind").size().to_dict() == {"accuracy": 3, "equivariance": 4, "equivariance_circular": 4,
                                                  "head": 2, "stride": 2}
    acc = t[t.kind == "accuracy"]
    assert acc["shift"].tolist() == [0, 1, 2] and acc["value"].tolist() == [0.9, 0.5, 0.2]
    eq = t[(t.kind == "equivariance") & (t.key == "stage1")]
    assert eq["value"].isna().all() and t["value"].dtype == np.float64
    assert t.loc[(t.kind == "stride"), "value"].tolist() == [2.0, 4.0]
    empty = probe_table(records[1:])
    assert empty.empty and list(empty.columns) == TABLE_COLUMNS


def fake_ctx(table: pd.DataFrame):
    runs = pd.DataFrame({"variant": ["base", "base", "gap", "gap"], "fold": [0, 1, 0, 1], "seed": 0,
                         "status": ["ok", "ok", "ok", "diverged"], "val_acc": [0.9, 0.92, 0.8, 0.1]})
    return SimpleNamespace(table=lambda name: table, runs=runs, featured=["base", "gap"], variants=["base", "gap"],
                           images=SimpleNamespace(y=np.arange(100) % 10),
                           baseline="base", featured_note=lambda what: "",
                           specs={"base": SimpleNamespace(model={"head": "flatten"}),
                                  "gap": SimpleNamespace(model={"head": "gap"})})


def test_translation_section_shows_curves_and_errors_and_skips_without_probes():
    from cnnbench.report.invariance import translation

    records = [record("base", 0, [0.9, 0.5, 0.2]), record("base", 1, [0.8, 0.4, 0.2]),
               record("gap", 0, [0.9, 0.85, 0.8], head=(1e-7, 1e-7)), record("gap", 1, [0.1, 0.1, 0.1])]
    section = translation(fake_ctx(probe_table(records)))
    assert section.id == "translation" and section.html.count("<img") == 1
    assert "global avg pool" in section.html and "flatten" in section.html
    assert "0.60 &middot; 0.60" in section.html and "n/a &middot; 0.50" in section.html  # stage1 at s=1
    assert 'data-v="1e-07"' in section.html  # the GAP variant's logits barely move
    assert "Invariance comes from the head" in section.html
    assert translation(fake_ctx(probe_table([]))) is None
