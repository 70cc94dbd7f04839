"""Measurements: FLOPs against hand-computed values and an independent counter, latency, memory,
dead filters, gradient norms, and `verify`."""

from __future__ import annotations

import json
import time

import pytest
import torch
from torch import nn

from cnnbench import train as train_module
from cnnbench.config import load_study
from cnnbench.data import load_source, make_splits, save_cache, save_splits
from cnnbench.measure import LayerNorms, PeakMemory, count_flops, cost, dead_filters, latency
from cnnbench.models.geometry import layer_table
from cnnbench.models.registry import get_model, get_plan, list_models
from cnnbench.runner import train_variant
from cnnbench.verify import verify
from tests.helpers import tiny_study


@pytest.mark.parametrize("groups", [1, 2, 64])
def test_training_step_of_a_grouped_conv_is_three_forward_passes(groups):
    """Forward, input gradient and weight gradient each cost one forward pass, whatever the groups
    (torch's own counter overcounted the weight gradient of grouped convs before pytorch#183405)."""
    conv = nn.Sequential(nn.Conv2d(64, 64, 1), nn.Conv2d(64, 64, 3, padding=1, groups=groups, bias=False))
    forward, step = count_flops(conv, (64, 14, 14))
    grouped = 2 * 64 * 64 // groups * 9 * 14 * 14
    assert forward == 2 * 64 * 64 * 14 * 14 + grouped
    assert step == 2 * (2 * 64 * 64 * 14 * 14) + 3 * grouped  # the first conv needs no input gradient


def test_flops_of_the_textbook_layers():
    conv = nn.Conv2d(192, 32, 5, padding=2, bias=False)
    forward, step = count_flops(conv, (192, 28, 28))
    assert forward == 2 * 120_422_400  # 2 FLOPs per multiply-accumulate
    assert step == forward + 2 * 120_422_400  # + the weight gradient (the input needs none)
    bottleneck = nn.Sequential(nn.Conv2d(192, 16, 1, bias=False), nn.Conv2d(16, 32, 5, padding=2, bias=False))
    assert count_flops(bottleneck, (192, 28, 28))[0] == 2 * 12_443_648


@pytest.mark.parametrize("name", list_models())
def test_flop_counter_agrees_with_the_plan_formulas(name):
    spec = load_study(tiny_study(data={"name": "mnist5k"}, variants={"baseline": {"base": name}})).variants["baseline"]
    c = cost(spec)
    assert c["flops_forward"] == 2 * c["macs_forward"]
    assert 2 * c["flops_forward"] <= c["flops_train_step"] <= 3 * c["flops_forward"]
    assert c["params"] == sum(r.params for r in spec.layer_table())


@pytest.mark.parametrize("name", ["cnn", "resnet20", "mobilenet"])
def test_macs_agree_with_ptflops(name):
    """ptflops (aten backend) counts each bias addition as a MAC; FlopCounterMode and our formulas do
    not. With that one convention accounted for, the counts agree exactly."""
    from ptflops import get_model_complexity_info

    plan = get_plan(name, (1, 28, 28), 10)
    rows = layer_table(plan, (1, 28, 28))
    ours = sum(r.macs for r in rows)
    bias_adds = 0
    for r in rows:
        module = get_model(name).get_submodule(r.name) if r.kind.startswith(("conv", "linear")) else None
        if module is not None and module.bias is not None:
            bias_adds += int(torch.tensor(r.out_shape).prod())
    theirs, params = get_model_complexity_info(get_model(name), (1, 28, 28), as_strings=False, backend="aten",
                                               print_per_layer_stat=False, verbose=False)
    assert theirs == ours + bias_adds
    assert params == sum(r.params for r in rows)


class SlowFirstCall(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        self.calls += 1
        if self.calls == 1:
            time.sleep(0.3)  # what a first call's set-up can cost
        return self.conv(x)


def test_latency_is_positive_and_excludes_warm_up():
    model = SlowFirstCall()
    lat = latency(model, (1, 28, 28), batch=4, device=torch.device("cpu"), repeats=5)
    assert 0 < lat["median_ms"] < 30 and lat["iqr_ms"] >= 0 and lat["blocks"] == 5
    assert model.calls > 5 and model.training  # mode restored


def test_peak_memory_sees_what_happens_inside_the_block():
    with PeakMemory(torch.device("cpu")) as mem:
        big = torch.ones(50 * 2**20)  # 200 MiB
        del big
    assert mem.kind == "process_peak_rss" and mem.peak_mb - mem.start_mb > 150


def test_dead_filter_detection_finds_a_filter_forced_dead():
    torch.manual_seed(0)
    model = get_model("cnn")
    x = torch.randn(64, 1, 28, 28)
    before = dead_filters(model, x)["features.stage0.act"]
    conv = model.get_submodule("features.stage0.block0.conv1")
    with torch.no_grad():
        conv.weight[3].zero_()
        conv.bias[3] = -1.0  # ReLU(-1) = 0 everywhere, for every image
    after = dead_filters(model, x)
    assert after["features.stage0.act"]["total"] == 16
    assert after["features.stage0.act"]["dead"] == before["dead"] + 1
    assert set(after) == {"features.stage0.act", "features.stage1.act"}


def test_layer_norms_sample_gradients_per_layer():
    model = get_model("cnn")
    norms = LayerNorms(model)
    for _ in range(3):
        model(torch.randn(8, 1, 28, 28)).square().mean().backward()
        norms.sample_gradients()
        model.zero_grad()
    out = norms.end_epoch()
    layers = ["features.stage0.block0.conv1", "features.stage1.block0.conv1", "head.fc"]
    assert list(out["grad_norm"]) == layers and all(v > 0 for v in out["grad_norm"].values())
    assert all(v > 0 for v in out["weight_norm"].values())


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A real run record of the tiny study, laid out as the workflow lays it out."""
    root = tmp_path_factory.mktemp("results") / "tiny"
    study = load_study(tiny_study(protocol={"folds": 2, "epochs": 2, "batch_size": 32}))
    images = load_source(study.data, 0)
    save_cache(images, root / "data.npz")
    save_splits(root / "splits.json", make_splits(images.y, 2, 1, 0), images.y, 2, 1, 0)
    train_variant(study.variants["batchnorm"], data_path=root / "data.npz", splits_path=root / "splits.json",
                  folds=[1], seeds=[0], out_dir=root / "runs" / "batchnorm", weights_path=None,
                  resume_root=root / ".resume", log=lambda m: None)
    return root / "runs" / "batchnorm" / "fold1-seed0.json"


def test_record_carries_cost_speed_memory_diagnostics_and_provenance(recorded):
    r = json.loads(recorded.read_text())
    assert r["cost"]["flops_forward"] == 2 * r["cost"]["macs_forward"] > 0 and "FlopCounterMode" in r["cost"]["flop_counter"]
    s = r["speed"]
    assert s["latency_b1_ms"] > 0 and s["latency_bN_ms"] > 0 and s["latency_batch"] == 32
    assert r["memory"]["kind"] == "process_peak_rss" and r["memory"]["peak_mb"] >= r["memory"]["start_mb"] > 0
    assert set(r["diagnostics"]["dead_filters"]) == {"features.stage0.act", "features.stage1.act"}
    assert 0 <= r["diagnostics"]["dead_fraction"] <= 1
    assert set(r["epochs"][0]["grad_norm"]) == set(r["epochs"][0]["weight_norm"])
    assert {"data_sha256", "split_sha256"} <= set(r["data"])
    assert {"python", "torch", "torchvision", "cnnbench", "device", "device_name", "cpu", "threads", "git_commit",
            "git_dirty"} <= set(r["env"])


def test_verify_matches_an_unchanged_run(recorded):
    verdict = verify(recorded)
    assert verdict.match, str(verdict)
    assert "MATCH" in str(verdict) and "identical" in str(verdict)


def test_verify_fails_when_the_seed_changes(recorded, tmp_path):
    record = json.loads(recorded.read_text())
    record["seed"] = 1
    tampered = recorded.parent / "tampered.json"
    tampered.write_text(json.dumps(record))
    try:
        verdict = verify(tampered)
    finally:
        tampered.unlink()
    assert not verdict.match and "MISMATCH" in str(verdict)


def test_verify_fails_when_the_code_changes(recorded, monkeypatch):
    real = train_module.lr_factor
    monkeypatch.setattr(train_module, "lr_factor", lambda kind, step, total: 0.9 * real(kind, step, total))
    verdict = verify(recorded)
    assert not verdict.match and "epoch 1" in str(verdict)


def test_verify_refuses_other_inputs(recorded, tmp_path):
    from cnnbench.errors import CnnbenchError

    other = tmp_path / "splits.json"
    other.write_text("{}")
    with pytest.raises(CnnbenchError, match="not the file this run used"):
        verify(recorded, splits=other)
