"""Malformed study configs: each one stops at validation with one line that names the file, the variant
(where there is one) and the field, and never with a traceback. Most cases call `load_study(path)` (fast);
a representative subset goes through the real workflow with `snakemake -n`. Also the positive side:
YAML 1.2 floats and the shipped studies within their budget."""

from __future__ import annotations

import copy
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import yaml

from cnnbench import budget as B
from cnnbench.config import load_study, read_config
from cnnbench.errors import ConfigError
from tests.helpers import REPO, TINY_STUDY

# The reference machine of the README's timings: 2 CPU cores (memory: this host's), whatever runs the tests.
CPU2 = B.Machine("cpu", 2, B.host_ram_bytes(), "this host's RAM", 2 * B.CPU_MACS_PER_S_PER_CORE)
GPU16 = B.detect_machine({"device": "cuda"})  # the assumed 16 GB card


def raw(text: str) -> str:
    """A value written into the YAML as is (1e-3, .nan, 2.0), not as Python's dump of it."""
    return f"@@{text}@@"


def study_text(study: dict) -> str:
    text = yaml.safe_dump(study, sort_keys=False)
    return re.sub(r"'?@@(.*?)@@'?", r"\1", text)


def with_changes(*, protocol: dict | None = None, variant: dict | None = None, data: dict | None = None,
                 execution: dict | None = None, top: dict | None = None, variants: dict | None = None) -> str:
    """TINY_STUDY with a protocol/data/execution update, and `variant` added as variant 'x' (base baseline)."""
    study = copy.deepcopy(TINY_STUDY)
    study["protocol"].update(protocol or {})
    if data is not None:
        study["data"] = data
    study["execution"].update(execution or {})
    study.update(top or {})
    if variants is not None:
        study["variants"] = variants
    if variant is not None:
        study["variants"]["x"] = {"base": "baseline", **variant}
    return study_text(study)


BASE_TEXT = study_text(TINY_STUDY)


@dataclass
class Case:
    id: str
    text: str
    expect: tuple[str, ...]  # every one must appear in the message
    budget: object = None  # passed to load_study(budget=...)


def dup(text: str, after: str, line: str) -> str:
    """Insert `line` after the first line equal to `after` (for keys written twice)."""
    lines = text.splitlines()
    i = lines.index(after)
    return "\n".join(lines[:i + 1] + [line] + lines[i + 1:]) + "\n"


CASES = [
    # --- types: integers are integers, numbers are numbers, no bool for an int, no list for a scalar ---
    Case("folds_2.5", with_changes(protocol={"folds": raw("2.5")}), ("protocol.folds", "2.5", "whole number")),
    Case("epochs_2.5_in_variant", with_changes(variant={"epochs": raw("2.5")}),
         ("variant 'x', field 'epochs'", "whole number", "2 or 3")),
    Case("batch_size_64.5", with_changes(protocol={"batch_size": raw("64.5")}), ("protocol.batch_size", "whole number")),
    Case("kernel_size_3.5", with_changes(variant={"kernel_size": raw("3.5")}),
         ("variant 'x', field 'kernel_size'", "whole number")),
    Case("stride_list_2.5", with_changes(variant={"stride": [1, raw("2.5")]}),
         ("variant 'x', field 'stride.1'", "whole number")),
    Case("subset_float", with_changes(data={"name": "digits", "subset": raw("300.5")}), ("data.subset", "whole number")),
    # 10.0 in an integer field: a decimal where a count goes is a slip (often a value in the wrong field)
    Case("epochs_10.0", with_changes(protocol={"epochs": raw("10.0")}),
         ("protocol.epochs: 10.0 is a decimal number, but this field counts something; write the integer 10",)),
    Case("folds_1e1", with_changes(protocol={"folds": raw("1e1")}), ("protocol.folds: 10.0 is a decimal number", "10")),
    Case("kernel_size_3.0_in_variant", with_changes(variant={"kernel_size": raw("3.0")}),
         ("variant 'x', field 'kernel_size'", "decimal number", "write the integer 3")),
    Case("widths_entry_8.0", with_changes(variant={"widths": [raw("8.0"), 16]}),
         ("variant 'x', field 'widths.0'", "write the integer 8")),
    Case("seed_0.0", with_changes(protocol={"seeds": [raw("0.0"), 1]}), ("protocol.seeds.0", "write the integer 0")),
    # ... and where it is also out of range, the fix it names is one that passes (not 'write 1000000000')
    Case("epochs_1e9", with_changes(protocol={"epochs": raw("1e9")}),
         ("protocol.epochs: 1000000000.0 is a decimal number and above the upper bound of 10000; write an integer "
          "of at most 10000",)),
    Case("batch_size_1e300", with_changes(variant={"batch_size": raw("1e300")}),
         ("variant 'x', field 'batch_size': 1e+300 is a decimal number and above the upper bound of 65536",)),
    Case("folds_1.0", with_changes(protocol={"folds": raw("1.0")}),
         ("protocol.folds: 1.0 is a decimal number and below the minimum of 2; write an integer of at least 2",)),
    Case("width_text", with_changes(variant={"width": "sixty"}), ("variant 'x', field 'width'", "'sixty'")),
    Case("width_quoted", with_changes(variant={"width": "64"}),
         ("variant 'x', field 'width': '64' is text, not a number; write it without quotes",)),
    Case("lr_text", with_changes(protocol={"lr": "fast"}), ("protocol.lr", "'fast'", "number")),
    Case("epochs_quoted", with_changes(protocol={"epochs": "10"}), ("protocol.epochs", "'10' is text, not an integer")),
    Case("bn_text", with_changes(variant={"bn": "yes please"}), ("variant 'x', field 'bn'", "is text, not true or false")),
    Case("epochs_bool", with_changes(protocol={"epochs": True}), ("protocol.epochs", "true is true/false, not an integer")),  # YAML's spelling
    Case("width_bool", with_changes(variant={"width": True}), ("variant 'x', field 'width'", "true")),
    Case("folds_list", with_changes(protocol={"folds": [2]}), ("protocol.folds", "[2]", "integer")),
    Case("lr_list", with_changes(variant={"lr": [0.1]}), ("variant 'x', field 'lr'", "[0.1]")),
    Case("base_list", with_changes(variant={"base": ["cnn"]}), ("variant 'x', field 'base'", "is a list, not text")),
    Case("seeds_scalar", with_changes(protocol={"seeds": 0}), ("protocol.seeds", "is an integer, not a list")),
    Case("variant_key_int", BASE_TEXT + "  1:\n    base: cnn\n", ("variants", "key 1", "quote it")),
    Case("seeds_repeated", with_changes(protocol={"seeds": [0, 0]}),
         ("protocol.seeds", "[0, 0] lists an entry more than once; give each one once")),
    Case("variants_empty", with_changes(top={"variants": None}), ("variants: is empty; give a mapping",)),
    Case("augment_list", with_changes(variant={"augment": ["flip"]}),
         ("variant 'x', field 'augment'", "is a list, not a mapping; give a mapping such as {flip: <value>}")),
    # --- ranges ---
    Case("folds_1", with_changes(protocol={"folds": 1}), ("protocol.folds", "minimum of 2")),
    Case("lr_0", with_changes(protocol={"lr": 0}), ("protocol.lr", "0 must be more than 0")),
    Case("dropout_1", with_changes(variant={"dropout": 1.0}), ("variant 'x', field 'dropout'", "1.0 must be less than 1; give a number below 1")),
    Case("momentum_negative", with_changes(variant={"momentum": -0.1}), ("variant 'x', field 'momentum'", "-0.1")),
    Case("rotate_200", with_changes(variant={"augment": {"rotate": 200}}),
         ("variant 'x', field 'augment.rotate'", "200")),
    Case("batch_above_fold", with_changes(protocol={"batch_size": 1000}), ("protocol.batch_size: 1000 is larger", "150")),
    # --- schema words turned into fixes ---
    Case("no_variants", with_changes(variants={}), ("variants: is empty; add one, e.g. baseline: {base: cnn}",)),
    Case("one_label", with_changes(data={"name": "digits", "labels": [5]}),
         ("data.labels: [5] has 1 entries; give at least 2",)),
    Case("variant_name_with_space", with_changes(variants={"baseline": {"base": "cnn"}, "width 64": {"base": "cnn"}}),
         ("variants: 'width 64' is not a usable name; use letters, digits",)),
    Case("variants_missing", with_changes(top={"variants": None}).replace("variants: null\n", ""),
         ("top level: 'variants' is missing; add it",)),
    # --- a real field in the wrong section: where it goes, not "did you mean" the same name ---
    Case("folds_at_top", with_changes(top={"folds": 3}), ("top level: 'folds' does not go here; it belongs under protocol:",)),
    Case("device_in_protocol", with_changes(protocol={"device": "cpu"}),
         ("protocol: 'device' does not go here; it belongs under execution:",)),
    Case("folds_in_variant", with_changes(variant={"folds": 3}),
         ("variant 'x': 'folds' does not go here; it belongs under protocol:",)),
    Case("width_in_protocol", with_changes(protocol={"width": 32}), ("protocol: 'width'", "belongs in a variant")),
    Case("augment_typo", with_changes(variant={"augment": {"flipp": True}}),
         ("variant 'x', field 'augment'", "'flipp' (did you mean 'flip'?)")),
    Case("epochs_in_augment", with_changes(protocol={"augment": {"epochs": 3}}),
         ("protocol.augment: 'epochs' does not go here; it belongs under protocol:",)),
    Case("typo_in_a_variant_called_augment",
         with_changes(variants={"baseline": {"base": "cnn"}, "augment": {"base": "baseline", "widht": 8}}),
         ("variant 'augment'", "'widht' (did you mean 'width'?)")),
    Case("unknown_top_key_no_far_fetched_hint", with_changes(top={"anchors": {"a": 1}}),
         ("top level: unknown field 'anchors'; see",)),
    Case("pool_size_without_pool", with_changes(variant={"pool": "none", "pool_size": 3}),
         ("variant 'x', field 'pool_size': has no effect with pool: none",)),
    Case("nesterov_with_adam", with_changes(variant={"optimizer": "adam", "nesterov": True}),
         ("variant 'x', field 'nesterov': has no effect with optimizer 'adam'",)),
    Case("batch_above_labels_per_class", with_changes(variant={"labels_per_class": 2}),  # 20 images, batch 32
         ("variant 'x', field 'labels_per_class' with protocol.batch_size: 32",
          "20 training images of a fold (2 per class, labels_per_class)", "at most 20")),
    Case("batch_above_protocol_labels_per_class", with_changes(protocol={"labels_per_class": 2}),
         ("study.yaml: protocol.batch_size: 32 is larger than the 20 training images",)),
    Case("labels_per_class_keeps_all", with_changes(variant={"labels_per_class": 1000}),
         ("variant 'x', field 'labels_per_class': 1000 per class keeps every training image of a fold",
          "use fewer")),
    Case("labels_per_class_keeps_all_of_balanced_classes", with_changes(variant={"labels_per_class": 20}),
         ("variant 'x', field 'labels_per_class': 20 per class keeps every training image of a fold",
          "its largest class has about 17 there")),  # digits: 150 training images, ~15 per class
    Case("subset_above_the_data", with_changes(data={"name": "digits", "subset": 100000}),
         ("data.subset: 100000 is more than the 1797 images of digits", "remove subset")),
    Case("folds_above_smallest_class", with_changes(protocol={"folds": 40}),
         ("protocol.folds", "smallest class", "use at most 29 folds")),
    # --- non-finite numbers ---
    Case("lr_nan", with_changes(protocol={"lr": raw(".nan")}), ("protocol.lr", ".nan", "finite")),
    Case("lr_inf_in_variant", with_changes(variant={"lr": raw(".inf")}), ("variant 'x', field 'lr'", ".inf", "finite")),
    Case("lr_minus_inf", with_changes(protocol={"lr": raw("-.inf")}), ("protocol.lr", "-.inf", "finite")),
    Case("dropout_nan", with_changes(variant={"dropout": raw(".nan")}),
         ("variant 'x', field 'dropout'", ".nan", "finite")),
    Case("momentum_nan", with_changes(protocol={"momentum": raw(".NaN")}), ("protocol.momentum", ".nan", "finite")),
    Case("weight_decay_inf", with_changes(variant={"weight_decay": raw(".inf")}),
         ("variant 'x', field 'weight_decay'", ".inf", "finite")),
    Case("l1_nan", with_changes(protocol={"l1": raw(".nan")}), ("protocol.l1", "finite")),
    Case("label_smoothing_nan", with_changes(variant={"label_smoothing": raw(".nan")}),
         ("variant 'x', field 'label_smoothing'", "finite")),
    Case("brightness_nan", with_changes(variant={"augment": {"brightness": raw(".nan")}}),
         ("variant 'x', field 'augment.brightness'", "finite")),
    Case("epochs_inf", with_changes(protocol={"epochs": raw(".inf")}), ("protocol.epochs", ".inf", "finite")),
    Case("max_hours_inf", with_changes(execution={"max_hours": raw(".inf")}), ("execution.max_hours", "finite")),
    Case("jobs_per_gpu_word", with_changes(execution={"jobs_per_gpu": "many"}),
         ("execution.jobs_per_gpu: 'many' is not allowed; expected 'auto' or an integer",)),
    Case("jobs_per_gpu_quoted", with_changes(execution={"jobs_per_gpu": "8"}),
         ("execution.jobs_per_gpu: '8' is text, not a number; write it without quotes",)),
    Case("compile_word", with_changes(execution={"compile": "fast"}),
         ("execution.compile: 'fast' is not allowed; choose one of false, true, max-autotune",)),
    Case("jobs_per_gpu_bool", with_changes(execution={"jobs_per_gpu": True}),
         ("execution.jobs_per_gpu: true is not allowed; expected 'auto' or an integer",)),
    Case("runs_per_job_word", with_changes(execution={"runs_per_job": "each"}),
         ("execution.runs_per_job: 'each' is not allowed; expected 'all' or an integer",)),
    # --- keys written twice ---
    Case("duplicate_top_level", BASE_TEXT + "study: other\n", ("top level", "'study'", "written twice", "lines 1 and")),
    Case("duplicate_knob_in_variant", dup(BASE_TEXT, "    bn: true", "    bn: false"),
         ("variant 'batchnorm', field 'bn'", "written twice")),
    Case("duplicate_variant", BASE_TEXT + "  dropout:\n    base: baseline\n    dropout: 0.2\n",
         ("variant 'dropout' is written twice", "lines")),
    Case("duplicate_protocol_key", dup(BASE_TEXT, "  lr: 0.05", "  lr: 0.1"), ("protocol.lr", "written twice")),
    # --- unknown names ---
    Case("unknown_knob", with_changes(variant={"widht": 64}), ("variant 'x'", "'widht'", "did you mean 'width'")),
    Case("unknown_model", with_changes(variant={"base": "resnet99"}), ("variant 'x', field 'base'", "'resnet99'")),
    Case("unknown_dataset", with_changes(data={"name": "imagenet"}), ("data.name", "'imagenet'", "mnist5k")),
    Case("unknown_top_level", with_changes(top={"protocl": {}}), ("'protocl'", "did you mean 'protocol'")),
    Case("unknown_optimizer", with_changes(variant={"optimizer": "sgdd"}), ("variant 'x', field 'optimizer'", "adam")),
    Case("unknown_compare_to", with_changes(variant={"compare_to": "nope"}), ("variant 'x', field 'compare_to'", "'nope'")),
    Case("unknown_execution_field", with_changes(execution={"max_hour": 2}), ("'max_hour'", "did you mean 'max_hours'")),
    # --- base cycles ---
    Case("cycle_of_two", with_changes(variants={"baseline": {"base": "cnn"}, "a": {"base": "b"}, "b": {"base": "a"}}),
         ("field 'base'", "cycle", "a -> b -> a")),
    Case("cycle_of_three", with_changes(variants={"baseline": {"base": "cnn"}, "a": {"base": "c"}, "b": {"base": "a"},
                                                  "c": {"base": "b"}}), ("field 'base'", "cycle")),
    # --- impossible geometry ---
    Case("below_one_pixel", with_changes(variant={"kernel_size": 5, "padding": "valid"}), ("variant 'x'", "below 1x1")),
    Case("groups_do_not_divide", with_changes(variant={"widths": [16, 30], "groups": 4}), ("variant 'x'", "groups=4")),
    Case("stride_list_length", with_changes(variant={"stride": [1, 2, 2]}), ("variant 'x', field 'stride'", "2 stages")),
    Case("same_padding_even_kernel", with_changes(variant={"kernel_size": 4}),
         ("variant 'x', field 'padding'", "odd kernel_size")),
    Case("padding_beyond_kernel", with_changes(variant={"padding": 5}),
         ("variant 'x', field 'padding'", "at most 2")),
    Case("shift_beyond_image", with_changes(variant={"augment": {"shift": 8}}),
         ("variant 'x', field 'augment.shift'", "below 8")),
    # --- sizes ---
    Case("width_1000000", with_changes(variant={"width": 1000000}),
         ("variant 'x', field 'width'", "upper bound of 8192", "use at most 8192")),
    Case("padding_1000", with_changes(variant={"padding": 1000}),
         ("variant 'x', field 'padding'", "upper bound of 256", "use at most 256")),
    Case("epochs_10^9", with_changes(protocol={"epochs": 1000000000}),
         ("protocol.epochs", "1000000000", "upper bound of 10000", "use at most 10000")),
    Case("widths_100000", with_changes(variant={"widths": [16, 100000]}),
         ("variant 'x', field 'widths.1'", "upper bound of 8192")),
    Case("hidden_1000000", with_changes(variant={"hidden": [1000000]}),
         ("variant 'x', field 'hidden.0'", "upper bound of 65536")),
    Case("kernel_size_101", with_changes(variant={"kernel_size": 101}),
         ("variant 'x', field 'kernel_size'", "upper bound of 63")),
    Case("batch_size_10^6", with_changes(variant={"batch_size": 1000000}),
         ("variant 'x', field 'batch_size'", "upper bound of 65536")),
    Case("blocks_10000", with_changes(variant={"blocks": 10000}), ("variant 'x', field 'blocks'", "upper bound of 512")),
    Case("seeds_101", with_changes(protocol={"seeds": list(range(101))}), ("protocol.seeds", "101 entries", "at most 100")),
    Case("seed_2_64", with_changes(protocol={"seeds": [2**64]}), ("protocol.seeds.0", "upper bound of 4294967295")),
    # --- budget: memory and compute, against a stated machine ---
    Case("memory_activations",
         with_changes(data={"name": "mnist5k"}, variant={"width": 4096, "pool": "none", "batch_size": 2048},
                      execution={"max_memory_gb": 64}),
         ("variant 'x', field 'batch_size'", "estimated training memory", "execution.max_memory_gb (64 GB)",
          "lower batch_size"), budget=CPU2),
    Case("memory_limit_setting", with_changes(execution={"max_memory_gb": 0.1}),
         ("execution.max_memory_gb: variant 'baseline'", "exceeds the 100 MB of execution.max_memory_gb",
          "torch alone"), budget=CPU2),
    Case("jobs_per_gpu_over_memory", with_changes(execution={"jobs_per_gpu": 64, "max_memory_gb": 8}),
         ("execution.jobs_per_gpu: 64 jobs of the largest variant", "more than the 8.0 GB of execution.max_memory_gb",
          "set jobs_per_gpu:", "(or auto)"), budget=GPU16),
    Case("max_hours", with_changes(data={"name": "mnist5k"}, protocol={"folds": 5, "epochs": 100},
                                   execution={"max_hours": 0.05}),
         ("execution.max_hours", "estimated at", "2 CPU cores", "more than max_hours = 0.05", "reduce epochs"),
         budget=CPU2),
    # --- data folders, checked before any job ---
    Case("imagefolder_missing_root", with_changes(data={"name": "imagefolder", "root": "/nonexistent", "image_size": 32}),
         ("data.root", "'/nonexistent'", "does not exist")),
    Case("imagefolder_without_image_size", with_changes(data={"name": "imagefolder", "root": "/tmp"}),
         ("data.image_size", "image_size: 32")),
    Case("cifar10_without_root", with_changes(data={"name": "cifar10"}), ("data.root", "cifar10", "download: true")),
    Case("cifar10_missing_root", with_changes(data={"name": "cifar10", "root": "/nonexistent"}),
         ("data.root", "'/nonexistent'", "does not exist", "download: true")),
    Case("image_size_for_digits", with_changes(data={"name": "digits", "image_size": 32}),
         ("data.image_size", "only an imagefolder study")),
    # --- synthetic data: sizes from the section, nothing to read ---
    Case("synthetic_shape_too_short", with_changes(data={"name": "synthetic", "shape": [3, 32]}),
         ("data.shape", "[3, 32]", "has 2 entries; give at least 3")),
    Case("synthetic_shape_too_long", with_changes(data={"name": "synthetic", "shape": [3, 32, 32, 1]}),
         ("data.shape", "at most 3")),
    Case("synthetic_shape_channels", with_changes(data={"name": "synthetic", "shape": [2, 32, 32]}),
         ("data.shape", "2 channels", "1 (grey) or 3 (RGB)")),
    Case("synthetic_shape_side", with_changes(data={"name": "synthetic", "shape": [3, 2, 32]}),
         ("data.shape", "2x32", "at least 4")),
    Case("synthetic_shape_2.5", with_changes(data={"name": "synthetic", "shape": [3, raw("32.5"), 32]}),
         ("data.shape.1", "whole number")),
    Case("synthetic_shape_huge", with_changes(data={"name": "synthetic", "shape": [3, 4096, 32]}),
         ("data.shape.1", "upper bound of 2048")),
    Case("shape_for_mnist5k", with_changes(data={"name": "mnist5k", "shape": [1, 28, 28]}),
         ("data.shape", "only synthetic data uses it", "1x28x28", "remove it")),
    Case("classes_for_digits", with_changes(data={"name": "digits", "classes": 10}),
         ("data.classes", "only synthetic data uses it")),
    Case("n_for_imagefolder", with_changes(data={"name": "imagefolder", "root": "/tmp", "image_size": 8, "n": 100}),
         ("data.n", "only synthetic data uses it", "image_size")),
    Case("synthetic_classes_1", with_changes(data={"name": "synthetic", "classes": 1}),
         ("data.classes", "minimum of 2")),
    Case("synthetic_n_10", with_changes(data={"name": "synthetic", "n": 10}), ("data.n", "minimum of 20")),
    Case("synthetic_n_10^12", with_changes(data={"name": "synthetic", "n": 10**12}),
         ("data.n", "upper bound of 100000000")),
    Case("synthetic_n_below_2_folds", with_changes(data={"name": "synthetic", "n": 20, "classes": 2},
                                                   protocol={"folds": 11}),
         ("protocol.folds", "at least 22 images", "the data has 20", "raise data.n")),
    Case("synthetic_classes_beyond_folds", with_changes(data={"name": "synthetic", "n": 100, "classes": 50},
                                                        protocol={"folds": 3}),
         ("protocol.folds", "smallest class of synthetic has about 2", "data.n")),
    Case("synthetic_test_n_negative", with_changes(data={"name": "synthetic", "test_n": -1}),
         ("data.test_n", "minimum of 0")),
    Case("synthetic_with_root", with_changes(data={"name": "synthetic", "root": "data/cifar10"}),
         ("data.root", "synthetic data does not use it", "remove root")),
    Case("synthetic_with_subset", with_changes(data={"name": "synthetic", "subset": 1000}),
         ("data.subset", "synthetic data does not use it", "data.n")),
    Case("synthetic_with_image_size", with_changes(data={"name": "synthetic", "image_size": 32}),
         ("data.image_size", "data.shape")),
    # --- the file itself ---
    Case("not_yaml", "study: [unclosed\n", ("not valid YAML", "line 2")),
    Case("not_a_mapping", "- just\n- a list\n", ("must be a mapping",)),
]


def load_error(path: Path, budget=None) -> str:
    with pytest.raises(ConfigError) as e:
        load_study(path, budget=budget)
    return str(e.value)


def assert_good_message(msg: str, path: Path, expect: tuple[str, ...]) -> None:
    assert "\n" not in msg and "Traceback" not in msg, msg
    assert msg.startswith(f"{path}: "), msg
    missing = [e for e in expect if e not in msg]
    assert not missing, f"{missing} not in: {msg}"


def test_corpus_is_large_and_covers_every_category():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_config_is_one_line_naming_the_field(case: Case, tmp_path: Path):
    path = tmp_path / "study.yaml"
    path.write_text(case.text)
    assert_good_message(load_error(path, case.budget), path, case.expect)


def test_imagefolder_with_one_class_folder(tmp_path: Path):
    (tmp_path / "images" / "cat").mkdir(parents=True)
    path = tmp_path / "study.yaml"
    path.write_text(with_changes(data={"name": "imagefolder", "root": str(tmp_path / "images"), "image_size": 16}))
    assert_good_message(load_error(path), path, ("data.root", "1 class folder", "at least 2"))


def test_imagefolder_with_an_empty_class_folder(tmp_path: Path):
    """Caught before any job (torchvision's ImageFolder would fail inside the first job), with the same
    image extensions torchvision looks for."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    from cnnbench.config import IMAGE_EXTENSIONS

    assert IMAGE_EXTENSIONS == IMG_EXTENSIONS
    for name in ("cat", "dog"):
        (tmp_path / "images" / name).mkdir(parents=True)
    (tmp_path / "images" / "cat" / "a.PNG").write_bytes(b"")
    (tmp_path / "images" / "dog" / "notes.txt").write_text("no image here")
    path = tmp_path / "study.yaml"
    path.write_text(with_changes(data={"name": "imagefolder", "root": str(tmp_path / "images"), "image_size": 16}))
    assert_good_message(load_error(path), path, ("data.root", "dog", "holds no image"))
    (tmp_path / "images" / "dog" / "b.png").write_bytes(b"")
    (tmp_path / "images" / ".ipynb_checkpoints").mkdir()  # torchvision would read it as a third class
    assert_good_message(load_error(path), path, ("data.root", ".ipynb_checkpoints", "hidden folder"))


def test_budget_is_checked_only_when_asked(tmp_path: Path):
    """Tools that only look at a study (describe, loop-bench) validate it without the budget."""
    path = tmp_path / "study.yaml"
    path.write_text(with_changes(execution={"max_memory_gb": 0.1}))
    assert load_study(path).name == "tiny"
    with pytest.raises(ConfigError, match="max_memory_gb"):
        load_study(path, budget=True)


# --- numbers read exactly --------------------------------------------------------------------------

def test_yaml_1_2_floats_are_numbers(tmp_path: Path):
    path = tmp_path / "study.yaml"
    path.write_text(with_changes(protocol={"lr": raw("1e-3"), "weight_decay": raw("5E-4")},
                                 variant={"lr": raw("1.0e1"), "dropout": raw("2.5e-1"), "l1": raw("1_0e-6")}))
    study = load_study(path)
    assert study.variants["baseline"].train["lr"] == 0.001 and study.variants["baseline"].train["weight_decay"] == 5e-4
    x = study.variants["x"]
    assert x.train["lr"] == 10.0 and x.model["dropout"] == 0.25 and x.train["l1"] == 1e-5
    assert isinstance(x.train["lr"], float)


def test_same_study_from_snakemakes_parser(tmp_path: Path):
    """Snakemake parses YAML itself (YAML 1.1: '1e-3' is a string); its dict gives the same specs."""
    from snakemake.common.configfile import load_configfile

    path = tmp_path / "study.yaml"
    path.write_text(with_changes(protocol={"lr": raw("1e-3"), "folds": 2, "epochs": 1},
                                 variant={"kernel_size": 3, "weight_decay": raw("5e-4")}))
    parsed = load_configfile(str(path))
    assert parsed["protocol"]["lr"] == "1e-3" and parsed["variants"]["x"]["weight_decay"] == "5e-4"  # as Snakemake hands over
    from_dict, from_file = load_study(parsed, name_hint=str(path)), load_study(path)
    assert from_dict.variants["x"].train["lr"] == 0.001 and from_dict.split["folds"] == 2
    assert {v: s.spec_hash for v, s in from_dict.variants.items()} == {v: s.spec_hash for v, s in from_file.variants.items()}


def test_duplicates_are_found_through_the_files_snakemake_read(tmp_path: Path):
    path = tmp_path / "study.yaml"
    path.write_text(dup(BASE_TEXT, "    bn: true", "    bn: false"))
    parsed = yaml.safe_load(path.read_text())  # last one wins: the dict alone cannot tell
    load_study(parsed)
    with pytest.raises(ConfigError) as e:
        load_study(parsed, name_hint=str(path), files=[str(path)])
    assert_good_message(str(e.value), path, ("variant 'batchnorm', field 'bn'", "written twice"))


def test_merge_keys_still_override(tmp_path: Path):
    """A `<<:` merge followed by the same key is an override, not a key written twice."""
    path = tmp_path / "study.yaml"
    text = BASE_TEXT.replace("  batchnorm:\n", "  batchnorm: &bn\n") + "  wide_bn:\n    <<: *bn\n    bn: false\n"
    path.write_text(text)
    assert load_study(path).variants["wide_bn"].model["bn"] is False
    assert read_config(path)["variants"]["wide_bn"]["base"] == "baseline"


# --- the budget ------------------------------------------------------------------------------------

def test_shipped_studies_load_and_fit_their_budget():
    """The MNIST studies fit the reference 2-core CPU; cifar10.yaml and its synthetic twin are GPU studies
    (their headers say so): they fit one GPU at the assumed throughput, and on 2 CPU cores they would take
    days, which the workflow refuses there unless execution.max_hours is raised."""
    gpu_studies = ("cifar10.yaml", "cifar10-synthetic.yaml")
    gpu = B.detect_machine({"device": "cuda"})
    for path in sorted((REPO / "config").glob("*.yaml")):
        study = load_study(path)
        machine = gpu if path.name in gpu_studies else CPU2
        est = B.check_study(study, machine)
        assert 0 < est.hours < est.max_hours and est.peak().memory_bytes < machine.memory_bytes, path.name
        assert set(est.variants) == set(study.variants)
    for name in gpu_studies:
        with pytest.raises(ConfigError, match=r"execution.max_hours: .* days"):
            B.check_study(load_study(REPO / "config" / name), CPU2)
    # the synthetic twin has CIFAR-10's sizes, so the same estimate
    real, synthetic = (B.estimate_study(load_study(REPO / "config" / n), gpu) for n in gpu_studies)
    assert synthetic.hours == pytest.approx(real.hours)


def test_default_study_estimate_matches_its_measured_time():
    """The default study took 7 min 2 s on the 2-core machine the constant was measured on (README)."""
    est = B.estimate_study(load_study(REPO / "config" / "config.yaml"), CPU2)
    assert 5 < est.hours * 60 < 10, est.hours * 60
    baseline = est.variants["baseline"]
    assert baseline.macs_per_image == 1_031_744 and baseline.params == 20_490
    # 12,600 img/s at 3 x 1,031,744 MACs per training image is the measured throughput behind the constant
    assert math.isclose(B.CPU_MACS_PER_S_PER_CORE, 12_600 * 1_031_744 * 3, rel_tol=0.01)


def test_memory_estimate_adds_up():
    study = load_study(REPO / "config" / "config.yaml")
    spec = study.variants["baseline"]
    v = B.estimate_variant(spec, n_dev=5000, n_test=0, folds=5, runs=10)
    assert v.state_bytes == 4 * 20_490 * 3  # weights, gradients, SGD momentum
    assert v.memory_bytes == pytest.approx(B.MEMORY_SAFETY * (v.state_bytes + v.activation_bytes) + v.data_bytes
                                           + B.RUNTIME_BYTES)
    adam = B.estimate_variant(replace(spec, train={**spec.train, "optimizer": "adam"}), n_dev=5000, n_test=0,
                              folds=5, runs=10)
    assert adam.state_bytes == 4 * 20_490 * 4
    assert v.macs == pytest.approx(1_031_744 * (3 * 4000 * 10 + 1000 * 10) * 10)


def test_jobs_per_gpu_auto_is_the_measured_16_where_gpu_memory_cores_and_host_ram_allow(tmp_path):
    from dataclasses import replace

    default_study = load_study(REPO / "config" / "config.yaml")
    h200 = replace(B.detect_machine({"device": "cuda", "max_memory_gb": 140}), cores=16, host_memory_bytes=128e9)
    default = B.check_study(default_study, h200)
    assert default.jobs_per_gpu == B.AUTO_JOBS_PER_GPU == 16
    assert "; 16 training jobs per GPU" in default.summary() and "fewer here" not in default.summary()
    card16 = replace(B.detect_machine({"device": "cuda"}), cores=16, host_memory_bytes=128e9)  # no nvidia-smi: 16 GB
    est = B.check_study(default_study, card16)
    assert est.jobs_per_gpu == 14 and "fewer here: the largest job's memory estimate fits 14 times into a GPU" in est.summary()
    cores8 = B.check_study(default_study, replace(h200, cores=8))  # each job holds execution.threads (1) cores
    assert cores8.jobs_per_gpu == 8 and "8 cores at execution.threads = 1 each" in cores8.summary()
    cifar = B.check_study(load_study(REPO / "config" / "cifar10.yaml"), h200)  # threads: 4
    assert cifar.jobs_per_gpu == 4 and "16 cores at execution.threads = 4 each" in cifar.summary()
    ram = B.check_study(default_study, replace(h200, host_memory_bytes=16e9))  # 2.5 GB per CUDA process
    assert ram.jobs_per_gpu == 6 and "RAM at ~2.5 GB per CUDA process" in ram.summary()
    (tmp_path / "given.yaml").write_text(with_changes(execution={"device": "cuda", "jobs_per_gpu": 12}))
    given = B.check_study(load_study(tmp_path / "given.yaml"), replace(h200, cores=2))
    assert given.jobs_per_gpu == 12 and "fewer here" not in given.summary()  # a number given is the user's call
    small = B.detect_machine({"device": "cuda", "max_memory_gb": 3})  # width64 (~1.1 GB) fits twice
    est = B.check_study(load_study(REPO / "config" / "config.yaml"), small)
    assert est.jobs_per_gpu == int(3e9 // est.peak().memory_bytes) == 2
    assert B.check_study(load_study(REPO / "config" / "config.yaml"), CPU2).jobs_per_gpu == 1  # nothing to share
    for name in ("cifar10.yaml", "cifar10-synthetic.yaml"):  # the GPU studies, on the assumed 16 GB card
        est = B.check_study(load_study(REPO / "config" / name), card16)
        assert est.jobs_per_gpu == 3 and est.jobs_per_gpu * est.peak().memory_bytes <= card16.memory_bytes


def test_machine_detection():
    cpu = B.detect_machine({"device": "auto"}, cores=1, gpu_visible=False)
    assert cpu.device == "cpu" and cpu.workers == 1 and cpu.memory_bytes == B.host_ram_bytes() > 1e8
    gpu = B.detect_machine({"device": "auto", "max_memory_gb": 80}, gpu_visible=True)
    assert gpu.device == "cuda" and gpu.memory_bytes == 80e9 and "max_memory_gb" in gpu.memory_source
    assert B.detect_machine({"device": "cuda"}).memory_bytes == B.DEFAULT_GPU_MEMORY_GB * 1e9


# --- through the real workflow ---------------------------------------------------------------------

WORKFLOW_CASES = ["duplicate_variant", "duplicate_knob_in_variant", "folds_2.5", "epochs_10.0", "imagefolder_missing_root",
                  "cifar10_without_root", "lr_nan", "width_1000000", "cycle_of_two",
                  "epochs_quoted"]  # Snakemake also lists a config file's values among --config's overrides


def snakemake_dry_run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
                           "--configfile", str(workdir / "study.yaml"), "--cores", "2", "-n", *args],
                          check=False, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("case_id", WORKFLOW_CASES)
def test_bad_config_stops_the_workflow_before_any_job(case_id: str, tmp_path: Path):
    case = next(c for c in CASES if c.id == case_id)
    path = tmp_path / "study.yaml"
    path.write_text(case.text)
    out = snakemake_dry_run(tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    assert "Traceback" not in text and not (tmp_path / "results").exists(), text
    line = next((ln for ln in text.splitlines() if ln.startswith(f"{path}: ")), None)
    assert line is not None, text
    assert_good_message(line, path, case.expect)


@pytest.mark.slow
def test_a_config_override_is_read_as_yaml_reads_it(tmp_path: Path):
    """`--config` values arrive as text from Snakemake (its YAML BaseLoader): a number given there is a
    number again (a quoted number in the file stays refused: test_bad_config_stops_the_workflow_...)."""
    def estimate(out: subprocess.CompletedProcess) -> str:
        assert out.returncode == 0, out.stdout + out.stderr
        return next(ln for ln in out.stderr.splitlines() if ln.startswith("cnnbench: study"))

    (tmp_path / "study.yaml").write_text(yaml.safe_dump(TINY_STUDY))
    overridden = estimate(snakemake_dry_run(tmp_path, "--config", "protocol={epochs: 3, batch_size: 16}"))
    written = copy.deepcopy(TINY_STUDY)
    written["protocol"].update(epochs=3, batch_size=16)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(written))
    assert overridden == estimate(snakemake_dry_run(tmp_path))  # the same study, 3x the MACs of epochs: 1


@pytest.mark.slow
def test_an_error_in_a_config_override_does_not_blame_the_file_alone(tmp_path: Path):
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(TINY_STUDY))
    out = snakemake_dry_run(tmp_path, "--config", "protocol={epochs: .nan}")
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "Traceback" not in text
    assert (f"{tmp_path / 'study.yaml'} + --config (command line or profile): protocol.epochs: .nan is not a "
            "finite number") in text, text


@pytest.mark.slow
def test_workflow_refuses_a_study_over_its_budget(tmp_path: Path):
    path = tmp_path / "study.yaml"
    path.write_text(with_changes(data={"name": "mnist5k"}, protocol={"folds": 5, "epochs": 100},
                                 execution={"max_hours": 0.05, "device": "cpu"}))
    out = snakemake_dry_run(tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "Traceback" not in text and not (tmp_path / "results").exists(), text
    assert re.search(rf"{re.escape(str(path))}: execution.max_hours: the study is estimated at .* more than "
                     r"max_hours = 0.05; .*execution.max_hours: \d+ to accept it", text), text


@pytest.mark.slow
def test_workflow_reads_numbers_exactly_and_prints_the_estimate(tmp_path: Path):
    """1e-3 was "not a number" in the workflow (Snakemake reads YAML 1.1). Now it plans jobs."""
    (tmp_path / "study.yaml").write_text(with_changes(protocol={"folds": 2, "epochs": 2, "lr": raw("1e-3")}))
    out = snakemake_dry_run(tmp_path, "--printshellcmds")
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert re.search(r"cnnbench: study 'tiny': 4 variants x 2 runs, \S+ MACs in all \(a rerun trains only what is "
                     r"missing\), estimated .* of training on \d+ CPU cores?", text), text
    assert "largest training job" in text and "training arithmetic only: job start-ups" in text  # not the wall time
    specs = re.findall(r'"lr": ([^,}]+)', text)
    assert specs and set(specs) == {"0.001"}, specs
    assert re.findall(r'"epochs": ([^,}]+)', text)[0] == "2" and "--runs fold0-seed0 fold1-seed0 " in text


def test_an_inherited_knob_that_the_variant_switches_off_is_fine(tmp_path: Path):
    """no_pool built on a base with pool_size, adam on a base with nesterov: ablations, not mistakes."""
    path = tmp_path / "study.yaml"
    path.write_text(with_changes(variants={
        "baseline": {"base": "cnn", "pool_size": 2, "nesterov": True},
        "no_pool": {"base": "baseline", "pool": "none"}, "adam": {"base": "baseline", "optimizer": "adam"}}))
    study = load_study(path)
    assert study.variants["no_pool"].model["pool"] == "none" and study.variants["adam"].train["optimizer"] == "adam"


def test_labels_per_class_on_unbalanced_classes_is_not_refused_as_keeping_all(tmp_path: Path):
    """900 images of one class and 100 of another: 400 per class keeps 400 + 80 of a fold's 800 (review)."""
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 255, (1000, 8, 8), dtype=np.uint8), y=np.repeat([0, 1], [900, 100]))
    path = tmp_path / "study.yaml"
    path.write_text(with_changes(data={"name": "npz", "path": str(tmp_path / "d.npz")}, protocol={"folds": 5},
                                 variants={"baseline": {"base": "cnn", "pool": "none"},
                                           "few": {"base": "baseline", "labels_per_class": 400}}))
    assert load_study(path).variants["few"].train["labels_per_class"] == 400
