"""`cnnbench verify`: a clean record matches; a changed spec hash, metric or prediction fails it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnnbench import train as train_module
from cnnbench.seeds import run_seed
from cnnbench.verify import record_seed, verify


def verify_changed(recorded: Path, tmp_path: Path, change, device: str | None = None):
    """verify() on a copy of the record with `change(record)` applied, against the original inputs."""
    record = json.loads(recorded.read_text())
    change(record)
    path = tmp_path / "changed.json"
    path.write_text(json.dumps(record))
    study_dir = recorded.parents[2]
    return verify(path, data=study_dir / "data.npz", splits=study_dir / "splits.json", device=device)


def test_a_clean_record_matches(recorded):
    verdict = verify(recorded)
    assert verdict.match, str(verdict)
    assert "MATCH: 2 epochs x 5 numbers, 6 metrics and" in str(verdict) and "identical" in str(verdict)


def test_a_record_made_with_other_library_versions_says_which(recorded, tmp_path):
    """A trial verified a record made with torch 2.13.0+cpu under 2.14.1 and got MATCH with no word of it."""
    def older(r):
        r["env"]["torch"] = "2.13.0+cpu"
        r["env"]["cuda"] = "12.4"  # a key this CPU run does not have is no difference

    verdict = verify_changed(recorded, tmp_path, older)
    assert verdict.match and "recorded with other versions: torch 2.13.0+cpu then, " in str(verdict)
    assert "cuda" not in str(verdict)
    assert "other versions" not in str(verify(recorded))


def test_a_changed_spec_hash_fails(recorded, tmp_path):
    verdict = verify_changed(recorded, tmp_path, lambda r: r.update(spec_hash="0" * 16))
    assert not verdict.match and "MISMATCH" in str(verdict)
    assert "spec hash now" in str(verdict) and "recorded 0000000000000000" in str(verdict)


@pytest.mark.parametrize("key, delta", [("val_acc", 0.01), ("train_loss", 1e-9), ("best_val_acc", -0.01),
                                        ("best_epoch", 1)])
def test_a_changed_metric_fails(recorded, tmp_path, key, delta):
    """The record's final metrics are what reports use, so they are compared, not only the epochs."""
    def change(r):
        r["metrics"][key] += delta

    verdict = verify_changed(recorded, tmp_path, change)
    assert not verdict.match and f"metrics {key}: recorded" in str(verdict)
    assert "epoch 1" not in str(verdict) and "epoch 2" not in str(verdict)  # the epochs still match


def test_a_missing_metric_fails(recorded, tmp_path):
    verdict = verify_changed(recorded, tmp_path, lambda r: r["metrics"].pop("best_epoch"))
    assert not verdict.match and "metrics best_epoch: missing from the record" in str(verdict)


def test_off_the_cpu_predictions_are_counted_not_assumed(recorded, tmp_path):
    """A record made on a GPU, re-run on the CPU: within tolerance, and every differing validation
    prediction is counted; beyond 0.5% of them (here 0 of 120) the verdict fails."""
    def on_gpu(r):
        r["env"]["device"] = "cuda"

    verdict = verify_changed(recorded, tmp_path, on_gpu, device="cpu")
    assert verdict.match, str(verdict)
    n = len(json.loads(recorded.read_text())["val_pred"])
    assert f"0 of {n} validation predictions differ (at most 0, 0.5%, allowed)" in str(verdict)

    def on_gpu_one_flipped(r):
        on_gpu(r)
        r["val_pred"][0] = (r["val_pred"][0] + 1) % 10

    verdict = verify_changed(recorded, tmp_path, on_gpu_one_flipped, device="cpu")
    assert not verdict.match and f"validation predictions: 1 of {n} differ (allowed 0)" in str(verdict)


def test_the_run_seed_is_the_recorded_or_the_derived_one():
    assert record_seed({"seed": 0, "fold": 1, "run_seed": 12345}) == 12345
    assert record_seed({"seed": 0, "fold": 1}) == run_seed(0, 1, 0)
    assert record_seed({"seed": 0, "fold": 1, "seed_offset": 7}) == run_seed(0, 1, 7) != run_seed(0, 1, 0)


def test_a_changed_run_seed_fails(recorded, tmp_path):
    verdict = verify_changed(recorded, tmp_path, lambda r: r.update(run_seed=r["run_seed"] + 1))
    assert not verdict.match and "MISMATCH" in str(verdict)


def test_a_code_change_fails(recorded, monkeypatch):
    real = train_module.lr_factor
    monkeypatch.setattr(train_module, "lr_factor", lambda kind, step, total: 0.9 * real(kind, step, total))
    verdict = verify(recorded)
    assert not verdict.match and "epoch 1" in str(verdict)


def test_a_record_outside_its_study_folder_verifies_with_data_and_splits_given(recorded, tmp_path, capsys):
    """What the 'not inside results/<study>/runs/' error tells a user to do crashed on the CLI's strings
    (a trial: AttributeError: 'str' object has no attribute 'exists')."""
    from cnnbench.cli import main

    copy = tmp_path / "mine.json"
    copy.write_text(recorded.read_text())
    study_dir = recorded.parents[2]
    assert main(["verify", str(copy)]) == 2
    assert "pass --data and --splits" in capsys.readouterr().err
    assert main(["verify", str(copy), "--data", str(study_dir / "data.npz"),
                 "--splits", str(study_dir / "splits.json")]) == 0
    assert "MATCH" in capsys.readouterr().out


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_a_gpu_record_on_a_machine_without_one_says_how_to_compare(recorded, tmp_path):
    """Before, it said execution.device: 'cuda', a setting the user of verify never wrote."""
    from cnnbench.errors import CnnbenchError

    def on_gpu(r):
        r["env"].update(device="cuda", device_name="NVIDIA H200")

    with pytest.raises(CnnbenchError, match=r"recorded on CUDA \(NVIDIA H200\).*pass --device cpu"):
        verify_changed(recorded, tmp_path, on_gpu)


def test_other_inputs_are_refused(recorded, tmp_path):
    from cnnbench.errors import CnnbenchError

    other = tmp_path / "splits.json"
    other.write_text("{}")
    with pytest.raises(CnnbenchError, match="not the file this run used"):
        verify(recorded, splits=other)


def test_exact_match_is_demanded_on_the_cpu_and_on_the_same_gpu_model_in_deterministic_mode(monkeypatch):
    import torch

    from cnnbench.verify import exact_match_expected

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert exact_match_expected({"device": "cpu", "threads": 1}, {}, cpu)[0]
    assert not exact_match_expected({"device": "cuda", "device_name": "H100"}, {"deterministic": True}, cpu)[0]
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda dev=None: "NVIDIA H100")
    h100 = {"device": "cuda", "device_name": "NVIDIA H100"}
    exact, under = exact_match_expected(h100, {"deterministic": True, "precision": "bf16", "compile": "off"}, gpu)
    assert exact and under.startswith("GPU NVIDIA H100, precision bf16, compile off, deterministic on")
    assert not exact_match_expected(h100, {"deterministic": False}, gpu)[0]  # cuDNN autotuning: not promised
    assert not exact_match_expected({**h100, "device_name": "NVIDIA A100"}, {"deterministic": True}, gpu)[0]
