"""Networks from outside the built-in design space: `base: torchvision:resnet18`, `base: timm:<name>`, or
`base: my_package.my_module:build_net` (a callable returning an nn.Module).

They train, and are measured and reported, under the same protocol as any variant; what cannot apply to
them - the design-space knobs of the built-in models - is refused at validation with the knob's name.
Their own arguments go under `kwargs:`; `weights:` loads a local weights file (keys whose shapes do not fit
the adapted network, such as a 1000-class head, are left at their initial values). What the network is
made from is part of each run's identity: the library's version for torchvision and timm, the source
file's sha256 for your own module, so editing that file reruns exactly the variants built from it.

The layer table of an external network comes from one forward pass with hooks on its leaf modules
(output shape, parameters, and MACs of convolutions and linear layers by the same formulas as the
built-in table); receptive fields are not known there.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cnnbench.errors import ConfigError

KINDS = ("torchvision", "timm")
EXTERNAL_KNOBS = ("kwargs", "weights", "cam_layer")  # what an external variant may set besides training knobs
_SYMBOL = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_external(base: str) -> bool:
    return isinstance(base, str) and ":" in base


@contextmanager
def _importable(extra: list[str]):
    """The working directory and the study's folder on sys.path while importing a user's module."""
    added = [p for p in [os.getcwd(), *extra] if p not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for p in added:
            if p in sys.path:
                sys.path.remove(p)


def _builder(arch: str, search: list[str] = ()):
    """(kind, callable, identity) of an external base; every failure is one ConfigError."""
    if not _SYMBOL.match(arch):
        raise ConfigError(f"{arch!r} is not torchvision:<model>, timm:<model> or package.module:function")
    prefix, name = arch.split(":")
    if prefix == "torchvision":
        import torchvision

        if name not in torchvision.models.list_models(module=torchvision.models):
            raise ConfigError(f"{arch!r}: torchvision {torchvision.__version__} has no classification model {name!r}")
        return "torchvision", (lambda **kw: torchvision.models.get_model(name, weights=None, **kw)), \
            f"torchvision {torchvision.__version__}"
    if prefix == "timm":
        try:
            import timm
        except ImportError:
            raise ConfigError(f"{arch!r}: timm is not installed; pip install timm") from None
        if not timm.is_model(name):
            raise ConfigError(f"{arch!r}: timm {timm.__version__} has no model {name!r}")
        return "timm", (lambda **kw: timm.create_model(name, pretrained=False, **kw)), f"timm {timm.__version__}"
    with _importable(list(search)):
        try:
            module = importlib.import_module(prefix)
        except ImportError as e:
            raise ConfigError(f"{arch!r}: cannot import {prefix!r} ({e}); put the module in the study's folder, the "
                              "working directory, or an installed package") from None
        except SyntaxError as e:
            raise ConfigError(f"{arch!r}: {e.filename}, line {e.lineno}: {e.msg}; fix the module") from None
        except (Exception, SystemExit) as e:  # the module's own code failed on import (argparse, sys.exit too)
            raise ConfigError(f"{arch!r}: importing {prefix!r} failed: {_first_line(e)}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"{arch!r}: {prefix} has no function {name!r}")
    source = inspect.getsourcefile(module)
    digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()[:16] if source else "unknown"
    return "module", fn, f"{prefix} (source sha256 {digest})"


def identity(arch: str, search: list[str] = ()) -> str:
    """What the network's numbers depend on besides its arguments: a library version or a source hash."""
    return _builder(arch, search)[2]


def build(arch: str, model: dict[str, Any], input_shape: tuple[int, int, int], num_classes: int,
          search: list[str] = ()):
    """The network, adapted to `input_shape`'s channels and `num_classes`, with `weights` loaded."""
    import torch
    from torch import nn

    kind, fn, _ = _builder(arch, search)
    kwargs = dict(model.get("kwargs") or {})
    try:
        if kind == "module":
            net = fn(input_shape=tuple(input_shape), num_classes=num_classes, **kwargs)
        elif kind == "timm":
            net = fn(num_classes=num_classes, in_chans=input_shape[0], **kwargs)
        else:
            net = fn(num_classes=num_classes, **kwargs)
    except Exception as e:  # a wrong or ill-typed kwarg, in the builder's own words (width 16.5: "out_channels
        # must be divisible by groups" from deep inside torch)
        raise ConfigError(f"{arch!r}: building it with kwargs {kwargs} failed: {_first_line(e)}; check the "
                          "builder and the variant's kwargs") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(f"{arch!r}: returned {type(net).__name__}, not a torch nn.Module")
    if kind == "torchvision":
        _adapt_input_channels(net, input_shape[0])
    if model.get("weights"):
        path = Path(model["weights"]).expanduser()
        if not path.is_file():
            raise ConfigError(f"weights: {str(path)!r} is not a file")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        own = net.state_dict()
        fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not fitting:
            raise ConfigError(f"weights: none of the {len(state)} tensors in {str(path)!r} fits {arch} (names or "
                              f"shapes differ, e.g. {next(iter(state), '-')!r} vs {next(iter(own), '-')!r}); "
                              "give a state_dict saved from this network")
        net.load_state_dict(fitting, strict=False)
    if model.get("cam_layer"):
        try:
            net.get_submodule(model["cam_layer"])
        except AttributeError:
            convs = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
            raise ConfigError(f"cam_layer: {model['cam_layer']!r} is not a module of {arch}; its convolutions: "
                              f"{', '.join(convs[-3:]) or 'none'} (the last is the default)") from None
    return net


def nondeterministic_on_cuda(net) -> list[str]:
    """Modules (by name, with their type) whose CUDA backward torch has no deterministic implementation
    of (torch.use_deterministic_algorithms raises on them). An adaptive average pool to 1x1 is exempt:
    ATen computes it as a mean, which is deterministic (ResNets' global pool)."""
    from torch import nn

    kinds = (nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool2d, nn.AvgPool3d, nn.MaxPool3d,
             nn.FractionalMaxPool2d, nn.MaxUnpool2d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.Upsample)
    found = []
    for name, m in net.named_modules():
        if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)):
            continue
        if isinstance(m, kinds):
            found.append(f"{name} ({type(m).__name__})")
    return found


def weights_identity(model: dict[str, Any]) -> dict[str, str]:
    """The weights file by its contents (sha256), not where it lies; {} without one."""
    if not model.get("weights"):
        return {}
    from cnnbench.data import file_hash

    path = Path(model["weights"]).expanduser()
    if not path.is_file():
        raise ConfigError(f"weights: {str(path)!r} is not a file")
    return {"weights_sha256": file_hash(path)}


def _adapt_input_channels(net, channels: int) -> None:
    """torchvision models expect RGB: rebuild the first convolution for `channels` inputs."""
    from torch import nn

    for parent in net.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels != channels:
                    setattr(parent, child_name, nn.Conv2d(
                        channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                        child.dilation, child.groups, child.bias is not None, child.padding_mode))
                return


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


def layer_rows(net, input_shape: tuple[int, int, int], num_classes: int | None = None):
    """A layer table of any network from one forward pass: every leaf module's output shape and
    parameters; MACs of convolutions and linear layers (the formulas of the built-in table). With
    `num_classes`, the pass also checks that the network gives one score per class: (N, num_classes)."""
    import math

    import torch
    from torch import nn

    from cnnbench.models.geometry import LayerRow

    rows, handles = [], []

    def hook(name: str, module: nn.Module):
        def record(m, args, out):
            if not isinstance(out, torch.Tensor) or not args or not isinstance(args[0], torch.Tensor):
                return
            out_shape, in_shape = tuple(out.shape[1:]), tuple(args[0].shape[1:])
            macs = 0
            if isinstance(m, nn.Conv2d):
                macs = math.prod(out_shape) * (m.in_channels // m.groups) * math.prod(m.kernel_size)
            elif isinstance(m, nn.Linear):
                macs = m.in_features * m.out_features
            rows.append(LayerRow(name, type(m).__name__, in_shape, out_shape,
                                 sum(p.numel() for p in m.parameters(recurse=False)), int(macs), None))
        return record

    for name, module in net.named_modules():
        if name and not list(module.children()):
            handles.append(module.register_forward_hook(hook(name, module)))
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(torch.zeros(2, *input_shape))  # 2 images: a batch dimension of 1 could hide a squeeze
    except Exception as e:  # an impossible input size, in the user's own network's words
        raise ConfigError(f"a {'x'.join(map(str, input_shape))} input does not pass through the network: "
                          f"{_first_line(e)}") from None
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    if num_classes is not None:
        _check_scores(out, num_classes, "")
        net.train()  # what training calls: some networks return more there (auxiliary classifiers)
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):  # dropout draws leave no trace
                out = net(torch.zeros(2, *input_shape))
        except Exception as e:
            raise ConfigError(f"in training mode, a batch does not pass through the network: {_first_line(e)}") from None
        finally:
            net.train(was_training)
        _check_scores(out, num_classes, "in training mode ")
    return rows


def _check_scores(out, num_classes: int, mode: str) -> None:
    """A classifier returns one score per class: (N, num_classes) for a batch of N images."""
    import torch

    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"{mode}it returns a {type(out).__name__}, not a tensor of (N, {num_classes}) scores "
                          "(auxiliary outputs? torchvision's googlenet and inception_v3: kwargs: {aux_logits: false})")
    if tuple(out.shape) != (2, num_classes):
        raise ConfigError(f"{mode}it returns {tuple(out.shape)} for a batch of 2 images; a classifier must return "
                          f"(N, {num_classes}): one score per class (the data set has {num_classes}), e.g. end "
                          "with nn.Linear(features, num_classes) after a global pool and flatten")


def last_conv(net) -> str | None:
    """Name of the last convolution: the default Grad-CAM target layer."""
    from torch import nn

    names = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    return names[-1] if names else None
