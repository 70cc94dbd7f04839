"""Model builder: every knob and preset, the plan's arithmetic cross-checked against the built model."""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch
from torch import nn

from cnnbench.models.build import build_model
from cnnbench.models.convnet import ConvNetKnobs
from cnnbench.models.geometry import layer_table
from cnnbench.models.registry import get_entry, get_model, get_plan, list_models

# (knobs, expected out shape of each stage for a 1x28x28 input, changed vs the cnn baseline)
KNOB_CASES = {
    "baseline": ({}, [(16, 14, 14), (32, 7, 7)]),
    "padding_valid": ({"padding": "valid"}, [(16, 13, 13), (32, 5, 5)]),
    "padding_int": ({"padding": 2}, [(16, 15, 15), (32, 8, 8)]),
    "stride2": ({"stride": 2}, [(16, 7, 7), (32, 2, 2)]),
    "stride_per_stage": ({"stride": [1, 2]}, [(16, 14, 14), (32, 3, 3)]),
    "no_pool": ({"pool": "none"}, [(16, 28, 28), (32, 28, 28)]),
    "avg_pool": ({"pool": "avg"}, [(16, 14, 14), (32, 7, 7)]),
    "pool_size3": ({"pool_size": 3}, [(16, 9, 9), (32, 3, 3)]),  # window and stride 3: 28 -> 9 -> 3
    "pool_ceil": ({"pool_ceil": True, "padding": "valid"}, [(16, 13, 13), (32, 6, 6)]),  # 11 -> 6, not 5
    "bottleneck": ({"block": "bottleneck"}, [(16, 14, 14), (32, 7, 7)]),
    "bottleneck_ratio8": ({"block": "bottleneck", "bottleneck_ratio": 8}, [(16, 14, 14), (32, 7, 7)]),
    "basic": ({"block": "basic"}, [(16, 14, 14), (32, 7, 7)]),
    "dwsep": ({"block": "dwsep"}, [(16, 14, 14), (32, 7, 7)]),
    "inception": ({"block": "inception"}, [(16, 14, 14), (32, 7, 7)]),
    "shortcut": ({"shortcut": True}, [(16, 14, 14), (32, 7, 7)]),
    "bn": ({"bn": True}, [(16, 14, 14), (32, 7, 7)]),
    "dropout": ({"dropout": 0.5}, [(16, 14, 14), (32, 7, 7)]),
    "width64": ({"width": 64}, [(64, 14, 14), (128, 7, 7)]),
    "kernel5": ({"kernel_size": 5}, [(16, 14, 14), (32, 7, 7)]),
    "dilation2": ({"dilation": 2}, [(16, 14, 14), (32, 7, 7)]),
    "groups2": ({"groups": 2}, [(16, 14, 14), (32, 7, 7)]),
    "gelu_gap": ({"activation": "gelu", "head": "gap"}, [(16, 14, 14), (32, 7, 7)]),
    "deeper": ({"blocks": [1, 2, 3], "widths": [8, 16, 32]}, [(8, 14, 14), (16, 7, 7), (32, 3, 3)]),
    "stem_conv": ({"stem": "conv"}, [(16, 14, 14), (32, 7, 7)]),
    "hidden": ({"hidden": [64, 32]}, [(16, 14, 14), (32, 7, 7)]),
}


def test_every_model_knob_is_turned_by_a_case():
    """A new ConvNetKnobs field fails here until a case above builds it and checks its shapes."""
    turned = {knob for knobs, _ in KNOB_CASES.values() for knob in knobs}
    assert [f.name for f in fields(ConvNetKnobs) if f.name not in turned] == []


def params_of(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_against_torch(plan, shape) -> None:
    """Every layer's output shape and every layer's parameters in the built model equal the table's."""
    rows = layer_table(plan, shape)
    model = build_model(plan, shape)
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=name: seen.__setitem__(n, tuple(o.shape[1:])))
             for name, m in model.named_modules() if name]
    y = model(torch.randn(2, *shape))
    for h in hooks:
        h.remove()
    for row in rows:
        if row.kind in ("add (shortcut)", "concat"):
            continue
        assert seen[row.name] == row.out_shape, row.name
        module = model.get_submodule(row.name)
        assert sum(p.numel() for p in module.parameters(recurse=False)) == row.params, row.name
    assert params_of(model) == sum(r.params for r in rows)
    y.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("case", KNOB_CASES)
def test_every_knob_builds_with_the_predicted_shapes_and_params(case):
    knobs, stage_shapes = KNOB_CASES[case]
    plan = get_plan("cnn", (1, 28, 28), 10, **knobs)
    rows = layer_table(plan, (1, 28, 28))
    stage_out = {}
    for r in rows:
        if r.name.startswith("features.stage"):
            stage_out[r.name.split(".")[1]] = r.out_shape
    assert list(stage_out.values()) == stage_shapes
    check_against_torch(plan, (1, 28, 28))


def test_knob_effects_follow_the_formulas():
    p = {name: sum(r.params for r in layer_table(get_plan("cnn", (1, 28, 28), 10, **k), (1, 28, 28)))
         for name, (k, _) in KNOB_CASES.items()}
    # baseline: conv 1->16 (3x3+bias) + conv 16->32 + fc 32*7*7 -> 10
    assert p["baseline"] == (9 + 1) * 16 + (9 * 16 + 1) * 32 + (32 * 49 + 1) * 10
    assert p["padding_valid"] == (9 + 1) * 16 + (9 * 16 + 1) * 32 + (32 * 25 + 1) * 10
    assert p["bn"] == p["baseline"] - 16 - 32 + 2 * (16 + 32)  # biases dropped, BN gamma/beta added
    assert p["dropout"] == p["baseline"]
    # groups=2 halves the second conv's weights (the first conv sees the 1-channel image: not grouped)
    assert p["groups2"] == p["baseline"] - 9 * 16 * 32 // 2
    # shortcut: 1x1 projections 1->16 and 16->32 (with bias)
    assert p["shortcut"] == p["baseline"] + (1 + 1) * 16 + (16 + 1) * 32
    # ratio 8: stage 1 reduces 16 -> 4 (1x1), convolves 4 -> 4 (3x3), expands 4 -> 32 (1x1)
    assert p["bottleneck_ratio8"] == p["baseline"] - (9 * 16 + 1) * 32 + (16 + 1) * 4 + (9 * 4 + 1) * 4 + (4 + 1) * 32
    assert p["pool_size3"] == p["baseline"] - 32 * 49 * 10 + 32 * 9 * 10
    assert p["pool_ceil"] == p["padding_valid"] - 32 * 25 * 10 + 32 * 36 * 10


def test_bottleneck_keeps_the_image_conv_plain_and_reduces_the_rest():
    rows = layer_table(get_plan("cnn", (1, 28, 28), 10, block="bottleneck"), (1, 28, 28))
    convs = [(r.name.split(".", 1)[1], r.kind.split(" s")[0], r.out_shape[0]) for r in rows if r.kind.startswith("conv")]
    assert convs == [("stage0.block0.conv1", "conv 3x3", 16), ("stage1.block0.conv1", "conv 1x1", 8),
                     ("stage1.block0.conv2", "conv 3x3", 8), ("stage1.block0.conv3", "conv 1x1", 32)]


def test_activation_after_max_pool_is_the_same_function():
    """The plan applies a monotone activation after max pooling; values and gradients are identical to
    the textbook conv -> act -> pool order."""
    torch.manual_seed(0)
    ours = get_model("cnn", (1, 28, 28), 10, bn=True)
    ref = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(32 * 49, 10))
    ref.load_state_dict(dict(zip(ref.state_dict(), ours.state_dict().values())))
    x = torch.randn(8, 1, 28, 28)
    a, b = ours(x), ref(x)
    assert torch.equal(a, b)
    a.square().sum().backward()
    b.square().sum().backward()
    for p, q in zip(ours.parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6)


def test_flatten_gives_the_same_result_in_both_layouts():
    torch.manual_seed(0)
    model = get_model("cnn")
    x = torch.randn(4, 1, 28, 28)
    expected = model(x)
    model_cl = model.to(memory_format=torch.channels_last)
    assert torch.allclose(model_cl(x.contiguous(memory_format=torch.channels_last)), expected, atol=1e-5)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_every_preset_builds_runs_and_matches_its_formula(name, shape):
    check_against_torch(get_plan(name, shape, 10), shape)


def test_resnet18_matches_torchvision():
    from torchvision.models import resnet18

    ours = get_model("resnet18", (3, 224, 224), 1000)
    assert params_of(ours) == params_of(resnet18()) == 11_689_512
    rows = layer_table(get_plan("resnet18", (3, 224, 224), 1000), (3, 224, 224))
    assert sum(r.macs for r in rows) == 1_814_073_344  # torchvision's published 1.81 GFLOPs (as MACs)


@pytest.mark.parametrize("name", list_models())
def test_presets_claiming_a_torchvision_model_match_it(name):
    """A preset that names a torchvision model (its `torchvision=` field, or a name torchvision uses)
    has torchvision's parameter count at 3x224x224 and 1000 classes, checked against torchvision itself
    (weights=None: nothing is downloaded). A description that mentions torchvision must make the claim
    checkable. (`vgg11` had a 512-512 head: 22,841,704 parameters against vgg11's 132,863,336.)"""
    import torchvision

    entry = get_entry(name)
    claim = entry.torchvision or (name if name in torchvision.models.list_models() else None)
    if claim is None:
        assert "torchvision" not in entry.doc, f"{name}: its description names torchvision; set torchvision="
        return
    ours = params_of(get_model(name, (3, 224, 224), 1000))
    assert ours == params_of(torchvision.models.get_model(claim, weights=None)), f"{name} vs torchvision {claim}"


def test_resnet18_is_the_checked_torchvision_claim():
    assert get_entry("resnet18").torchvision == "resnet18"
    assert params_of(get_model("resnet18", (3, 224, 224), 1000)) == 11_689_512


def test_renamed_vgg11_still_resolves_with_a_warning_once(monkeypatch, capsys):
    """`vgg11` became `vgg11_slim` (timm-style deprecation map): old configs keep working, warned once per
    process (a study printed it once per variant built on it), and `describe vgg11` works."""
    import warnings

    from cnnbench import describe
    from cnnbench.models import registry

    monkeypatch.setattr(registry, "_WARNED", set())
    with pytest.warns(FutureWarning, match="'vgg11' is deprecated and maps to 'vgg11_slim'.*4096-4096"):
        plan = get_plan("vgg11", (3, 32, 32), 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second time: silent
        assert get_plan("vgg11", (3, 32, 32), 10) == plan
        assert describe.describe("vgg11").startswith("model 'vgg11'")
    assert plan == get_plan("vgg11_slim", (3, 32, 32), 10)
    assert "vgg11" not in list_models() and "vgg11_slim" in list_models()
    assert params_of(get_model("vgg11_slim", (3, 224, 224), 1000)) == 22_841_704


def test_registry_errors_are_clear():
    from cnnbench.errors import ConfigError

    with pytest.raises(ConfigError, match="did you mean 'resnet18'"):
        get_plan("resnet81")
    with pytest.raises(ConfigError, match="has no knob"):
        get_plan("cnn", widht=3)
