"""The training loop, the run record, determinism, resumption and augmentation, on tiny real data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cnnbench import train as train_module
from cnnbench.augment import augment
from cnnbench.config import load_study
from cnnbench.data import ImageData, load_fold, load_source, make_splits, save_cache, save_splits
from cnnbench.runner import train_variant
from cnnbench.runtime import set_determinism
from cnnbench.train import fit, lr_factor
from tests.helpers import tiny_study

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """300 digits cached with a 2-fold split, as the workflow's first two steps leave them."""
    root = tmp_path_factory.mktemp("prepared")
    study = load_study(tiny_study(protocol={"folds": 2, "epochs": 3, "batch_size": 32}))
    images = load_source(study.data, 0)
    save_cache(images, root / "data.npz")
    save_splits(root / "splits.json", make_splits(images.y, 2, 1, 0), images.y, 2, 1, 0)
    return study, images, root


def test_loss_goes_down_and_beats_chance(prepared):
    study, images, root = prepared
    set_determinism(CPU, 1)
    train_idx, val_idx = load_fold(root / "splits.json", 0, images.y)
    result = fit(study.variants["baseline"], images, train_idx, val_idx, seed=0, device=CPU)
    losses = [e["train_loss"] for e in result.epochs]
    assert losses[-1] < losses[0]
    assert result.epochs[-1]["val_acc"] > 0.5  # chance is 0.1
    assert len(result.val_pred) == len(val_idx) and result.train_img_per_s > 0
    assert result.images_seen == 3 * (len(train_idx) // 32) * 32


def test_every_fold_is_also_scored_on_an_official_test_split(prepared):
    study, images, root = prepared
    with_test = ImageData(images.name, images.x[:200], images.y[:200], images.classes, images.x[200:], images.y[200:])
    result = fit(study.variants["baseline"], with_test, np.arange(100), np.arange(100, 200), seed=0, device=CPU)
    assert result.test["n_test"] == 100 and 0 <= result.test["test_acc"] <= 1 and result.test["test_loss"] > 0
    probs = result.test_prob.astype(np.float64)  # what ensembles average: one row of probabilities per test image
    assert probs.shape == (100, 10) and np.allclose(probs.sum(1), 1, atol=1e-2)
    assert (probs.argmax(1) == images.y[200:]).mean() == pytest.approx(result.test["test_acc"], abs=0.02)
    from cnnbench.runner import decode_array, encode_array

    assert np.array_equal(decode_array(encode_array(result.test_prob)), result.test_prob)
    assert fit(study.variants["baseline"], images, np.arange(100), np.arange(100, 200), seed=0, device=CPU).test is None


def test_every_post_fit_measurement_reaches_the_run_record(prepared):
    """A measurement added to cnnbench.postfit.MEASUREMENTS fails here until the run record keeps it."""
    from datetime import datetime, timezone

    from cnnbench.measure import cost
    from cnnbench.postfit import MEASUREMENTS
    from cnnbench.runner import decode_array, make_record

    study, images, root = prepared
    with_test = ImageData(images.name, images.x[:200], images.y[:200], images.classes, images.x[200:], images.y[200:])
    spec = study.variants["baseline"]
    result = fit(spec, with_test, np.arange(100), np.arange(100, 200), seed=0, device=CPU)
    record = make_record(spec, 0, 0, result, np.arange(100), np.arange(100, 200), cost(spec), {}, {},
                         datetime.now(timezone.utc))
    kept = {"official_test": lambda r: r["metrics"]["n_test"] == 100 and decode_array(r["test_prob"]).shape == (100, 10),
            "dead_filters": lambda r: all(d["total"] > 0 for d in r["diagnostics"]["dead_filters"].values()) and r["diagnostics"]["dead_filters"],
            "translation_probe": lambda r: len(r["probe"]["accuracy"]) == len(r["probe"]["shifts"]) > 1}
    assert [m.__name__ for m in MEASUREMENTS] == list(kept)
    for name, read in kept.items():
        assert name in result.after and result.after_s[name] > 0
        assert read(json.loads(json.dumps(record, allow_nan=False)))  # strict JSON, as written
    assert record["speed"]["measure_time_s"] == pytest.approx(result.after_s["dead_filters"]
                                                              + result.after_s["translation_probe"])


def test_same_run_twice_gives_identical_numbers(prepared):
    study, images, root = prepared
    set_determinism(CPU, 1)
    train_idx, val_idx = load_fold(root / "splits.json", 1, images.y)
    spec = study.variants["batchnorm"]
    a = fit(spec, images, train_idx, val_idx, seed=7, device=CPU)
    b = fit(spec, images, train_idx, val_idx, seed=7, device=CPU)
    numbers = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")
    assert [[e[k] for k in numbers] for e in a.epochs] == [[e[k] for k in numbers] for e in b.epochs]
    assert np.array_equal(a.val_pred, b.val_pred)
    c = fit(spec, images, train_idx, val_idx, seed=8, device=CPU)
    assert [e["train_loss"] for e in c.epochs] != [e["train_loss"] for e in a.epochs]


def test_train_variant_writes_one_complete_record_per_run(prepared, tmp_path):
    study, images, root = prepared
    spec = study.variants["baseline"]
    logs = []
    paths = train_variant(spec, data_path=root / "data.npz", splits_path=root / "splits.json",
                          runs=[(0, 0), (1, 0)], out_dir=tmp_path / "runs", weights_path=tmp_path / "w.pt",
                          resume_root=tmp_path / "resume", log=logs.append)
    assert [p.name for p in paths] == ["fold0-seed0.json", "fold1-seed0.json"]
    r = json.loads(paths[1].read_text())
    assert (r["variant"], r["fold"], r["seed"], r["spec_hash"]) == ("baseline", 1, 0, spec.spec_hash)
    assert set(r["metrics"]) >= {"val_acc", "val_loss", "best_val_acc", "best_epoch", "train_acc"}
    assert r["cost"]["params"] == sum(row.params for row in spec.layer_table()) and r["cost"]["macs_forward"] > 0
    assert r["speed"]["train_img_per_s"] > 0 and r["speed"]["epoch_time_s"] > 0
    assert len(r["epochs"]) == 3 and len(r["val_pred"]) == r["data"]["n_val"]
    env = r["env"]
    assert env["device"] == "cpu" and env["threads"] == 1 and env["torch"] == torch.__version__
    assert {"python", "cnnbench", "git_commit", "git_dirty", "cpu"} <= set(env)
    assert r["spec"]["name"] == "baseline" and r["started_at"] <= r["finished_at"]
    weights = torch.load(tmp_path / "w.pt", weights_only=True)
    assert weights["fold"] == 0 and "features.stage0.block0.conv1.weight" in weights["state_dict"]
    assert len(logs) == 6 and "epoch 3/3" in logs[-1] and "fold 1" in logs[-1]
    kept = sorted(p.name for p in (tmp_path / "resume" / "baseline").rglob("*") if p.is_file())
    assert kept == ["fold0-seed0.json", "fold0-seed0.pt", "fold1-seed0.json"]  # the run store, for reuse


def test_interrupted_job_resumes_without_retraining_finished_runs(prepared, tmp_path, monkeypatch):
    study, images, root = prepared
    spec = study.variants["baseline"]
    kwargs = dict(data_path=root / "data.npz", splits_path=root / "splits.json", runs=[(0, 0), (1, 0)],
                  out_dir=tmp_path / "runs", weights_path=tmp_path / "w.pt", resume_root=tmp_path / "resume",
                  log=lambda m: None)
    real_fit, calls = train_module.fit, []

    def interrupted_fit(*args, **kw):
        calls.append(kw["seed"])
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user pressed Ctrl-C during the second run
        return real_fit(*args, **kw)

    monkeypatch.setattr(train_module, "fit", interrupted_fit)
    with pytest.raises(KeyboardInterrupt):
        train_variant(spec, **kwargs)
    first = json.loads(next((tmp_path / "resume").rglob("fold0-seed0.json")).read_text())

    calls.clear()
    monkeypatch.setattr(train_module, "fit", lambda *a, **kw: calls.append(1) or real_fit(*a, **kw))
    train_variant(spec, **kwargs)
    assert len(calls) == 1  # only the unfinished run was trained
    assert json.loads((tmp_path / "runs" / "fold0-seed0.json").read_text()) == first
    assert (tmp_path / "runs" / "fold1-seed0.json").exists() and (tmp_path / "w.pt").exists()


def test_run_seeds_differ_across_folds_and_are_shared_across_variants(prepared, tmp_path):
    """Init variance is sampled (each fold starts from other weights) while pairing holds (two variants
    with the same architecture start from the same weights on the same run)."""
    study, images, root = prepared
    study = load_study(tiny_study(protocol={"folds": 2, "epochs": 1, "batch_size": 32},
                                  variants={"baseline": {"base": "cnn"}, "dropout": {"base": "baseline", "dropout": 0.5}},
                                  aa_control=True))
    records = {}
    for v in ("baseline", "dropout", "aa_control"):
        for path in train_variant(study.variants[v], data_path=root / "data.npz", splits_path=root / "splits.json",
                                  runs=[(0, 0), (1, 0)], out_dir=tmp_path / v, weights_path=None,
                                  resume_root=tmp_path / "resume", log=lambda m: None):
            r = json.loads(path.read_text())
            records[v, r["fold"]] = r
    assert records["baseline", 0]["init_digest"] != records["baseline", 1]["init_digest"]
    assert records["baseline", 0]["run_seed"] != records["baseline", 1]["run_seed"]
    for fold in (0, 1):
        assert records["dropout", fold]["init_digest"] == records["baseline", fold]["init_digest"]
        assert records["aa_control", fold]["init_digest"] != records["baseline", fold]["init_digest"]
        assert records["aa_control", fold]["seed_offset"] == 1


def test_run_seed_is_stable_and_distinct():
    from cnnbench.seeds import run_seed

    seeds = {run_seed(s, f, o) for s in range(3) for f in range(10) for o in range(2)}
    assert len(seeds) == 60 and all(0 <= x < 2**63 for x in seeds)
    assert run_seed(0, 0) == run_seed(0, 0, 0) == 1830133628637128347  # changing it changes every result


def test_lr_schedules():
    assert lr_factor("constant", 50, 100) == 1.0
    assert lr_factor("cosine", 0, 100) == 1.0 and lr_factor("cosine", 100, 100) == pytest.approx(0)
    one = [lr_factor("onecycle", s, 100) for s in range(100)]
    assert max(one) == pytest.approx(1.0) and one.index(max(one)) == 19 and one[-1] < 0.02
    assert lr_factor("step", 60, 100) == pytest.approx(0.1) and lr_factor("step", 80, 100) == pytest.approx(0.01)


def test_augmentation_is_on_device_shaped_bounded_and_repeatable():
    x = torch.rand(16, 3, 12, 12)
    cfg = {"flip": True, "shift": 2, "rotate": 15, "shear": 10, "brightness": 0.2, "contrast": 0.2, "saturation": 0.3}
    a = augment(x.clone(), cfg, torch.Generator().manual_seed(1))
    b = augment(x.clone(), cfg, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1
    assert not torch.allclose(a, x)
    flipped = augment(x.clone(), {"flip": True}, torch.Generator().manual_seed(0))
    same = [torch.equal(f, o) for f, o in zip(flipped, x)]
    mirrored = [torch.equal(f, o.flip(2)) for f, o in zip(flipped, x)]
    assert all(s or m for s, m in zip(same, mirrored)) and any(mirrored) and any(same)
    shifted = augment(x.clone(), {"shift": 3}, torch.Generator().manual_seed(0))
    assert not torch.equal(shifted, x)


def test_divergence_watch_stops_on_non_finite_loss_or_a_stuck_run():
    from cnnbench.train import DivergenceWatch

    t = {"epochs": 10, "schedule": "onecycle"}  # warm-up: the first 2 epochs
    y = np.repeat(np.arange(10), 10)  # chance = 10%
    row = lambda e, loss, acc: {"epoch": e, "train_loss": loss, "val_loss": loss, "train_acc": acc}  # noqa: E731
    watch = DivergenceWatch(t, y)
    assert not watch.check(row(1, 2.30, 0.10)) and not watch.check(row(2, 2.30, 0.10))  # warm-up: not judged
    assert not watch.check(row(3, 2.30, 0.10))  # one stuck epoch after it is not enough
    assert watch.check(row(4, 2.30, 0.105)) and watch.diverged["epoch"] == 4 and "chance" in watch.diverged["reason"]
    slow = DivergenceWatch(t, y)  # at chance but its loss still falls: a slow starter, left alone
    assert not any(slow.check(row(e, 2.30 - 0.05 * e, 0.10)) for e in range(1, 11))
    watch = DivergenceWatch(t, y)
    assert watch.check(row(1, float("nan"), 0.5)) and watch.diverged == {"epoch": 1, "reason": "non-finite loss"}
    watch = DivergenceWatch(t, y)
    assert not any(watch.check(row(e, 0.5, 0.9)) for e in range(1, 11))  # a learning run is never stopped
    noise = DivergenceWatch(t, y, random_labels=True)  # synthetic data: chance is all there is to learn
    assert not any(noise.check(row(e, 2.30, 0.10)) for e in range(1, 11))
    assert noise.check(row(11, float("inf"), 0.1))  # ...but a non-finite loss still stops it


def test_a_diverging_run_is_stopped_marked_and_written_as_strict_json(prepared, tmp_path):
    study, images, root = prepared
    spec = load_study(tiny_study(protocol={"folds": 2, "epochs": 6, "batch_size": 32, "lr": 90.0},
                                 aa_control=False)).variants["baseline"]
    path = train_variant(spec, data_path=root / "data.npz", splits_path=root / "splits.json", runs=[(0, 0)],
                         out_dir=tmp_path / "runs", weights_path=None, resume_root=tmp_path / "resume",
                         log=lambda m: None)[0]
    text = path.read_text()
    r = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON token {c}"))
    assert r["status"] == "diverged" and r["diverged"]["epoch"] < 6 and len(r["epochs"]) == r["diverged"]["epoch"]
    assert "NaN" not in text and "Infinity" not in text
