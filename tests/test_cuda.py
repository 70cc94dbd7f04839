"""The CUDA path on a real GPU: precision, compile, determinism, slots, CUDA-event timing, allocator memory.

Marked `cuda`; every test skips, saying why, on a machine without a CUDA device (CI never needs one).
`cnnbench gpu-check` runs them on a GPU node (`pytest -m cuda`).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from cnnbench.config import load_study
from cnnbench.data import load_fold, load_source, make_splits, save_cache, save_splits
from cnnbench.numerics import Numerics, resolve_precision
from cnnbench.runtime import set_determinism
from cnnbench.train import fit
from tests.helpers import tiny_study

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch")]
GPU = torch.device("cuda", 0) if torch.cuda.is_available() else None


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda")
    study = load_study(tiny_study(protocol={"folds": 2, "epochs": 3, "batch_size": 32}))
    images = load_source(study.data, 0)
    save_cache(images, root / "data.npz")
    save_splits(root / "splits.json", make_splits(images.y, 2, 1, 0), images.y, 2, 1, 0)
    return root, images, *load_fold(root / "splits.json", 0, images.y)


def _spec(variant="batchnorm", **execution):
    return load_study(tiny_study(protocol={"folds": 2, "epochs": 3, "batch_size": 32},
                                 execution={"device": "cuda", **execution})).variants[variant]


def test_auto_precision_is_bf16_where_the_gpu_has_it():
    assert resolve_precision("auto", GPU) == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")


def test_fp32_turns_tf32_off_and_tf32_turns_it_on():
    Numerics.for_run({"precision": "tf32"}, GPU)
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    Numerics.for_run({"precision": "fp32"}, GPU)
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32


@pytest.mark.parametrize("precision", ["auto", "fp16", "fp32"])
def test_training_on_the_gpu_learns_at_each_precision(prepared, precision):
    _, images, train_idx, val_idx = prepared
    set_determinism(GPU, 1)
    result = fit(_spec(precision=precision), images, train_idx, val_idx, seed=0, device=GPU)
    assert result.epochs[-1]["val_acc"] > 0.5 and np.isfinite(result.epochs[-1]["train_loss"])
    assert result.numerics["precision"] == resolve_precision(precision, GPU)
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    assert result.memory["kind"] == "cuda_allocator" and result.memory["train_mb"] > 0


def test_deterministic_runs_are_bit_identical_on_the_gpu(prepared):
    _, images, train_idx, val_idx = prepared
    spec = _spec(deterministic=True)
    try:
        set_determinism(GPU, 1, deterministic=True)
        a = fit(spec, images, train_idx, val_idx, seed=5, device=GPU)
        b = fit(spec, images, train_idx, val_idx, seed=5, device=GPU)
    finally:
        torch.use_deterministic_algorithms(False)
    assert [e["train_loss"] for e in a.epochs] == [e["train_loss"] for e in b.epochs]
    assert np.array_equal(a.val_pred, b.val_pred)


def test_compile_on_the_gpu_records_its_time_apart(prepared):
    _, images, train_idx, val_idx = prepared
    set_determinism(GPU, 1)
    result = fit(_spec(compile=True), images, train_idx, val_idx, seed=0, device=GPU)
    assert result.numerics["compile_time_s"] > 0.5 and result.train_time_s < result.numerics["compile_time_s"]
    assert result.epochs[-1]["val_acc"] > 0.5


def test_cuda_event_stopwatch_times_exactly_the_kernels():
    from cnnbench.measure import Stopwatch

    a = torch.randn(2048, 2048, device=GPU)
    t0 = time.perf_counter()
    with Stopwatch(GPU) as watch:
        for _ in range(20):
            a = a @ a / 2048
    wall = time.perf_counter() - t0
    assert 0 < watch.seconds <= wall * 1.01


def test_the_timing_job_takes_a_whole_gpu_and_uses_cuda_events(prepared, tmp_path, monkeypatch):
    from cnnbench.timing import time_variant

    monkeypatch.setenv("CNNBENCH_GPU_LOCK_DIR", str(tmp_path / "locks"))
    root, *_ = prepared
    t = time_variant(_spec(), data_path=root / "data.npz", splits_path=root / "splits.json", device="cuda",
                     jobs_per_gpu=2, repeats=3)
    assert t["timer"] == "cuda_events" and t["train_img_per_s"] > 0
    assert t["env"]["gpu_slot"]["slots"] == [0, 1]
    assert t["numerics"]["precision"] == resolve_precision("auto", GPU)


def test_the_timing_job_times_every_variant_in_one_process_on_cuda(prepared, tmp_path, monkeypatch):
    """One process for all variants (torch and CUDA start once): the allocator's figure of the same
    network measured before and after a larger one agrees, so nothing of a variant leaks into the next."""
    from cnnbench.timing import time_study

    monkeypatch.setenv("CNNBENCH_GPU_LOCK_DIR", str(tmp_path / "locks"))
    root, *_ = prepared
    study = load_study(tiny_study(protocol={"folds": 2, "epochs": 3, "batch_size": 32}, execution={"device": "cuda"},
                                  variants={"baseline": {"base": "cnn"}, "wide": {"base": "baseline", "width": 64},
                                            "again": {"base": "baseline"}}))
    records = time_study([study.variants[v] for v in ("baseline", "wide", "again")], data_path=root / "data.npz",
                         splits_path=root / "splits.json", device="cuda", repeats=3, log=lambda m: None)
    assert len({r["process"] for r in records}) == 1 and [r["set_up_shared_by"] for r in records] == [3, 3, 3]
    assert all(r["memory_kind"] == "cuda_allocator" and r["timer"] == "cuda_events" for r in records)
    first, wide, again = (r["train_mb"] for r in records)
    assert wide > first and again == pytest.approx(first, rel=0.1), (first, wide, again)


def test_a_training_job_records_its_gpu_slot(prepared, tmp_path, monkeypatch):
    import json

    from cnnbench.runner import train_variant

    monkeypatch.setenv("CNNBENCH_GPU_LOCK_DIR", str(tmp_path / "locks"))
    root, *_ = prepared
    [out] = train_variant(_spec(), data_path=root / "data.npz", splits_path=root / "splits.json", runs=[(0, 0)],
                          out_dir=tmp_path / "runs", weights_path=None, resume_root=tmp_path / "resume",
                          device="cuda", jobs_per_gpu=4)
    record = json.loads(out.read_text())
    assert record["env"]["device"] == "cuda" and record["env"]["gpu_slot"]["jobs_per_gpu"] == 4
    assert record["numerics"]["precision"] == resolve_precision("auto", GPU)
