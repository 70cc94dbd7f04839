"""Every `cnnbench` subcommand answers a bad path or a bad file with one line and exit status 2."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from tests.test_cli import cli


def assert_one_line_error(out: subprocess.CompletedProcess, *words: str) -> None:
    err = out.stderr.strip()
    assert out.returncode == 2, (out.returncode, err)
    assert "Traceback" not in err and err.count("\n") == 0, err
    for w in words:
        assert w in err, (w, err)


@pytest.fixture
def files(tmp_path, recorded):
    """A truncated record, a non-JSON file, a CSV table, a JSON list, a record without fields, and a complete record
    copied outside results/."""
    text = recorded.read_text()
    (tmp_path / "truncated.json").write_text(text[: len(text) // 2])
    (tmp_path / "not.json").write_text("hello, world\n")
    (tmp_path / "list.json").write_text("[1, 2, 3]")
    (tmp_path / "partial.json").write_text(json.dumps({"schema": 4, "study": "tiny"}))
    (tmp_path / "runs.csv").write_text("variant,fold,seed,val_acc\nbaseline,0,0,0.97\n")
    shutil.copy(recorded, tmp_path / "outside.json")
    return tmp_path


def test_verify(files):
    assert_one_line_error(cli("verify", str(files / "missing.json")), "missing.json", "no such run record")
    assert_one_line_error(cli("verify", str(files / "truncated.json")), "not valid JSON")
    assert_one_line_error(cli("verify", str(files / "not.json")), "not valid JSON")
    assert_one_line_error(cli("verify", str(files / "list.json")), "not a run record")
    assert_one_line_error(cli("verify", str(files / "runs.csv")), "not a run record (a .csv file, not JSON)")
    assert_one_line_error(cli("verify", str(files / "partial.json")), "missing", "spec_hash")
    assert_one_line_error(cli("verify", str(files / "outside.json")), "pass --data and --splits")


def test_bench_report(files):
    assert_one_line_error(cli("bench-report", str(files / "list.json")), "not a pytest-benchmark JSON file")
    assert_one_line_error(cli("bench-report", str(files / "missing.json")), "missing.json")


def test_describe_refuses_impossible_numbers():
    out = cli("describe", "cnn", "--classes", "-5")
    assert out.returncode == 2 and "must be at least 1" in out.stderr and "Traceback" not in out.stderr
    out = cli("describe", "cnn", "--input", "1x0x28")
    assert out.returncode == 2 and "at least 1" in out.stderr and "Traceback" not in out.stderr


def test_describe_suggests_the_name_meant():
    assert_one_line_error(cli("describe", "batchnrom"), "no variant 'batchnrom' (did you mean 'batchnorm'?)")
    assert_one_line_error(cli("describe", "resnet2"), "(did you mean 'resnet20'?)")


@pytest.mark.parametrize(("args", "flag", "message"), [
    (["plan", "r", "--delta", "nan"], "--delta", "give a finite number"),
    (["plan", "r", "--delta", "-1"], "--delta", "give a number above 0"),
    (["plan", "r", "--folds", "1"], "--folds", "at least 2 folds"),
    (["gpu-sweep", "--seconds", "inf"], "--seconds", "give a finite number"),
    (["gpu-check", "--total", "0"], "--total", "give a number above 0"),
    (["bench-report", "x.json", "--threshold", "nan"], "--threshold", "give a finite number"),
    (["bench-report", "x.json", "--threshold", "-0.1"], "--threshold", "give a number of at least 0"),
    (["loop-bench", "--threads", "0"], "--threads", "must be at least 1"),
    (["time", "--specs", "s.json", "--data", "d", "--splits", "s", "--out-dir", "o", "--threads", "-2"], "--threads",
     "must be at least 1"),
])
def test_numbers_that_parse_but_mean_nothing_are_refused_by_name(args, flag, message):
    """float('nan') and -1 pass float(): unchecked, a plan would say that no design reaches a NaN target."""
    out = cli(*args)
    assert out.returncode == 2 and f"argument {flag}: " in out.stderr and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_workflow_commands_on_missing_inputs(files):
    missing = str(files / "nothing")
    assert_one_line_error(cli("split", "--data", f"{missing}.npz", "--folds", "2", "--out", str(files / "s.json")),
                          "no data cache")
    spec = json.dumps(json.loads((files / "outside.json").read_text())["spec"])
    (files / "specs.json").write_text(json.dumps({"baseline": json.loads(spec)}))
    assert_one_line_error(cli("time", "--specs", str(files / "specs.json"), "--data", f"{missing}.npz", "--splits",
                              f"{missing}.json", "--out-dir", str(files / "t")), "no data cache")
    assert_one_line_error(cli("time", "--specs", f"{missing}.json", "--data", "d", "--splits", "s", "--out-dir",
                              str(files / "t")), "no such specs file")
    assert_one_line_error(cli("time", "--specs", str(files / "list.json"), "--data", "d", "--splits", "s",
                              "--out-dir", str(files / "t")), "a JSON list of resolved variant specs")
    (files / "afile").write_text("")  # refused before the first variant is measured, not after it
    assert_one_line_error(cli("time", "--specs", str(files / "specs.json"), "--data", f"{missing}.npz", "--splits",
                              f"{missing}.json", "--out-dir", str(files / "afile")), "--out-dir", "give a folder")
    assert_one_line_error(cli("time", "--specs", str(files / "specs.json"), "--data", str(files / "specs.json"),
                              "--splits", f"{missing}.json", "--out-dir", str(files / "t")), "not a data cache")
    (files / "twice.json").write_text(json.dumps([json.loads(spec)] * 2))
    assert_one_line_error(cli("time", "--specs", str(files / "twice.json"), "--data", "d", "--splits", "s",
                              "--out-dir", str(files / "t")), "given twice")
    (files / "bad-specs.json").write_text(json.dumps([{"name": "x"}]))
    assert_one_line_error(cli("time", "--specs", str(files / "bad-specs.json"), "--data", "d", "--splits", "s",
                              "--out-dir", str(files / "t")), "spec 1: not a resolved variant spec")
    assert_one_line_error(cli("report", "--results", missing, "--data", "d", "--splits", "s", "--models", "m",
                              "--baseline", "b", "--title", "t", "--out", str(files / "r.html")), "not found")
    assert_one_line_error(cli("plan", missing), "not found")
    assert_one_line_error(cli("collect", str(files / "outside.json"), "--data", f"{missing}.npz", "--splits",
                              f"{missing}.json", "--out-dir", str(files / "out")), "no such data cache")
    assert_one_line_error(cli("train", "--spec", spec, "--data", f"{missing}.npz", "--splits", f"{missing}.json",
                              "--runs", "fold0-seed0", "--out-dir", str(files / "o"), "--resume-root",
                              str(files / "r")), "no data cache")
    assert_one_line_error(cli("train", "--spec", spec, "--data", f"{missing}.npz", "--splits", f"{missing}.json",
                              "--runs", "zero", "--out-dir", str(files / "o"), "--resume-root", str(files / "r")),
                          "not a run name")


def test_collect_names_a_corrupt_record(files, recorded):
    study = recorded.parents[2]
    out = cli("collect", str(files / "truncated.json"), "--data", str(study / "data.npz"), "--splits",
              str(study / "splits.json"), "--out-dir", str(files / "out"))
    assert_one_line_error(out, "truncated.json", "not valid JSON", "run snakemake again")


def test_a_missing_or_foreign_splits_file_is_named_as_such(files, recorded):
    """A trial: a missing --splits said "no such JSON file"; a JSON file of another kind (a record, a list)
    gave a KeyError or TypeError traceback."""
    study = recorded.parents[2]
    spec = json.loads((files / "outside.json").read_text())["spec"]
    (files / "specs.json").write_text(json.dumps([spec]))
    for splits, words in ((files / "nothing.json", ("nothing.json: no such splits file", "splits.json")),
                          (files / "list.json", ("list.json: not a splits file", "splits.json")),
                          (files / "partial.json", ("partial.json: not a splits file", "splits.json"))):
        assert_one_line_error(cli("time", "--specs", str(files / "specs.json"), "--data", str(study / "data.npz"),
                                  "--splits", str(splits), "--out-dir", str(files / "t"), "--device", "cpu"), *words)
    assert not list((files / "t").glob("*.json"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for CUDA where there is none")
def test_a_step_asked_for_cuda_without_one_names_the_flag_too(files, recorded):
    """A trial: `cnnbench time --device cuda` said only execution.device, a field the user never wrote."""
    study = recorded.parents[2]
    (files / "specs.json").write_text(json.dumps([json.loads((files / "outside.json").read_text())["spec"]]))
    assert_one_line_error(cli("time", "--specs", str(files / "specs.json"), "--data", str(study / "data.npz"),
                              "--splits", str(study / "splits.json"), "--out-dir", str(files / "t"), "--device",
                              "cuda"), "--device", "no CUDA device", "use auto or cpu")


def test_an_unwritable_results_folder():
    """A folder nobody may write, root included: /sys is mounted read-only for processes here."""
    target = Path("/sys/cnnbench-results/d.npz")
    try:
        target.parent.mkdir(parents=True)
    except OSError:
        pass
    else:  # a writable /sys: this machine cannot show the failure
        target.parent.rmdir()
        pytest.skip("/sys is writable here, so there is no unwritable folder to try")
    out = cli("prepare-data", "--data-json", '{"name": "digits", "subset": 100}', "--out", str(target))
    assert_one_line_error(out, "cannot write it", "/sys/cnnbench-results")


def test_a_torchvision_that_does_not_match_torch_stops_the_data_step(tmp_path, monkeypatch, capsys):
    """A trial: a CPU torch wheel beside PyPI's CUDA torchvision trained for minutes, then the report
    failed importing torchvision ('operator torchvision::nms does not exist', 40 lines). The first step
    now imports it and stops in one line naming both versions and the fix."""
    import builtins
    import sys

    from cnnbench.cli import main

    real_import = builtins.__import__

    def broken(name, *args, **kwargs):  # what a mismatched pair raises while torchvision registers its ops
        if name == "torchvision":
            raise RuntimeError("operator torchvision::nms does not exist")
        return real_import(name, *args, **kwargs)

    def prepare() -> tuple[int, str]:
        code = main(["prepare-data", "--data-json", '{"name": "digits", "subset": 100}', "--out", str(tmp_path / "d.npz")])
        return code, capsys.readouterr().err.strip()

    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    monkeypatch.setattr(builtins, "__import__", broken)
    code, err = prepare()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "does not load with torch" in err and "RuntimeError: operator torchvision::nms" in err
    assert "install a matching pair" in err and not (tmp_path / "d.npz").exists()
    monkeypatch.setattr(builtins, "__import__", real_import)
    monkeypatch.setitem(sys.modules, "torchvision", None)  # not installed at all: another fix
    code, err = prepare()
    assert code == 2 and "torchvision cannot be imported" in err and "different builds" not in err
