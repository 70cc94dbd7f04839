"""The command line: one-line errors, describe, list-models, loop-bench."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def test_loop_bench_runs_both_loops(tmp_path):
    from cnnbench.loopbench import format_result, loop_bench

    cfg = write_yaml(tmp_path / "s.yaml", tiny_study())
    r = loop_bench(cfg, steps=3, repeats=1)
    assert r["reference_img_per_s"] > 0 and r["project_img_per_s"] > 0
    assert r["ratio"] == r["project_img_per_s"] / r["reference_img_per_s"]
    assert "speed-up" in format_result(r)
