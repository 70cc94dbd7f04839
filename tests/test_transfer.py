"""Transfer learning on tiny real data: label subsets, labels per class, pretraining once, freeze and
fine-tune, provenance, and the workflow's pretrain job."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from cnnbench.config import load_study
from cnnbench.data import keep_labels, load_source, make_splits, save_cache, save_splits
from cnnbench.errors import ConfigError
from cnnbench.runner import pretrain, train_variant
from cnnbench.train import labels_per_class, make_optimizer, start_from
from tests.helpers import write_yaml

CPU = torch.device("cpu")
TRANSFER = {
    "study": "tinytransfer",
    "data": {"name": "digits", "labels": [5, 6, 7, 8, 9]},
    "pretrain": {"low": {"variant": "scratch", "data": {"name": "digits", "labels": [0, 1, 2, 3, 4]}, "epochs": 3}},
    "protocol": {"folds": 2, "seeds": [0], "epochs": 2, "batch_size": 16, "lr": 0.05},
    "execution": {"device": "cpu", "threads": 1},
    "baseline": "scratch",
    "variants": {
        "scratch": {"base": "cnn", "labels_per_class": 20},
        "freeze": {"base": "scratch", "pretrained": "low", "freeze": True},
        "finetune": {"base": "scratch", "pretrained": "low", "finetune_lr_factor": 0.1},
    },
}


def test_a_label_subset_is_relabelled_in_order():
    full = load_source({"name": "digits"})
    part = keep_labels(full, [7, 3])
    assert set(part.y) == {0, 1} and part.classes == ["7", "3"]
    assert (part.y == 0).sum() == (full.y == 7).sum() and (part.y == 1).sum() == (full.y == 3).sum()


def test_labels_per_class_is_the_same_nested_draw_for_every_variant():
    y = np.repeat(np.arange(5), 40)
    train = np.arange(0, 200, 2)  # 20 per class
    ten, again, fifteen = labels_per_class(train, y, 10), labels_per_class(train, y, 10), labels_per_class(train, y, 15)
    assert np.array_equal(ten, again) and np.bincount(y[ten]).tolist() == [10] * 5
    assert set(ten) <= set(fifteen) <= set(train)
    assert np.array_equal(labels_per_class(train, y, 100), train)  # fewer than asked: all of them


def test_pretraining_is_part_of_the_identity_and_checked():
    study = load_study(TRANSFER)
    source = study.pretrain["low"]
    assert source.num_classes == 5 and source.data["labels"] == [0, 1, 2, 3, 4] and source.train["epochs"] == 3
    assert study.variants["freeze"].pretrain["spec_hash"] == source.spec_hash
    longer = load_study({**TRANSFER, "pretrain": {"low": {**TRANSFER["pretrain"]["low"], "epochs": 4}}})
    assert longer.variants["freeze"].spec_hash != study.variants["freeze"].spec_hash  # a new source retrains
    assert longer.variants["scratch"].spec_hash == study.variants["scratch"].spec_hash
    with pytest.raises(ConfigError, match="'nope' is not an entry of the study's pretrain section"):
        load_study({**TRANSFER, "variants": {**TRANSFER["variants"], "x": {"base": "scratch", "pretrained": "nope"}}})
    with pytest.raises(ConfigError, match="variant 'x', field 'freeze': acts on pretrained weights, and the variant has none"):
        load_study({**TRANSFER, "variants": {**TRANSFER["variants"], "x": {"base": "scratch", "freeze": True}}})
    with pytest.raises(ConfigError, match="variant 'x', field 'finetune_lr_factor': acts on pretrained weights"):
        load_study({**TRANSFER, "variants": {**TRANSFER["variants"], "x": {"base": "scratch", "finetune_lr_factor": 0.1}}})
    with pytest.raises(ConfigError, match="its network differs from the pretrained one .* in bn"):
        load_study({**TRANSFER, "variants": {**TRANSFER["variants"],
                                             "x": {"base": "scratch", "pretrained": "low", "bn": True}}})


def test_pretraining_reads_its_source_from_where_the_config_says(tmp_path):
    """The source's file path is not part of the spec (only the file's sha256 is), so the pretrain job is
    handed the entry's whole data section: an npz source is read from its path, and a changed file retrains."""
    digits = load_source({"name": "digits", "labels": [0, 1, 2, 3, 4]})
    path = tmp_path / "low.npz"
    np.savez(path, x=digits.x[:, 0], y=digits.y)
    cfg = {**TRANSFER, "pretrain": {"low": {"variant": "scratch", "data": {"name": "npz", "path": str(path)},
                                            "epochs": 1}}}
    study = load_study(cfg)
    source = study.pretrain["low"]
    assert "path" not in source.data and source.data["sha256"]
    assert study.pretrain_sources["low"]["path"] == str(path)
    meta = pretrain(source, out=tmp_path / "low.pt", source=study.pretrain_sources["low"])
    assert meta["n_train"] == len(digits.y) - -(-len(digits.y) // 10)  # all of the file but a 10% check
    with pytest.raises(ConfigError, match="pretrain.low.data.path: '/nope.npz' is not a file"):
        load_study({**cfg, "pretrain": {"low": {**cfg["pretrain"]["low"], "data": {"name": "npz", "path": "/nope.npz"}}}})
    with pytest.raises(Exception, match="is not the data the spec was made for"):
        pretrain(source, out=tmp_path / "other.pt", source={"name": "digits", "labels": [0, 1, 2, 3, 4]})
    np.savez(path, x=digits.x[::-1, 0], y=digits.y[::-1])
    assert load_study(cfg).variants["freeze"].spec_hash != study.variants["freeze"].spec_hash


def test_the_finetune_lr_factor_reaches_the_optimiser_and_frozen_layers_are_left_out():
    study = load_study(TRANSFER)
    from cnnbench.train import init_model

    spec = study.variants["finetune"]
    model = init_model(spec, 0, CPU)
    groups = make_optimizer(model, spec.train).param_groups
    head = {id(p) for n, p in model.named_parameters() if n.startswith("head.")}
    for g in groups:
        in_head = {id(p) in head for p in g["params"]}
        assert len(in_head) == 1
        assert g["lr"] == pytest.approx(0.05 if in_head == {True} else 0.005)
    frozen = init_model(study.variants["freeze"], 0, CPU)
    start_from(frozen, model.state_dict(), freeze=True)
    trained = {id(p) for g in make_optimizer(frozen, study.variants["freeze"].train).param_groups for p in g["params"]}
    assert trained == {id(p) for n, p in frozen.named_parameters() if n.startswith("head.")}


def test_a_frozen_body_trains_in_eval_mode_keeping_its_batchnorm_statistics():
    """A frozen body is a fixed feature extractor: BatchNorm normalises with the pretrained statistics (not
    the batch's) and keeps them, dropout in the body is off; the head alone trains, in train mode."""
    from cnnbench.images import Images
    from cnnbench.train import init_model, train_epoch

    cfg = {**TRANSFER, "variants": {"scratch": {"base": "cnn", "bn": True, "dropout": 0.5},
                                    "freeze": {"base": "scratch", "pretrained": "low", "freeze": True}}}
    spec = load_study(cfg).variants["freeze"]
    source = init_model(spec, 0, CPU)
    for m in source.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()  # pretrained statistics that a batch's would not reproduce
    model = init_model(spec, 1, CPU)
    start_from(model, source.state_dict(), freeze=True)
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head.")}
    x = torch.randint(0, 256, (64, *spec.input_shape), dtype=torch.uint8)
    y = torch.randint(0, spec.num_classes, (64,))
    opt = make_optimizer(model, spec.train)
    train_epoch(model, opt, None, Images(x, *Images.stats(x)), y, torch.randperm(64), 16, 4)
    assert not model.features.training and model.head.training
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # running stats included


@pytest.fixture(scope="module")
def transferred(tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer")
    study = load_study(TRANSFER)
    weights = root / "low.pt"
    meta = pretrain(study.pretrain["low"], out=weights)
    images = load_source(study.data, 0)
    save_cache(images, root / "data.npz")
    save_splits(root / "splits.json", make_splits(images.y, 2, 1, 0), images.y, 2, 1, 0)
    out = {}
    for name in ("freeze", "finetune", "scratch"):
        [path] = train_variant(study.variants[name], data_path=root / "data.npz", splits_path=root / "splits.json",
                               runs=[(0, 0)], out_dir=root / name, weights_path=root / f"{name}.pt",
                               resume_root=root / "resume", pretrained_path=weights if name != "scratch" else None)
        out[name] = json.loads(path.read_text())
    return study, weights, meta, out, root


def test_frozen_layers_are_bit_identical_after_transfer_training(transferred):
    study, weights, meta, out, root = transferred
    source = torch.load(weights, weights_only=True)["state_dict"]
    after = torch.load(root / "freeze.pt", weights_only=True)["state_dict"]
    body = [k for k in source if not k.startswith("head.")]
    assert body and all(torch.equal(source[k], after[k]) for k in body)
    assert not torch.equal(source["head.fc.weight"], after["head.fc.weight"]) if "head.fc.weight" in source else True
    tuned = torch.load(root / "finetune.pt", weights_only=True)["state_dict"]
    assert any(not torch.equal(source[k], tuned[k]) for k in body)  # fine-tuning moves them


def test_every_transfer_run_records_where_its_weights_came_from(transferred):
    study, weights, meta, out, root = transferred
    from cnnbench.data import file_hash

    for name in ("freeze", "finetune"):
        p = out[name]["pretrained"]
        assert p["sha256"] == file_hash(weights) and p["name"] == "low" and p["source_val_acc"] == meta["val_acc"]
        assert out[name]["data"]["n_train"] == 5 * 20  # labels_per_class: 20 of each of the 5 target classes
    assert "pretrained" not in out["scratch"] and meta["val_acc"] > 0.5  # the source task was learned


def test_the_workflow_pretrains_once_for_all_folds(tmp_path):
    import subprocess
    import sys

    from tests.helpers import REPO

    write_yaml(tmp_path / "study.yaml", TRANSFER)
    out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
                          "--configfile", str(tmp_path / "study.yaml"), "--cores", "2", "-n"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    assert re.search(r"pretrain\s+1\b", text) and "results/tinytransfer/pretrained/low.pt" in text


def test_the_timing_job_measures_a_frozen_variant_as_it_trains(transferred):
    """Speed and memory of a transfer variant, without its pretrained file: a frozen body computes no weight
    gradients, and the timing job freezes it too."""
    from cnnbench.timing import time_variant

    study, weights, meta, out, root = transferred
    t = time_variant(study.variants["freeze"], data_path=root / "data.npz", splits_path=root / "splits.json",
                     device="cpu", repeats=2)
    assert t["train_img_per_s"] > 0 and t["train_mb"] > 0


def test_verify_reruns_a_transfer_run_from_its_pretrained_weights(transferred):
    """cnnbench verify finds the pretrained file next to the data cache, as the workflow lays it out."""
    import shutil

    from cnnbench.verify import verify

    study, weights, meta, out, root = transferred
    (root / "pretrained").mkdir(exist_ok=True)
    shutil.copyfile(weights, root / "pretrained" / "low.pt")
    record = root / "finetune" / "fold0-seed0.json"
    verdict = verify(record, data=root / "data.npz", splits=root / "splits.json")
    assert verdict.match, str(verdict)


def test_a_compiled_wrapper_keeps_the_frozen_body_in_eval_mode():
    """The training loop is handed torch.compile's wrapper, which holds the network one level down."""
    from cnnbench.train import init_model, train_mode

    spec = load_study(TRANSFER).variants["freeze"]
    model = init_model(spec, 0, CPU)
    start_from(model, model.state_dict(), freeze=True)

    class Wrapper(torch.nn.Module):  # what torch.compile returns: the module as `_orig_mod`
        def __init__(self, m):
            super().__init__()
            self._orig_mod = m

    train_mode(Wrapper(model))
    assert not model.features.training and model.head.training
