"""Config validation: every bad input stops with one message that names the variant and the field."""

from __future__ import annotations

import json

import pytest

from cnnbench.config import describe_changes, load_study
from cnnbench.errors import ConfigError
from tests.helpers import REPO, TINY_STUDY, tiny_study


def variants(**extra):
    return {**TINY_STUDY["variants"], **extra}


def error_of(study: dict) -> str:
    with pytest.raises(ConfigError) as e:
        load_study(study)
    return str(e.value)


def test_default_study_is_valid():
    study = load_study(REPO / "config" / "config.yaml")
    assert study.baseline == "baseline"
    axes = {"no_padding", "stride2", "no_pool", "bottleneck", "shortcut", "batchnorm", "dropout", "width64"}
    assert axes <= set(study.variants)
    for name in axes:  # each is a one-knob diff from the baseline
        assert len(study.changes(name)) == 1, (name, study.changes(name))
    assert study.split["folds"] == 5


def test_unknown_knob_names_variant_field_and_suggests():
    msg = error_of(tiny_study(variants=variants(wide={"base": "baseline", "widht": 64})))
    assert "variant 'wide'" in msg and "'widht'" in msg and "did you mean 'width'" in msg


def test_wrong_type():
    msg = error_of(tiny_study(variants=variants(wide={"base": "baseline", "width": "sixty"})))
    assert "variant 'wide', field 'width'" in msg and "'sixty'" in msg


def test_bad_enum_lists_choices():
    msg = error_of(tiny_study(variants=variants(x={"base": "baseline", "pool": "median"})))
    assert "field 'pool'" in msg and "max" in msg and "avg" in msg


def test_unknown_base():
    msg = error_of(tiny_study(variants=variants(x={"base": "resnet99"})))
    assert "variant 'x', field 'base'" in msg and "'resnet99'" in msg and "resnet18" in msg


def test_base_cycle():
    msg = error_of(tiny_study(variants=variants(a={"base": "b"}, b={"base": "a"})))
    assert "cycle" in msg and "a -> b -> a" in msg


def test_folds_below_two():
    msg = error_of(tiny_study(protocol={"folds": 1}))
    assert "protocol.folds" in msg and "minimum of 2" in msg


def test_geometry_below_one_pixel_is_caught_before_building():
    # 8x8 digits: 5x5 valid convs with pooling shrink 8 -> 4 -> 2 -> (2 - 4) < 1
    msg = error_of(tiny_study(variants=variants(x={"base": "baseline", "kernel_size": 5, "padding": "valid"})))
    assert "variant 'x'" in msg and "below 1x1" in msg and "padding: same" in msg


def test_groups_must_divide_channels():
    msg = error_of(tiny_study(variants=variants(x={"base": "baseline", "widths": [16, 30], "groups": 4})))
    assert "variant 'x'" in msg and "groups=4" in msg
    assert "Fix: groups: one of 1, 2 " in msg and "padding" not in msg  # the remedy for this cause, not the map's


def test_a_geometry_fix_does_not_suggest_what_the_variant_already_has():
    msg = error_of(tiny_study(variants=variants(x={"base": "baseline", "stride": 8})))
    assert "below 1x1" in msg and "Fix: a smaller stride" in msg and "padding: same" not in msg


def test_lists_per_stage_must_match_stage_count():
    msg = error_of(tiny_study(variants=variants(x={"base": "baseline", "stride": [1, 2, 2]})))
    assert "variant 'x', field 'stride'" in msg and "2 stages" in msg


def test_knob_unused_by_block_is_an_error():
    msg = error_of(tiny_study(variants=variants(x={"base": "baseline", "bottleneck_ratio": 2})))
    assert "variant 'x', field 'bottleneck_ratio'" in msg and "no effect" in msg


def test_missing_baseline_variant():
    msg = error_of(tiny_study(baseline="control"))
    assert "baseline" in msg and "'control'" in msg


def test_batch_larger_than_training_part():
    msg = error_of(tiny_study(protocol={"folds": 2, "batch_size": 1000}))
    assert "protocol.batch_size: 1000" in msg and "150" in msg  # where it was written, not the first variant


def test_same_padding_needs_odd_kernel():
    msg = error_of(tiny_study(variants=variants(x={"base": "baseline", "kernel_size": 2})))
    assert "field 'padding'" in msg and "odd kernel_size" in msg


def test_unknown_top_level_and_data_fields():
    assert "'protocl'" in error_of({**tiny_study(), "protocl": {}})
    msg = error_of(tiny_study(data={"name": "imagenet"}))
    assert "data.name" in msg and "mnist5k" in msg


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_study(bad)
    with pytest.raises(ConfigError, match="no such config file"):
        load_study(tmp_path / "missing.yaml")


def test_chain_resolution_and_nested_merge():
    study = load_study(tiny_study(
        protocol={"folds": 2, "epochs": 1, "augment": {"shift": 2}},
        variants=variants(
            flip={"base": "baseline", "augment": {"flip": True}},
            flip_wide={"base": "flip", "width": 64, "epochs": 3},
        )))
    spec = study.variants["flip_wide"]
    assert spec.chain == ("flip_wide", "flip", "baseline") and spec.arch == "cnn"
    assert spec.train["augment"]["shift"] == 2 and spec.train["augment"]["flip"] is True
    assert spec.train["epochs"] == 3 and spec.model["width"] == 64
    assert study.changes("flip_wide") == ["width: 16 -> 64", "epochs: 1 -> 3", "augment.flip: no -> yes"]


def test_unsetting_a_width_is_described_as_the_presets_width():
    """`cnnbench ablate` undoes a widening with `width: null`; a trial's report called that '32 -> none'."""
    study = load_study(tiny_study(variants=variants(
        wide={"base": "baseline", "width": 32}, back={"base": "wide", "width": None})))
    assert describe_changes(study.variants["wide"], study.variants["back"]) == ["width: 32 -> 16 (the preset's)"]
    assert describe_changes(study.variants["baseline"], study.variants["wide"]) == ["width: 16 -> 32"]
    assert describe_changes(study.variants["baseline"], study.variants["back"]) == []  # back where it started
    spelled = load_study(tiny_study(variants=variants(
        own={"base": "baseline", "width": 16}, back={"base": "own", "width": None})))
    assert describe_changes(spelled.variants["own"], spelled.variants["back"]) == []  # 16 written out, then unset


def test_spec_hash_tracks_what_the_numbers_depend_on():
    a = load_study(tiny_study()).variants["batchnorm"]
    renamed = load_study(tiny_study(variants={"baseline": {"base": "cnn"},
                                              "batchnorm": {"base": "baseline", "bn": True,
                                                            "description": "other words"}})).variants["batchnorm"]
    assert a.spec_hash == renamed.spec_hash  # descriptions do not change results
    more_epochs = load_study(tiny_study(protocol={"folds": 2, "epochs": 2})).variants["batchnorm"]
    assert a.spec_hash != more_epochs.spec_hash
    other_data = load_study(tiny_study(data={"name": "digits", "subset": 400})).variants["batchnorm"]
    assert a.spec_hash != other_data.spec_hash


def test_spec_round_trips_through_json():
    from cnnbench.config import VariantSpec

    spec = load_study(tiny_study()).variants["batchnorm"]
    assert VariantSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    for_job = VariantSpec.from_dict(json.loads(json.dumps(spec.run_dict())))
    assert for_job.spec_hash == spec.spec_hash and for_job.description == "" and for_job.chain == ()


def test_describe_changes_between_models():
    study = load_study(tiny_study(data={"name": "mnist5k"}, variants=variants(lenet={"base": "lenet"})))
    changes = describe_changes(study.variants["baseline"], study.variants["lenet"])
    assert changes[0] == "model: cnn -> lenet" and "kernel_size: 3 -> 5" in changes


def test_validation_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; from cnnbench.config import load_study; load_study('config/config.yaml'); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_aa_control_is_the_baseline_with_another_seed_offset():
    from cnnbench.config import AA_CONTROL

    study = load_study(tiny_study(aa_control=True))
    aa, base = study.variants[AA_CONTROL], study.variants["baseline"]
    assert aa.seed_offset == 1 and base.seed_offset == 0 and aa.compare_to == "baseline"
    assert (aa.model, aa.train, aa.arch) == (base.model, base.train, base.arch) and aa.spec_hash != base.spec_hash
    assert AA_CONTROL not in load_study(tiny_study(aa_control=False)).variants
    with pytest.raises(ConfigError, match="reserved"):
        load_study(tiny_study(aa_control=True, variants={**TINY_STUDY["variants"], AA_CONTROL: {"base": "cnn"}}))


def test_compare_to_defaults_to_the_base_variant_and_is_checked():
    variants = {"baseline": {"base": "cnn"}, "wide": {"base": "baseline", "width": 32},
                "wide_bn": {"base": "wide", "bn": True}, "bn": {"base": "cnn", "bn": True},
                "bn_vs_wide": {"base": "baseline", "bn": True, "compare_to": "wide"}}
    study = load_study(tiny_study(variants=variants, aa_control=False))
    assert study.references == {"wide": "baseline", "wide_bn": "wide", "bn": "baseline", "bn_vs_wide": "wide"}
    assert study.variants["bn_vs_wide"].spec_hash == study.variants["bn"].spec_hash  # presentation only
    with pytest.raises(ConfigError, match="variant 'bn', field 'compare_to'"):
        load_study(tiny_study(variants={**variants, "bn": {"base": "cnn", "compare_to": "nope"}}))


def test_synthetic_data_takes_its_sizes_from_the_section():
    study = load_study(tiny_study(data={"name": "synthetic", "shape": [1, 8, 8], "classes": 4, "n": 200}))
    assert study.data == {"name": "synthetic", "shape": [1, 8, 8], "classes": 4, "n": 200, "test_n": 10000}
    spec = study.variants["baseline"]
    assert spec.input_shape == (1, 8, 8) and spec.num_classes == 4 and spec.data == study.data
    other = load_study(tiny_study(data={"name": "synthetic", "shape": [1, 12, 12], "classes": 4, "n": 200}))
    assert other.variants["baseline"].spec_hash != spec.spec_hash  # the shape is part of what runs depend on
    default = load_study(tiny_study(data={"name": "synthetic"}))
    assert default.data["shape"] == [3, 32, 32] and default.variants["baseline"].num_classes == 10
    assert set(load_study(tiny_study()).variants["baseline"].data) == {"name", "subset"}  # real data: as before
    for data, field in (({"name": "synthetic", "shape": [3, 32]}, "data.shape"),
                        ({"name": "synthetic", "shape": [2, 32, 32]}, "data.shape"),
                        ({"name": "mnist5k", "shape": [1, 28, 28]}, "data.shape"),
                        ({"name": "synthetic", "classes": 1}, "data.classes"),
                        ({"name": "synthetic", "download": True}, "data.download")):
        assert field in error_of(tiny_study(data=data)), data
    assert load_study(tiny_study(data={"name": "synthetic", "download": False})).data["n"] == 50000


def test_cifar10_synthetic_is_cifar10_on_synthetic_data():
    synthetic, real = load_study(REPO / "config" / "cifar10-synthetic.yaml"), load_study(REPO / "config" / "cifar10.yaml")
    assert synthetic.data == {"name": "synthetic", "shape": [3, 32, 32], "classes": 10, "n": 50000, "test_n": 10000}
    assert "mean nothing" in synthetic.description and synthetic.name != real.name
    assert (synthetic.split, synthetic.execution, synthetic.baseline) == (real.split, real.execution, real.baseline)
    assert list(synthetic.variants) == list(real.variants)
    for name, spec in synthetic.variants.items():
        twin = real.variants[name]
        assert (spec.model, spec.train, spec.input_shape, spec.num_classes) == \
            (twin.model, twin.train, twin.input_shape, twin.num_classes), name


def test_model_and_training_knob_names_never_overlap():
    """A variant's knobs go to the model or to training by name: a shared name (a BatchNorm `momentum`
    beside SGD's) would silently set both."""
    from dataclasses import fields

    from cnnbench.knobs import TRAIN_KNOBS
    from cnnbench.models.convnet import ConvNetKnobs
    from cnnbench.models.external import EXTERNAL_KNOBS

    model = {f.name for f in fields(ConvNetKnobs)}
    assert model & set(TRAIN_KNOBS) == set()
    assert set(EXTERNAL_KNOBS) & set(TRAIN_KNOBS) == set()
