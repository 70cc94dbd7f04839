"""The command line: one-line errors, describe, list-models, loop-bench."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cnnbench.cli import main
from tests.helpers import REPO, tiny_study, write_yaml


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([sys.executable, "-m", "cnnbench.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=env)


def test_describe_a_variant_of_the_default_study(capsys):
    assert main(["describe", "no_padding"]) == 0
    out = capsys.readouterr().out
    assert "changes vs baseline: padding: same -> valid" in out
    assert "stage0.block0.conv1  conv 3x3 s1 p0     16x26x26" in out
    assert "total" in out and "12,810" in out


def test_describe_a_model_with_an_input_shape(capsys):
    assert main(["describe", "resnet18", "--input", "3x224x224", "--classes", "1000"]) == 0
    assert "11,689,512" in capsys.readouterr().out


def test_describe_with_a_config_prefers_its_variant_and_uses_its_images(tmp_path, capsys):
    """A variant named like a model (resnet20, width 8) showed the plain preset; a model named with
    --config showed 1x28x28 whatever the study's images (review)."""
    cfg = write_yaml(tmp_path / "s.yaml", tiny_study(variants={"baseline": {"base": "cnn"},
                                                               "resnet20": {"base": "resnet20", "width": 8}}))
    assert main(["describe", "resnet20", "--config", str(cfg)]) == 0
    assert "variant 'resnet20' of study 'tiny'" in capsys.readouterr().out
    assert main(["describe", "cnn", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("model 'cnn'") and " 1x8x8 " in out and " 1x28x28 " not in out  # digits: 8x8


def test_describe_a_variant_on_other_images_says_so(capsys):
    """--input and --classes with a variant were ignored: the study's 1x28x28 table came back (trial)."""
    assert main(["describe", "baseline", "--input", "3x32x32", "--classes", "100"]) == 0
    out = capsys.readouterr().out
    assert "shown on 3x32x32 images, 100 classes (--input/--classes; the study's: 1x28x28, 10)" in out
    assert "16x32x32" in out and "16x28x28" not in out
    assert main(["describe", "stride2", "--input", "1x4x4"]) == 2
    assert "shrinks below 1x1" in capsys.readouterr().err


def test_errors_are_one_line_without_traceback(tmp_path):
    bad = write_yaml(tmp_path / "bad.yaml", tiny_study(variants={"baseline": {"base": "cnn", "pool": "mean"}}))
    out = cli("describe", "baseline", "--config", str(bad))
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
    assert "variant 'baseline', field 'pool'" in out.stderr
    out = cli("prepare-data", "--data-json", '{"name": "cifar10", "root": "/nonexistent"}', "--out",
              str(tmp_path / "d.npz"))
    assert out.returncode == 2 and "data.root" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "d.npz").exists()


def test_list_models(capsys):
    assert main(["list-models"]) == 0
    out = capsys.readouterr().out
    for name in ("cnn", "lenet", "vgg11", "resnet20", "resnet56", "resnet18", "inception", "mobilenet"):
        assert name in out


@pytest.fixture(scope="module")
def loop_run(tmp_path_factory):
    """loop_bench on the tiny study, with every training forward pass of each loop recorded
    (time, batch size): one list per loop, in the order they ran (dataloader, tuned, project)."""
    from cnnbench import loopbench

    cfg = write_yaml(tmp_path_factory.mktemp("loop") / "s.yaml", tiny_study())
    loops: list[list[tuple[float, int]]] = []

    def recording_build(plan, shape):
        model = real_build(plan, shape)
        seen: list[tuple[float, int]] = []
        loops.append(seen)
        model.register_forward_pre_hook(lambda m, args: seen.append((time.perf_counter(), args[0].shape[0])))
        return model

    real_build = loopbench.build_model
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loopbench, "build_model", recording_build)
        t0 = time.perf_counter()
        r = loopbench.loop_bench(cfg, steps=3, repeats=1)
        wall = time.perf_counter() - t0
    return r, loops, wall


def test_the_plain_loop_runs_at_pytorchs_default_flags_and_puts_the_runs_back():
    """The DataLoader reference is the loop a user would write: cuDNN without autotuning, TF32 in
    convolutions only, whatever the project's numerics had set (bf16 turns TF32 off) - then restored."""
    import torch

    from cnnbench.loopbench import pytorch_default_flags

    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32)
    try:
        cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = True, False, True
        with pytorch_default_flags():
            assert (cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32) == (False, True, False)
        assert (cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32) == (True, False, True)
    finally:
        cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = saved


def test_loop_bench_runs_every_loop(loop_run):
    from cnnbench.loopbench import WARMUP, format_result

    r, (reference, tuned, project), wall = loop_run
    bs, steps = r["batch_size"], r["steps"]
    assert (bs, steps) == (32, 3) and len(r["dataloader_all"]) == len(r["tuned_all"]) == len(r["project_all"]) == 1
    assert len(reference) == WARMUP + steps  # untimed warm-up, then the timed steps
    for loop, img_per_s in ((reference, r["dataloader_img_per_s"]), (tuned, r["tuned_img_per_s"]),
                            (project, r["project_img_per_s"])):
        assert [b for _, b in loop] == [bs] * len(loop)  # full batches only
        assert steps * bs / wall <= img_per_s  # the timed steps took no longer than the whole call
        # ... and no less than from the first timed forward pass to the last one
        assert img_per_s <= steps * bs / (loop[-1][0] - loop[WARMUP][0])
    assert math.isfinite(r["ratio"]) and r["ratio"] > 0
    text = format_result(r)
    assert f"speed-up over the DataLoader loop: {r['ratio']:.2f}x" in text
    assert f"share of the tuned loop's speed: {r['ratio_to_tuned']:.0%}" in text
    assert all(f"{r[f'{n}_img_per_s']:,.0f} img/s" in text for n in ("dataloader", "tuned", "project"))
    assert r["precision"] == "fp32" and r["compile"] == "off"  # the CPU's defaults
    assert f"{steps} timed steps of batch {bs}" in text


def test_both_loops_run_the_same_number_of_steps(loop_run):
    from cnnbench.loopbench import WARMUP

    r, (reference, tuned, project), _ = loop_run
    assert len(project) == len(tuned) == len(reference) == WARMUP + r["steps"]


def test_loop_bench_tuned_loop_keeps_bf16_data_on_the_device(tmp_path, monkeypatch):
    """The tuned (airbench-style) reference on the CPU at bf16: its batches are bf16, sliced from data stored
    once in the compute dtype; the DataLoader loop feeds fp32, and the project's loop fp32 images that its
    autocast casts inside each layer (checked through a convolution's output)."""
    from cnnbench import loopbench

    cfg = write_yaml(tmp_path / "s.yaml", tiny_study())
    seen: dict[str, set] = {}
    real_build = loopbench.build_model

    def recording_build(plan, shape):
        model = real_build(plan, shape)
        key = f"model{len(seen)}"
        seen[key] = set()
        model.register_forward_pre_hook(lambda m, args: seen[key].add(("input", args[0].dtype)))
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        conv.register_forward_hook(lambda m, args, out: seen[key].add(("conv", out.dtype)))
        return model

    monkeypatch.setattr(loopbench, "build_model", recording_build)
    r = loopbench.loop_bench(cfg, steps=2, repeats=1, precision="bf16")
    assert r["precision"] == "bf16"
    dataloader, tuned, project = seen.values()
    assert dataloader == {("input", torch.float32), ("conv", torch.float32)}
    assert tuned == {("input", torch.bfloat16), ("conv", torch.bfloat16)}
    assert project == {("input", torch.float32), ("conv", torch.bfloat16)}
