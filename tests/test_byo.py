"""Bring your own model: torchvision and custom networks under the same protocol, knobs that cannot apply
refused before any job, the custom module's source in the run identity, and preset plugins."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from cnnbench.config import load_study
from cnnbench.data import load_source
from cnnbench.errors import ConfigError
from cnnbench.runtime import set_determinism
from cnnbench.train import fit
from tests.helpers import REPO, tiny_study, write_yaml

CPU = torch.device("cpu")
MODULE = '''
from torch import nn


def build(input_shape, num_classes, width=4):
    return nn.Sequential(nn.Conv2d(input_shape[0], width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(4 * width, num_classes))
'''


AUX_MODULE = '''
from torch import nn


class Aux(nn.Module):
    """Scores and an auxiliary head's scores while training, as torchvision's googlenet with aux_logits."""

    def __init__(self, num_classes):
        super().__init__()
        self.head = nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

    def forward(self, x):
        out = self.head(x)
        return (out, out) if self.training else out


def build(input_shape, num_classes):
    return Aux(num_classes)
'''


def _study(tmp_path, **variants):
    (tmp_path / "mynets.py").write_text(MODULE)
    study = tiny_study(protocol={"folds": 2, "epochs": 3, "batch_size": 32},
                       data={"name": "digits", "subset": 375, "holdout": 0.2},  # 300 for folds, 75 for testing
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
        assert "translation_probe" not in result.after  # external: the stages of the translation probe are unknown


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


@pytest.mark.parametrize("source, kwargs, message", [
    ("def build(input_shape, num_classes:\n    pass\n", {}, r"badnets\.py, line 1: .*fix the module"),
    ("raise RuntimeError('no GPU here')\n", {}, "importing 'badnets' failed: RuntimeError: no GPU here"),
    (MODULE, {"width": 4.5}, r"building it with kwargs \{'width': 4\.5\} failed: ValueError: out_channels must be divisible"),
    (MODULE.replace("nn.Linear(4 * width, num_classes)", "nn.Linear(4 * width, 1000)"), {},
     r"returns \(2, 1000\) for a batch of 2 images; a classifier must return \(N, 10\)"),
    (MODULE.replace(", nn.AdaptiveAvgPool2d(2),\n                         nn.Flatten(), nn.Linear(4 * width, num_classes)",
                    ", nn.Conv2d(width, num_classes, 1)"), {}, r"returns \(2, 10, 8, 8\)"),
    (AUX_MODULE, {}, r"in training mode it returns a tuple, not a tensor of \(N, 10\) scores \(auxiliary outputs"),
    ("import sys\nsys.exit('needs --gpu')\n", {}, "importing 'badnets' failed: SystemExit: needs --gpu"),
])
def test_a_broken_custom_network_is_one_error_before_any_job(tmp_path, source, kwargs, message):
    """The plugin's own faults (a syntax error, an import that fails, a kwarg of the wrong type, scores of
    the wrong shape) are named with the variant before any job, not as a traceback after training."""
    (tmp_path / "badnets.py").write_text(source)
    sys.modules.pop("badnets", None)
    with pytest.raises(ConfigError, match=message) as e:
        load_study(_study(tmp_path, mine={"base": "badnets:build", "kwargs": kwargs}))
    assert "variant 'mine'" in str(e.value) and "\n" not in str(e.value)


def test_what_a_custom_network_changes_is_its_model_and_kwargs_only(tmp_path):
    from cnnbench.config import describe_changes

    study = load_study(_study(tmp_path, mine={"base": "mynets:build", "kwargs": {"width": 8}}))
    assert describe_changes(study.variants["baseline"], study.variants["mine"]) == [
        "model: cnn -> mynets:build", "kwargs.width: none -> 8"]  # not where the module was found


def test_editing_the_custom_module_changes_exactly_its_variants(tmp_path):
    cfg = _study(tmp_path, mine={"base": "mynets:build"}, tv={"base": "torchvision:resnet18"})
    before = {v: s.spec_hash for v, s in load_study(cfg).variants.items()}
    (tmp_path / "mynets.py").write_text(MODULE.replace("padding=1", "padding=1, bias=False"))
    sys.modules.pop("mynets", None)
    after = {v: s.spec_hash for v, s in load_study(cfg).variants.items()}
    assert [v for v in before if before[v] != after[v]] == ["mine"]


def test_a_weights_file_counts_by_its_contents_and_must_fit(tmp_path):
    """The weights file is part of the identity by its sha256 (moving it changes nothing, editing it
    retrains); a file none of whose tensors fit, and a cam_layer that is no module, are refused up front."""
    (tmp_path / "mynets.py").write_text(MODULE)
    sys.path.insert(0, str(tmp_path))
    try:
        import importlib

        net = importlib.import_module("mynets").build((1, 8, 8), 10, width=8)
    finally:
        sys.path.remove(str(tmp_path))
    torch.save(net.state_dict(), tmp_path / "a.pt")
    shutil.copy(tmp_path / "a.pt", tmp_path / "b.pt")  # (torch.save names the archive after the file)
    hashes = {}
    for name in ("a.pt", "b.pt"):
        cfg = _study(tmp_path, mine={"base": "mynets:build", "kwargs": {"width": 8}, "weights": str(tmp_path / name)})
        hashes[name] = load_study(cfg).variants["mine"].spec_hash
    assert hashes["a.pt"] == hashes["b.pt"]  # same contents, another place
    with torch.no_grad():
        net[0].weight.add_(1)
    torch.save(net.state_dict(), tmp_path / "b.pt")
    assert load_study(cfg).variants["mine"].spec_hash != hashes["a.pt"]
    torch.save({"other.weight": torch.zeros(3)}, tmp_path / "c.pt")
    with pytest.raises(ConfigError, match="weights: none of the 1 tensors"):
        load_study(_study(tmp_path, mine={"base": "mynets:build", "weights": str(tmp_path / "c.pt")}))
    with pytest.raises(ConfigError, match="cam_layer: 'nope' is not a module of mynets:build; its convolutions: 0"):
        load_study(_study(tmp_path, mine={"base": "mynets:build", "cam_layer": "nope"}))
    same = load_study(_study(tmp_path, mine={"base": "mynets:build", "cam_layer": "0"})).variants["mine"]
    assert same.spec_hash == load_study(_study(tmp_path, mine={"base": "mynets:build"})).variants["mine"].spec_hash


def test_an_activity_penalty_needs_activation_modules(tmp_path):
    (tmp_path / "functional.py").write_text(textwrap.dedent("""
        import torch.nn.functional as F
        from torch import nn

        class Net(nn.Module):
            def __init__(self, c, k):
                super().__init__()
                self.conv, self.fc = nn.Conv2d(c, 4, 3), nn.Linear(4, k)

            def forward(self, x):
                return self.fc(F.relu(self.conv(x)).mean((2, 3)))

        def build(input_shape, num_classes):
            return Net(input_shape[0], num_classes)
    """))
    cfg = _study(tmp_path, f={"base": "functional:build", "activity": 0.01}, m={"base": "mynets:build", "activity": 0.01})
    with pytest.raises(ConfigError, match="variant 'f', field 'activity': its network has no activation modules"):
        load_study(cfg)
    cfg = _study(tmp_path, m={"base": "mynets:build", "activity": 0.01})
    assert load_study(cfg).variants["m"].train["activity"] == 0.01


def test_deterministic_cuda_runs_refuse_layers_without_a_deterministic_backward(tmp_path):
    """AdaptiveAvgPool2d(2) has no deterministic CUDA backward: refused up front on a GPU-capable device
    (not deep in the first step); resnet18's 1x1 global pool is a mean, and on the CPU nothing is refused."""
    (tmp_path / "mynets.py").write_text(MODULE)
    study = tiny_study(protocol={"folds": 2, "epochs": 3, "batch_size": 32},
                       variants={"baseline": {"base": "cnn"}, "mine": {"base": "mynets:build"},
                                 "tv": {"base": "torchvision:resnet18"}},
                       execution={"device": "auto", "deterministic": True})
    cfg = write_yaml(tmp_path / "det.yaml", study)
    with pytest.raises(ConfigError, match=r"execution.deterministic: variant 'mine' has the layer\(s\) 2 \(AdaptiveAvgPool2d\)"):
        load_study(cfg)
    del study["variants"]["mine"]
    assert load_study(write_yaml(tmp_path / "det.yaml", study)).variants["tv"].numerics["deterministic"]
    study["variants"]["mine"] = {"base": "mynets:build"}
    study["execution"]["device"] = "cpu"
    assert load_study(write_yaml(tmp_path / "det.yaml", study)).variants["mine"].numerics["deterministic"]


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
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); from cnnbench.cli import main; main(['list-models'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    line = next(line for line in out.stdout.splitlines() if line.startswith("labnet"))
    assert "the lab's three-stage net" in line and "[plugin labnets (labnets:register)]" in line
    study = json.dumps(tiny_study(variants={"baseline": {"base": "cnn"}, "lab": {"base": "labnet"}}))
    use = (f"import sys; sys.path.insert(0, {str(tmp_path)!r}); from cnnbench.config import load_study; import json;"
           f"s = load_study(json.loads({study!r})); print(s.variants['lab'].model['widths'])")
    out = subprocess.run([sys.executable, "-c", use], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[8, 16, 32]", out.stderr
