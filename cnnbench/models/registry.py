"""Model registry, as in torchvision/timm: `register_model`, `get_model(name, **knobs)`, `list_models()`.

A registered model is a plan function plus its default knobs. The presets below are points of the
`convnet` design space, so every knob can be ablated on every preset and each preset can be the
`base:` of a variant in a study config. A preset that reproduces a torchvision model names it
(`torchvision=`), and tests/test_models.py checks the parameter count against torchvision itself.
Renamed presets stay resolvable through `_DEPRECATED` (timm's deprecation map): the old name gives
the new entry with a FutureWarning, and is no longer listed.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cnnbench.errors import ConfigError, did_you_mean
from cnnbench.models import plan as P
from cnnbench.models.convnet import ConvNetKnobs, convnet_plan, make_knobs

PlanFn = Callable[[dict, tuple[int, int, int], int], P.Network]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    doc: str
    defaults: dict[str, Any]  # every knob the plan function takes, with its default
    plan_fn: PlanFn
    torchvision: str | None = None  # the torchvision model it reproduces (same layers and parameter count)
    source: str = "cnnbench"  # who registered it: cnnbench, or the plugin package (entry point group cnnbench.models)


_REGISTRY: dict[str, ModelEntry] = {}
# old name -> (current name, why it changed); the old name keeps working, with a FutureWarning
_DEPRECATED: dict[str, tuple[str, str]] = {
    "vgg11": ("vgg11_slim", "its head is 512-512, not VGG-11's 4096-4096 (22,841,704 parameters at 224x224 and "
                            "1000 classes against torchvision vgg11's 132,863,336)"),
}


_WARNED: set[str] = set()


def is_model(name: str) -> bool:
    """A registered model, or an old name that still maps to one."""
    return name in list_models() or name in _DEPRECATED


PLUGIN_GROUP = "cnnbench.models"
_registering_for: list[str] = []  # the plugin whose entry point is running
_plugins_loaded = False


def load_plugins() -> None:
    """Presets and models shared by other packages, without forking cnnbench: every entry point of the
    group `cnnbench.models` names a function that receives `register_model` and registers with it, e.g.
    in the plugin's pyproject.toml: [project.entry-points."cnnbench.models"] mylab = "mylab.nets:register"."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=PLUGIN_GROUP):
        source = f"plugin {ep.dist.name if ep.dist else ep.name} ({ep.value})"
        _registering_for.append(source)
        try:
            ep.load()(register_model)
        except Exception as e:  # a broken plugin is named, and does not take cnnbench down with it
            warnings.warn(f"cnnbench: the model plugin {source} failed to register: {type(e).__name__}: {e}",
                          RuntimeWarning, stacklevel=2)
        finally:
            _registering_for.pop()


def register_model(name: str, doc: str, plan_fn: PlanFn | None = None, torchvision: str | None = None,
                   **defaults: Any) -> ModelEntry:
    """Register a model. Without `plan_fn` it is a preset of the convnet family (`defaults` override
    the family's defaults); with one, `defaults` must list every knob that function takes. `torchvision`
    names the torchvision model it reproduces exactly, a claim the tests check."""
    if name in _REGISTRY or name in _DEPRECATED:
        raise ValueError(f"model {name!r} is already registered" if name in _REGISTRY else
                         f"model name {name!r} is deprecated (now {_DEPRECATED[name][0]!r}); choose another name")
    if plan_fn is None:
        base = {f.name: getattr(ConvNetKnobs(), f.name) for f in dataclasses.fields(ConvNetKnobs)}
        unknown = set(defaults) - set(base)
        if unknown:
            raise ValueError(f"{name}: unknown convnet knobs {sorted(unknown)}")
        defaults = _jsonable({**base, **defaults})
        plan_fn = _convnet_from_dict
    entry = ModelEntry(name, doc, defaults, plan_fn, torchvision,
                       _registering_for[-1] if _registering_for else "cnnbench")
    _REGISTRY[name] = entry
    return entry


def list_models() -> list[str]:
    load_plugins()
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        load_plugins()
    if name in _DEPRECATED:
        current, why = _DEPRECATED[name]
        if name not in _WARNED:  # once per process: a study resolves it once per variant built on it
            _WARNED.add(name)
            warnings.warn(f"model {name!r} is deprecated and maps to {current!r}: {why}; use {current!r}",
                          FutureWarning, stacklevel=2)
        name = current
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}{did_you_mean(name, _REGISTRY)}; registered: {', '.join(list_models())}") from None


def resolve_knobs(name: str, **knobs: Any) -> dict[str, Any]:
    entry = get_entry(name)
    unknown = set(knobs) - set(entry.defaults)
    if unknown:
        raise ConfigError(f"model {name!r} has no knob(s) {sorted(unknown)}; its knobs: {', '.join(entry.defaults)}")
    return {**entry.defaults, **_jsonable(knobs)}


def get_plan(name: str, input_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10,
             **knobs: Any) -> P.Network:
    return get_entry(name).plan_fn(resolve_knobs(name, **knobs), tuple(input_shape), num_classes)


def get_model(name: str, input_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10, **knobs: Any):
    """Build a torch model (imports torch; everything above does not)."""
    from cnnbench.models.build import build_model

    return build_model(get_plan(name, input_shape, num_classes, **knobs), tuple(input_shape))


def _convnet_from_dict(knobs: dict, input_shape: tuple[int, int, int], num_classes: int) -> P.Network:
    return convnet_plan(make_knobs(knobs), input_shape, num_classes)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    """Tuples as lists, so defaults compare equal to what YAML gives and hash stably as JSON."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# --- presets ---------------------------------------------------------------------------------------

register_model("cnn", "Two-stage conv-pool net (16, 32 channels, 3x3 convs, flatten head): the ablation baseline.")
register_model(
    "lenet", "LeNet-5 (LeCun 1998): 5x5 convs 6-16, average pooling, tanh, fc 120-84.",
    widths=[6, 16], kernel_size=5, padding="valid", pool="avg", activation="tanh", hidden=[120, 84])
register_model(
    "vgg11_slim", "VGG-11's convolutions (Simonyan & Zisserman 2015: 3x3 convs 64-128-256x2-512x2-512x2 with "
    "max pooling) under a slim CIFAR-style head (512-512, not the paper's 4096-4096; 22,841,704 parameters at "
    "224x224 and 1000 classes, against VGG-11's 132,863,336). Use width: 16 for small data.",
    widths=[64, 128, 256, 512, 512], blocks=[1, 1, 2, 2, 2], pool_ceil=True, hidden=[512, 512], dropout=0.5)
register_model(
    "resnet20", "CIFAR ResNet-20 (He et al. 2016): 3x3 stem, 3 stages x 3 basic blocks, 16-32-64 channels, "
    "1x1 projection shortcuts.",
    stem="conv", widths=[16, 32, 64], blocks=3, block="basic", stride=[1, 2, 2], pool="none",
    shortcut=True, bn=True, head="gap")
register_model(
    "resnet56", "CIFAR ResNet-56: as resnet20 with 9 basic blocks per stage.",
    stem="conv", widths=[16, 32, 64], blocks=9, block="basic", stride=[1, 2, 2], pool="none",
    shortcut=True, bn=True, head="gap")
register_model(
    "resnet18", "ImageNet ResNet-18: 7x7/2 stem + max pool, 4 stages x 2 basic blocks, 64-512 channels "
    "(11,689,512 parameters at 1000 classes, as torchvision's).", torchvision="resnet18",
    stem="imagenet", widths=[64, 128, 256, 512], blocks=2, block="basic", stride=[1, 2, 2, 2], pool="none",
    shortcut=True, bn=True, head="gap")
register_model(
    "inception", "Small GoogLeNet: 3x3 stem, inception modules (1x1 | 1x1-3x3 | 1x1-5x5 | pool-1x1) in "
    "stages of 64-128-256 channels with max pooling between.",
    stem="conv", widths=[64, 128, 256], blocks=[1, 2, 1], block="inception", bn=True, head="gap")
register_model(
    "mobilenet", "MobileNet-v1-style: depthwise 3x3 + pointwise 1x1 blocks, 64-512 channels, BN, "
    "strided downsampling.",
    stem="conv", widths=[64, 128, 256, 512], blocks=[1, 2, 2, 2], block="dwsep", stride=[1, 2, 2, 2],
    pool="none", bn=True, head="gap")
