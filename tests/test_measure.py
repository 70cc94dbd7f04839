"""Measurements: FLOPs against hand-computed values and an independent counter, latency, memory,
dead filters, gradient norms, and `verify`."""

from __future__ import annotations

import json
import math
import re
import time

import pytest
import torch
from torch import nn

from cnnbench.config import load_study
from cnnbench.measure import LayerNorms, PeakMemory, cost, count_flops, dead_filters, latency
from cnnbench.models.geometry import layer_table
from cnnbench.models.registry import get_model, get_plan, list_models
from cnnbench.seeds import run_seed
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


class Sleeps(nn.Module):
    """A module whose every call takes a known time (2 ms)."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        self.calls += 1
        time.sleep(0.002)
        return self.conv(x)


def test_latency_measures_the_time_of_one_call():
    model = Sleeps()
    lat = latency(model, (1, 28, 28), batch=4, device=torch.device("cpu"), repeats=5)
    assert 2.0 <= lat["median_ms"] < 4.0 and lat["iqr_ms"] >= 0 and lat["blocks"] == 5
    assert model.calls >= 5 * lat["calls_per_block"] and model.training  # mode restored


def test_peak_memory_sees_what_happens_inside_the_block():
    with PeakMemory(torch.device("cpu")) as mem:
        big = torch.ones(50 * 2**20)  # 200 MiB
        del big
    assert mem.kind == "process_rss" and 190 < mem.train_mb < 260


MEMORY_SCRIPT = """
import json, sys, numpy as np, torch
from cnnbench.config import load_study
from cnnbench.data import load_source, make_splits
from cnnbench.timing import training_memory
from cnnbench.train import warm_up
torch.set_num_threads(1)  # as the timing job runs it (execution.threads, 1 by default)
study = load_study(json.loads(sys.argv[1]))
images = load_source(study.data, 0)
val = make_splits(images.y, 2, 1, 0)[0]
train = np.setdiff1d(np.arange(len(images.y)), val)
warm_up(study.variants[sys.argv[2]], torch.device("cpu"))
print(json.dumps(training_memory(study.variants[sys.argv[2]], images, train, val, torch.device("cpu"))["train_mb"]))
"""


def test_training_memory_is_the_runs_own_and_repeatable():
    """As the timing job measures it on the CPU (a fresh process per variant, after a warm-up, one torch
    thread): the same variant measured in two processes agrees within 20%, and width64 needs far more.
    Six fresh processes read 55-61 MB for this baseline at 1 thread, but 56-70 MB at 2 threads (idle
    2-vCPU Xeon), and this test failed in CI at 15% with 2 threads (55.0 vs 63.7 MB). Within one process
    the figures drift by 1-21 MB with what ran before (measured on the default study), which is why the
    CPU timing job spawns a process per variant; this test once asserted the one-process figures and
    failed under load (70.4 vs 59.7 MB)."""
    import subprocess
    import sys

    study = tiny_study(data={"name": "mnist5k", "subset": 1000}, protocol={"folds": 2, "epochs": 1, "batch_size": 64},
                       variants={"baseline": {"base": "cnn"}, "width64": {"base": "baseline", "width": 64}})

    def measured(variant: str) -> float:
        out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, json.dumps(study), variant], capture_output=True,
                             text=True)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    first, wide, third = measured("baseline"), measured("width64"), measured("baseline")
    # repeatable within 25%: alone at 1 thread the spread was 11% (max/min); under CI's load (the Slurm
    # daemons, other test processes) two processes read 55.6 vs 66.9 MB (20.3%, which failed a 20% bound);
    # the width-64 net is still far apart
    assert abs(third - first) <= 0.25 * min(first, third), (first, third)
    assert wide > 1.5 * max(first, third) and first > 10


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


def test_per_image_view_counts_maps_blank_for_some_images_that_the_strict_count_misses():
    """A kernel that fires only on bright images: never 'dead', but its map is all zero on every dark
    image - what the course saw with 64 first-layer kernels."""
    torch.manual_seed(0)
    model = get_model("cnn")
    conv = model.get_submodule("features.stage0.block0.conv1")
    with torch.no_grad():
        conv.weight[5].fill_(1.0 / 9)  # the local mean of the image...
        conv.bias[5] = -0.5  # ...fires only where it exceeds 0.5
    x = torch.cat([torch.full((30, 1, 28, 28), 0.1), torch.full((10, 1, 28, 28), 0.9)])  # 30 dark, 10 bright
    layer = dead_filters(model, x)["features.stage0.act"]
    assert layer["dead"] == 0 or layer["silent_fraction"][5] < 1.0  # kernel 5 is not strictly dead...
    assert layer["silent_fraction"][5] == pytest.approx(0.75)  # ...but blank on the 30 dark images
    assert layer["silent_half"] >= 1 and 0 <= layer["silent_mean"] <= 1
    assert layer["zero_maps_probe"] >= 1  # the probe image (the first, dark) has a blank map for kernel 5
    assert len(layer["silent_fraction"]) == layer["total"] == 16


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


def test_layer_norms_leave_out_a_step_whose_gradients_overflowed():
    """fp16's scaler skips a step with inf gradients; its norms are not averaged in either."""
    model = get_model("cnn")
    norms = LayerNorms(model)
    model(torch.randn(8, 1, 28, 28)).square().mean().backward()
    norms.sample_gradients()
    first = [torch.linalg.vector_norm(w.grad).item() for w in norms.weights]
    model.head.fc.weight.grad[0, 0] = float("inf")
    norms.sample_gradients()
    assert list(norms.end_epoch()["grad_norm"].values()) == pytest.approx(first)
    model.head.fc.weight.grad[0, 0] = float("nan")
    norms.sample_gradients()
    assert all(math.isnan(v) for v in norms.end_epoch()["grad_norm"].values())  # no finite sample at all


def test_record_carries_cost_speed_memory_diagnostics_and_provenance(recorded):
    r = json.loads(recorded.read_text())
    assert r["cost"]["flops_forward"] == 2 * r["cost"]["macs_forward"] > 0 and "FlopCounterMode" in r["cost"]["flop_counter"]
    assert r["speed"]["under_load"] is True and r["speed"]["train_img_per_s"] > 0
    m = r["memory"]
    assert m["kind"] == "process_rss" and m["train_mb"] > 0 and m["train_mb"] == pytest.approx(m["peak_mb"] - m["start_mb"])
    assert r["run_seed"] == run_seed(0, 1, 0) and r["seed_offset"] == 0 and len(r["init_digest"]) == 16
    assert set(r["diagnostics"]["dead_filters"]) == {"features.stage0.act", "features.stage1.act"}
    assert 0 <= r["diagnostics"]["dead_fraction"] <= 1
    assert set(r["epochs"][0]["grad_norm"]) == set(r["epochs"][0]["weight_norm"])
    assert {"data_sha256", "split_sha256"} <= set(r["data"])
    assert {"python", "torch", "torchvision", "cnnbench", "device", "device_name", "cpu", "threads", "git_commit",
            "git_dirty"} <= set(r["env"])




def test_timing_job_measures_speed_with_spread(recorded):
    from cnnbench.timing import time_variant

    root = recorded.parents[2]
    spec = load_study(tiny_study(protocol={"folds": 2, "epochs": 2, "batch_size": 32})).variants["baseline"]
    t = time_variant(spec, data_path=root / "data.npz", splits_path=root / "splits.json", device="cpu", repeats=3)
    assert t["train_img_per_s"] > 0 and t["train_img_per_s_iqr"] >= 0 and t["blocks"] == 3
    steps_per_epoch = 120 // 32  # fold 0's training part of the 240 images the folds split
    assert t["epoch_time_s"] == pytest.approx(steps_per_epoch * 32 / t["train_img_per_s"], rel=0.5)
    assert 0 < t["latency_b1_ms"] < t["latency_bN_ms"] and t["latency_batch"] == 32
    assert t["window"][0] < t["window"][1] and t["spec_hash"] == spec.spec_hash
    assert t["train_mb"] > 0 and t["memory_kind"] == "process_rss"


@pytest.mark.parametrize("own_processes", [True, False], ids=["a-process-each (CPU)", "one-process (CUDA)"])
def test_one_timing_job_times_every_variant_back_to_back(recorded, own_processes):
    """The workflow's single timing job: records come out in the study's order, each as soon as it is made,
    in consecutive windows; the process set-up is paid once per variant on the CPU (RSS needs a fresh
    process) and once in all where the allocator measures memory (CUDA)."""
    import os

    from cnnbench.timing import time_study

    root = recorded.parents[2]
    study = load_study(tiny_study(protocol={"folds": 2, "epochs": 2, "batch_size": 32}))
    specs = [study.variants[v] for v in ("dropout", "baseline")]
    seen, lines = [], []
    records = time_study(specs, data_path=root / "data.npz", splits_path=root / "splits.json", device="cpu",
                         repeats=2, own_processes=own_processes, on_record=lambda r: seen.append(r["variant"]),
                         log=lines.append)
    assert seen == [r["variant"] for r in records] == ["dropout", "baseline"]
    assert [r["spec_hash"] for r in records] == [s.spec_hash for s in specs]
    assert records[0]["window"][1] <= records[1]["window"][0]
    assert all(r["train_img_per_s"] > 0 and r["train_mb"] > 0 and r["blocks"] == 2 for r in records)
    assert all(set(r["phases_s"]) == {"speed_and_latency", "memory"} for r in records)
    assert all(set(r["set_up_s"]) == {"start_up", "device", "data"} for r in records)
    assert [r["set_up_shared_by"] for r in records] == ([1, 1] if own_processes else [2, 2])
    processes = {r["process"] for r in records}
    here = {p for p in processes if p.startswith(f"{os.getpid()}@")}
    assert (len(processes), len(here)) == ((2, 0) if own_processes else (1, 1)), processes  # fresh ones, or this
    assert lines[0].startswith("[1/2] dropout measured alone: ") and "s left" in lines[-1] and lines[1].startswith("[2/2]")
    so_far, left = map(int, re.search(r"(\d+) s so far, about (\d+) s left", lines[0]).groups())
    if own_processes:  # each variant pays its process's start-up: half of two done, so as long again
        assert abs(left - so_far) <= 1, lines[0]


def test_compiled_variants_timed_in_one_process_each_compile_afresh(recorded, monkeypatch):
    """Variants share their network class's forward code: past dynamo's recompile limit (8) the rest would
    quietly run eager, so the one-process (CUDA) path resets dynamo before each compiled variant."""
    import torch._dynamo

    from cnnbench import timing

    root = recorded.parents[2]
    study = load_study(tiny_study(execution={"device": "cpu", "threads": 1, "compile": True}))
    resets = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(1))
    speed = {"train_img_per_s": 1.0, "train_img_per_s_iqr": 0.0, "epoch_time_s": 1.0, "latency_b1_ms": 1.0}
    monkeypatch.setattr(timing, "training_speed", lambda *a: speed)  # no compiling here: only the resets
    monkeypatch.setattr(timing, "training_memory", lambda *a: {"train_mb": 1.0, "kind": "process_rss"})
    specs = [study.variants[v] for v in ("baseline", "batchnorm", "dropout")]
    timing.time_study(specs, data_path=root / "data.npz", splits_path=root / "splits.json", device="cpu",
                      own_processes=False, log=lambda m: None)
    assert len(resets) == 3


def test_a_timing_process_that_dies_is_one_error_naming_the_variant(recorded, monkeypatch):
    from cnnbench import timing
    from cnnbench.errors import CnnbenchError

    root = recorded.parents[2]
    spec = load_study(tiny_study()).variants["baseline"]

    class Dead:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def submit(self, *a, **k):
            from concurrent.futures.process import BrokenProcessPool

            raise BrokenProcessPool("killed")

    monkeypatch.setattr("concurrent.futures.ProcessPoolExecutor", Dead)
    with pytest.raises(CnnbenchError, match=r"timing 'baseline': its measuring process died"):
        timing.time_study([spec], data_path=root / "data.npz", splits_path=root / "splits.json", device="cpu")
