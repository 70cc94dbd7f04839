"""Precision, compile and determinism settings: config -> spec identity -> the training step -> records.

CUDA-only behaviour (TF32, bf16 support, CUDA events) is in tests/test_cuda.py, which skips without a GPU;
the CPU's bf16/fp16 autocast path runs here.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from cnnbench.config import load_study
from cnnbench.data import load_fold, load_source, make_splits, save_cache, save_splits
from cnnbench.errors import CnnbenchError, ConfigError
from cnnbench.numerics import Numerics, resolve_precision
from cnnbench.results import check_shared_precision
from cnnbench.runtime import set_determinism
from cnnbench.train import fit
from tests.helpers import tiny_study

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("numerics")
    study = load_study(tiny_study(protocol={"folds": 2, "epochs": 2, "batch_size": 32}))
    images = load_source(study.data, 0)
    save_cache(images, root / "data.npz")
    save_splits(root / "splits.json", make_splits(images.y, 2, 1, 0), images.y, 2, 1, 0)
    return images, *load_fold(root / "splits.json", 0, images.y)


def _spec(variant="batchnorm", **execution):
    return load_study(tiny_study(protocol={"folds": 2, "epochs": 2, "batch_size": 32},
                                 execution={"device": "cpu", "threads": 1, **execution})).variants[variant]


def test_auto_resolves_to_fp32_on_the_cpu_and_tf32_is_refused_there():
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"
    with pytest.raises(ConfigError, match="tf32 is a mode of NVIDIA GPUs"):
        resolve_precision("tf32", CPU)


def test_numerics_are_part_of_the_identity_only_when_set():
    default, explicit_default = _spec(), _spec(precision="auto", compile=False, deterministic=False)
    assert default.spec_hash == explicit_default.spec_hash  # old studies keep their finished runs
    assert "numerics" not in default.identity()
    bf16 = _spec(precision="bf16")
    assert bf16.spec_hash != default.spec_hash and bf16.identity()["numerics"] == {"precision": "bf16"}
    assert _spec(deterministic=True).spec_hash != default.spec_hash
    assert _spec(compile="max-autotune").spec_hash != default.spec_hash


@pytest.mark.parametrize("bad, field", [({"precision": "fp8"}, "precision"), ({"compile": "fast"}, "compile"),
                                        ({"deterministic": "yes"}, "deterministic"), ({"jobs_per_gpu": 0}, "jobs_per_gpu"),
                                        ({"jobs_per_gpu": 2.5}, "jobs_per_gpu")])
def test_bad_execution_settings_are_refused_naming_the_field(bad, field):
    with pytest.raises(ConfigError, match=f"execution.{field}|{field}"):
        load_study(tiny_study(execution=bad))


def test_bf16_autocast_trains_on_the_cpu_keeping_parameters_statistics_and_loss_in_fp32(prepared):
    images, train_idx, val_idx = prepared
    set_determinism(CPU, 1)
    spec = _spec(precision="bf16")
    seen = {}

    result = fit(spec, images, train_idx, val_idx, seed=3, device=CPU)
    assert result.numerics == {"precision": "bf16", "precision_setting": "bf16", "compile": "off",
                               "deterministic": False, "compile_time_s": None}
    assert result.epochs[-1]["val_acc"] > 0.5  # it learns (chance 0.1)
    model = result.model
    assert all(p.dtype == torch.float32 for p in model.parameters())
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and all(m.running_mean.dtype == torch.float32 for m in bn)
    # the forward pass really ran in bf16: a conv's output under the run's autocast is bf16
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: seen.update(dtype=o.dtype))
    with Numerics.for_run(spec.numerics, CPU).autocast():
        model(torch.zeros(2, *spec.input_shape))
    assert seen["dtype"] == torch.bfloat16
    # and it is not the fp32 run under another name
    fp32 = fit(_spec(), images, train_idx, val_idx, seed=3, device=CPU)
    assert fp32.numerics["precision"] == "fp32"
    assert fp32.epochs[-1]["train_loss"] != result.epochs[-1]["train_loss"]
    # reproducible like any CPU run
    again = fit(spec, images, train_idx, val_idx, seed=3, device=CPU)
    assert [e["train_loss"] for e in again.epochs] == [e["train_loss"] for e in result.epochs]
    assert np.array_equal(again.val_pred, result.val_pred)


def test_fp16_on_the_cpu_uses_a_gradient_scaler(prepared):
    images, train_idx, val_idx = prepared
    num = Numerics.for_run({"precision": "fp16"}, CPU)
    assert num.scaler().is_enabled()
    assert not Numerics.for_run({"precision": "bf16"}, CPU).scaler().is_enabled()
    result = fit(_spec(precision="fp16"), images, train_idx, val_idx, seed=3, device=CPU)
    assert result.numerics["precision"] == "fp16" and np.isfinite(result.epochs[-1]["train_loss"])


def test_deterministic_mode_switches_torch_to_deterministic_algorithms():
    try:
        set_determinism(CPU, 1, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_deterministic_cuda_refuses_when_cublas_has_already_started(monkeypatch):
    """torch reads CUBLAS_WORKSPACE_CONFIG once, at the first cuBLAS call: set after CUDA work it may come
    too late, so set_deterministic says so plainly instead of letting the first matmul fail in torch."""
    from cnnbench.numerics import set_deterministic

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(RuntimeError, match="CUBLAS_WORKSPACE_CONFIG=:4096:8 before the process's first CUDA work"):
        set_deterministic(torch.device("cuda"))
    assert not torch.are_deterministic_algorithms_enabled()
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)  # a fresh process: it sets the variable
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        set_deterministic(torch.device("cuda"))
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


def _record(variant, precision):
    return {"variant": variant, "numerics": {"precision": precision}}


def test_collect_refuses_a_comparison_that_mixes_precisions():
    same = [_record("a", "bf16"), _record("b", "bf16")]
    check_shared_precision(same, {"b": "a"})
    with pytest.raises(CnnbenchError, match="'b' ran in fp32 but its comparison 'a' ran in bf16"):
        check_shared_precision([_record("a", "bf16"), _record("b", "fp32")], {"b": "a"})
    with pytest.raises(CnnbenchError, match="runs used different precisions"):
        check_shared_precision([_record("a", "bf16"), _record("a", "fp32")], {})
    check_shared_precision([_record("a", "bf16"), _record("c", "fp32")], {"b": "a"})  # not compared: fine


@pytest.mark.slow
def test_compile_time_is_recorded_apart_and_kept_out_of_the_run(prepared):
    """torch.compile on the CPU (inductor, ~30 s here): the compile happens in a throwaway warm-up whose time
    is recorded, the run itself reuses the compiled code, and it learns what the eager run learns."""
    images, train_idx, val_idx = prepared
    set_determinism(CPU, 1)
    compiled = fit(_spec(compile=True), images, train_idx, val_idx, seed=3, device=CPU)
    eager = fit(_spec(), images, train_idx, val_idx, seed=3, device=CPU)
    assert compiled.numerics["compile"] == "default"
    assert compiled.numerics["compile_time_s"] > 1.0  # tracing and code generation took real time...
    assert compiled.train_time_s < compiled.numerics["compile_time_s"]  # ...that the training time does not hold
    assert compiled.wall_s < compiled.numerics["compile_time_s"] + 60
    assert abs(compiled.epochs[-1]["val_acc"] - eager.epochs[-1]["val_acc"]) < 0.05
