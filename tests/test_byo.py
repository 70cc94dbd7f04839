"""Bring your own model: torchvision and custom networks under the same protocol, knobs that cannot apply
refused before any job, the custom module's source in the run identity, and preset plugins."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from cnnbench.config import load_study
from cnnbench.data import load_source
from cnnbench.errors import ConfigError
from cnnbench.train import fit, set_determinism
from tests.helpers import REPO, tiny_study, write_yaml

CPU = torch.device("cpu")
MODULE = '''
from torch import nn


def build(input_shape, num_classes, width=4):
    return nn.Sequential(nn.Conv2d(input_shape[0], width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(4 * width, num_classes))
'''


def _study(tmp_path, **variants):
    (tmp_path / "mynets.py").write_text(MODULE)
    study = tiny_study(protocol={"folds": 2, "epochs": 3, "batch_size": 32},
                       variants={"baseline": {"base": "cnn"}, **variants})
    return write_yaml(tmp_path / "study.yaml", study)


def test_an_external_and_a_custom_network_train_on_tiny_data(tmp_path):
    cfg = _study(tmp_path, tv={"base": "torchvision:resnet18"}, mine={"base": "mynets:build", "kwargs": {"width": 8}})
    study = load_study(cfg)
    images = load_source(study.data, 0)
    set_determinism(CPU, 1)
    idx = np.arange(len(images.y))
    for name, params in (("tv", 11_175_370), ("mine", 8 * 9 + 8 + 4 * 8 * 10 + 10)):
        spec = study.variants[name]
        assert sum(r.params for r in spec.layer_table()) == params  # 1-channel stem, 10-class head
        result = fit(spec, images, idx[:160], idx[160:], seed=0, device=CPU)
        losses = [e["train_loss"] for e in result.epochs]
        assert losses[-1] < losses[0] and result.test is not None  # it learns; scored on the held-out part
        assert result.probe is None  # external: the stages of the translation probe are unknown


@pytest.mark.parametrize("knob, value, message", [
    ("bn", True, "field 'bn': a design-space knob of the built-in models; it cannot apply to torchvision:resnet18"),
    ("widths", [8], "field 'widths': a design-space knob"),
    ("colour", 1, "field 'colour'")])
def test_a_knob_that_cannot_apply_is_refused_before_any_job(tmp_path, knob, value, message):
    cfg = _study(tmp_path, tv={"base": "torchvision:resnet18", knob: value})
    with pytest.raises(ConfigError, match=message):
        load_study(cfg)
    out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
                          "--configfile", str(cfg), "--cores", "1", "-n"], capture_output=True, text=True)
    assert out.returncode != 0 and f"field {knob!r}" in out.stdout + out.stderr and not (tmp_path / "results").exists()


@pytest.mark.parametrize("base, message", [("torchvision:resnet1000", "has no classification model 'resnet1000'"),
                                           ("nomodule:build", "cannot import 'nomodule'"),
                                           ("mynets:missing", "has no function 'missing'")])
def test_an_unknown_external_base_is_named(tmp_path, base, message):
    with pytest.raises(ConfigError, match=message):
        load_study(_study(tmp_path, x={"base": base}))


def test_editing_the_custom_module_changes_exactly_its_variants(tmp_path):
    cfg = _study(tmp_path, mine={"base": "mynets:build"}, tv={"base": "torchvision:resnet18"})
    before = {v: s.spec_hash for v, s in load_study(cfg).variants.items()}
    (tmp_path / "mynets.py").write_text(MODULE.replace("padding=1", "padding=1, bias=False"))
    sys.modules.pop("mynets", None)
    after = {v: s.spec_hash for v, s in load_study(cfg).variants.items()}
    assert [v for v in before if before[v] != after[v]] == ["mine"]


def test_an_entry_point_plugin_registers_presets_that_list_models_shows(tmp_path):
    """A tiny installed package: its dist-info declares an entry point of group cnnbench.models."""
    (tmp_path / "labnets.py").write_text(textwrap.dedent('''
        def register(register_model):
            register_model("labnet", "the lab's three-stage net", widths=[8, 16, 32], bn=True)
    '''))
    info = tmp_path / "labnets-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: labnets\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[cnnbench.models]\nlabnets = labnets:register\n")
    code = ("import sys; sys.path.insert(0, %r); from cnnbench.cli import main; main(['list-models'])" % str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    line = next(line for line in out.stdout.splitlines() if line.startswith("labnet"))
    assert "the lab's three-stage net" in line and "[plugin labnets (labnets:register)]" in line
    use = ("import sys; sys.path.insert(0, %r); from cnnbench.config import load_study; import json;"
           "s = load_study(json.loads(%r)); print(s.variants['lab'].model['widths'])"
           % (str(tmp_path), json.dumps(tiny_study(variants={"baseline": {"base": "cnn"}, "lab": {"base": "labnet"}}))))
    out = subprocess.run([sys.executable, "-c", use], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[8, 16, 32]", out.stderr
