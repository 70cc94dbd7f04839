"""Study config -> validated, resolved specs.  config file -> `load_study` -> `Study` of `VariantSpec`s.

Validation happens once, up front, and every failure is one `ConfigError` naming the variant and the
field: types and ranges come from the JSON schema (the one in workflow/schemas), then bases and cycles
are resolved, and each variant's network is walked with the shape formulas, so an impossible geometry
stops the workflow before any training. Nothing here imports torch.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cache, cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from cnnbench.catalog import dataset_info
from cnnbench.errors import ConfigError
from cnnbench.models import plan as P
from cnnbench.models.convnet import UNUSED_BY_BLOCK
from cnnbench.models.geometry import GeometryError, LayerRow, layer_table
from cnnbench.models.registry import get_entry, list_models

SPEC_VERSION = 2  # bump when the meaning of a knob changes, so old results stop matching new specs
# 2: run seeds derive from (seed, fold, seed offset) instead of the raw seed (cnnbench.seeds)
AA_CONTROL = "aa_control"  # name of the A/A control variant that `aa_control: true` adds
AA_SEED_OFFSET = 1  # its seed offset: same folds and seeds as the baseline, independent random streams


@dataclass(frozen=True)
class AugmentKnobs:
    """On-device, per-batch augmentation (applied to training batches only)."""

    flip: bool = False  # random horizontal flip (p = 0.5)
    shift: int = 0  # random translation, up to this many pixels in x and y
    rotate: float = 0.0  # random rotation, up to +-degrees
    shear: float = 0.0  # random shear, up to +-degrees
    brightness: float = 0.0  # multiply by a factor in [1-b, 1+b]
    contrast: float = 0.0  # scale deviations from the image mean by [1-c, 1+c]
    saturation: float = 0.0  # RGB only: blend with the grey image by [1-s, 1+s]


@dataclass(frozen=True)
class TrainKnobs:
    """Training protocol; study-wide defaults under `protocol:`, overridable per variant."""

    epochs: int = 10
    batch_size: int = 64  # images per step; the last partial batch of an epoch is dropped
    optimizer: str = "sgd"  # sgd | adam | adamw
    lr: float = 0.05  # peak learning rate
    momentum: float = 0.9  # sgd momentum (adam: beta1)
    nesterov: bool = True  # sgd only
    weight_decay: float = 5e-4  # L2 penalty (decoupled for adamw)
    l1: float = 0.0  # L1 penalty on conv and linear weights, added to the loss
    schedule: str = "onecycle"  # constant | cosine | onecycle (linear up 20%, down to 0) | step (/10 at 50%, 75%)
    label_smoothing: float = 0.0
    augment: AugmentKnobs = field(default_factory=AugmentKnobs)


TRAIN_KNOBS = tuple(f.name for f in fields(TrainKnobs))
SPLIT_DEFAULTS = {"folds": 5, "repeats": 1, "seeds": [0], "split_seed": 0}
EXECUTION_DEFAULTS = {"device": "auto", "threads": 1}


@dataclass(frozen=True)
class VariantSpec:
    """Everything one variant's runs depend on; its hash is the run's config hash."""

    study: str
    name: str
    arch: str  # registered model at the root of the base chain
    model: dict[str, Any]  # resolved model knobs
    train: dict[str, Any]  # resolved training knobs
    data: dict[str, Any]  # data identity: name, subset, image size (not where it is stored)
    split: dict[str, Any]  # folds, repeats, split_seed
    input_shape: tuple[int, int, int]
    num_classes: int
    seed_offset: int = 0  # shifts every random stream of the runs (the A/A control uses 1)
    # presentation only: not part of what a run depends on, not passed to training jobs
    description: str = ""
    chain: tuple[str, ...] = ()  # this variant, its base, ... (variants only, root model excluded)
    diff: dict[str, Any] = field(default_factory=dict)  # knobs this variant's own entry sets
    compare_to: str | None = None  # the variant the report compares this one with (None: the baseline itself)

    def identity(self) -> dict[str, Any]:
        """What the numbers of a run depend on (the name and description do not). The plan's digest is
        included, so a code change that alters the network built from the same knobs changes the hash."""
        return {"version": SPEC_VERSION, "arch": self.arch, "model": self.model, "train": self.train,
                "data": self.data, "split": self.split, "input_shape": list(self.input_shape),
                "num_classes": self.num_classes, "seed_offset": self.seed_offset,
                "plan": hashlib.sha256(repr(self.plan()).encode()).hexdigest()[:16]}

    @cached_property  # the plan digest rebuilds the network plan: compute it once per spec
    def spec_hash(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def plan(self) -> P.Network:
        return get_entry(self.arch).plan_fn(self.model, self.input_shape, self.num_classes)

    def layer_table(self) -> list[LayerRow]:
        return layer_table(self.plan(), self.input_shape)

    def run_dict(self) -> dict[str, Any]:
        """What a training job needs: the spec without its presentation fields. Editing a description
        or re-expressing a variant through another base therefore reruns nothing."""
        d = self.to_dict()
        for key in PRESENTATION:
            d.pop(key)
        return d

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["chain"], d["input_shape"] = list(self.chain), list(self.input_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VariantSpec":
        return cls(**{**d, "chain": tuple(d.get("chain", ())), "input_shape": tuple(d["input_shape"])})


PRESENTATION = ("description", "chain", "diff", "compare_to")  # VariantSpec fields no run depends on


@dataclass(frozen=True)
class Study:
    name: str
    description: str
    data: dict[str, Any]  # the config's data section, root included
    split: dict[str, Any]  # folds, repeats, seeds, split_seed
    execution: dict[str, Any]
    baseline: str
    variants: dict[str, VariantSpec]

    @property
    def fold_ids(self) -> list[int]:
        """Fold ids over all repeats: repeat r, fold k -> r * folds + k."""
        return list(range(self.split["folds"] * self.split["repeats"]))

    @property
    def seeds(self) -> list[int]:
        return list(self.split["seeds"])

    def changes(self, variant: str) -> list[str]:
        """What `variant` changes relative to the baseline, as 'knob: old -> new' strings."""
        return describe_changes(self.variants[self.baseline], self.variants[variant])

    @property
    def references(self) -> dict[str, str]:
        """variant -> the variant it is compared with (every variant but the baseline)."""
        return {v: s.compare_to for v, s in self.variants.items() if s.compare_to}


# --- loading ---------------------------------------------------------------------------------------

def load_study(source: str | Path | dict, name_hint: str | None = None) -> Study:
    """Validate and resolve a study from a YAML path or an already-parsed dict (Snakemake's config)."""
    if isinstance(source, dict):
        raw, where = copy.deepcopy(source), name_hint or "config"
    else:
        where = str(source)
        try:
            raw = yaml.safe_load(Path(source).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{where}: no such config file") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{where}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a study config must be a mapping with study, data and variants")
    try:
        return _resolve(raw)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


@cache
def schema() -> dict:
    return yaml.safe_load(resources.files("cnnbench").joinpath("schema/study.schema.yaml").read_text())


def check_schema(raw: dict) -> None:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    errors = list(Draft202012Validator(schema()).iter_errors(raw))
    # A knob that fails its own check is also "unevaluated"; the concrete error is the useful one.
    concrete = [e for e in errors if e.validator != "unevaluatedProperties"]
    error = best_match(concrete or errors)
    if error is not None:
        raise ConfigError(_schema_message(error))


def _schema_message(error) -> str:
    path = list(error.absolute_path)
    where = _path_words(path)
    if error.validator in ("additionalProperties", "unevaluatedProperties"):
        names = re.findall(r"'([^']+)'", error.message.split("(")[-1])
        known = _all_property_names()
        hints = [f"{n!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(n, known, n=1)) else repr(n)
                 for n in names]
        kind = "knob or field" if path and path[0] == "variants" else "field"
        return f"{where}: unknown {kind} {', '.join(hints)}; see workflow/schemas/config.schema.yaml for the allowed ones"
    if error.validator == "required":
        return f"{where}: {error.message}"
    if error.validator == "enum":
        return f"{where}: {error.instance!r} is not allowed; choose one of {', '.join(map(str, error.validator_value))}"
    if error.validator == "oneOf":
        options = [s.get("enum") or s.get("type") for s in error.validator_value]
        return f"{where}: {error.instance!r} is not allowed; expected one of {options}"
    return f"{where}: {error.message}"


def _path_words(path: list) -> str:
    if not path:
        return "top level"
    if path[0] == "variants" and len(path) >= 2:
        rest = ".".join(map(str, path[2:]))
        return f"variant {path[1]!r}" + (f", field {rest!r}" if rest else "")
    return ".".join(map(str, path))


@cache
def _all_property_names() -> list[str]:
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            names.update(node.get("properties", {}))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema())
    return sorted(names)


def _resolve(raw: dict) -> Study:
    check_schema(raw)
    data = dict(raw["data"])
    info = dataset_info(data)
    protocol = dict(raw.get("protocol", {}))
    split = {k: protocol.pop(k, v) for k, v in SPLIT_DEFAULTS.items()}
    train_defaults = _merge(asdict(TrainKnobs()), protocol)
    execution = {**EXECUTION_DEFAULTS, **raw.get("execution", {})}
    variants_raw: dict[str, dict] = raw["variants"]
    baseline = raw.get("baseline", "baseline")
    if baseline not in variants_raw:
        raise ConfigError(f"baseline: {baseline!r} is not a variant; name one of "
                          f"{', '.join(variants_raw)} as baseline, or add a variant called {baseline!r}")
    if info.n_dev is not None and info.n_dev < 2 * split["folds"]:
        raise ConfigError(f"protocol.folds: {split['folds']} folds need at least {2 * split['folds']} images, "
                          f"the data has {info.n_dev}")
    data_identity = {k: data.get(k) for k in ("name", "subset", "image_size", "channels") if data.get(k) is not None}
    specs = {}
    for name in variants_raw:
        specs[name] = _resolve_variant(raw["study"], name, variants_raw, train_defaults, data_identity,
                                       {k: split[k] for k in ("folds", "repeats", "split_seed")}, info)
        specs[name] = replace(specs[name], compare_to=_reference(name, variants_raw, baseline))
    if raw.get("aa_control"):
        specs[AA_CONTROL] = aa_control(specs[baseline], variants_raw)
    return Study(raw["study"], raw.get("description", ""), data, split, execution, baseline, specs)


def aa_control(baseline: VariantSpec, variants: dict) -> VariantSpec:
    """The baseline again with another seed offset: same network, folds and seeds, independent
    initialisation, batch order and dropout. Its difference from the baseline is pure noise."""
    if AA_CONTROL in variants:
        raise ConfigError(f"variant {AA_CONTROL!r}: the name is reserved for the A/A control that "
                          "'aa_control: true' adds; rename the variant")
    return replace(baseline, name=AA_CONTROL, seed_offset=AA_SEED_OFFSET, chain=(AA_CONTROL, *baseline.chain),
                   diff={}, compare_to=baseline.name,
                   description=f"A/A control: {baseline.name} retrained with seed offset {AA_SEED_OFFSET}")


def _reference(name: str, variants: dict[str, dict], baseline: str) -> str | None:
    """What a variant is compared with: its `compare_to`, else its base if that is a variant, else the
    baseline; None for the baseline itself."""
    entry = variants[name]
    if "compare_to" in entry:
        ref = entry["compare_to"]
        if ref not in variants or ref == name:
            raise ConfigError(f"variant {name!r}, field 'compare_to': {ref!r} is not another variant; "
                              f"variants: {', '.join(v for v in variants if v != name)}")
        return ref
    if name == baseline:
        return None
    return entry["base"] if entry["base"] in variants and entry["base"] != name else baseline


def _resolve_variant(study: str, name: str, variants: dict[str, dict], train_defaults: dict,
                     data_identity: dict, split: dict, info) -> VariantSpec:
    chain = _base_chain(name, variants)
    arch = variants[chain[-1]]["base"]
    entry = get_entry(arch)
    model, train, explicit = dict(entry.defaults), copy.deepcopy(train_defaults), set()
    for link in reversed(chain):  # root first, so nearer diffs win
        for knob, value in variants[link].items():
            if knob in ("base", "description", "compare_to"):
                continue
            explicit.add(knob)
            if knob in TRAIN_KNOBS:
                train = _merge(train, {knob: value})
            elif knob in model:
                model[knob] = value
            else:
                raise ConfigError(f"variant {link!r}, field {knob!r}: model {arch!r} has no such knob; "
                                  f"its knobs: {', '.join(model)}")
    block = model.get("block")
    unused = sorted(explicit & UNUSED_BY_BLOCK.get(block, set()))
    if unused:
        raise ConfigError(f"variant {name!r}, field {unused[0]!r}: has no effect with block {block!r}; "
                          f"remove it or choose a block type that uses it")
    spec = VariantSpec(
        study=study, name=name, arch=arch, model=model, train=train, data=data_identity, split=split,
        input_shape=info.shape, num_classes=info.num_classes, description=variants[name].get("description", ""),
        chain=tuple(chain), diff={k: v for k, v in variants[name].items() if k not in ("base", "description", "compare_to")})
    try:
        spec.layer_table()
    except GeometryError as e:
        raise ConfigError(f"variant {name!r}: impossible geometry for {'x'.join(map(str, info.shape))} "
                          f"inputs: {e}. Fix: padding: same, a smaller stride or kernel, fewer stages/pooling, "
                          f"or larger images") from None
    except ConfigError as e:  # the family's own checks say "knob: what is wrong"
        knob, _, why = str(e).partition(": ")
        raise ConfigError(f"variant {name!r}, field {knob!r}: {why}") from None
    if info.n_dev is not None:
        n_train = info.n_dev - -(-info.n_dev // split["folds"])  # smallest training part over the folds
        if train["batch_size"] > n_train:
            raise ConfigError(f"variant {name!r}, field 'batch_size': {train['batch_size']} is larger than the "
                              f"{n_train} training images of a fold; use a batch size of at most {n_train}")
    return spec


def _base_chain(name: str, variants: dict[str, dict]) -> list[str]:
    """[name, its base, its base's base, ...] over variants; the last one's base is a model."""
    chain = [name]
    while True:
        base = variants[chain[-1]]["base"]
        if base in variants and base != chain[-1]:
            if base in chain:
                loop = " -> ".join(chain[chain.index(base):] + [base])
                raise ConfigError(f"variant {name!r}, field 'base': the bases form a cycle ({loop}); "
                                  "one of them must start from a model such as 'cnn'")
            chain.append(base)
            continue
        try:
            get_entry(base)
        except ConfigError:
            close = difflib.get_close_matches(base, [*variants, *list_models()], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"variant {chain[-1]!r}, field 'base': {base!r} is neither a variant nor a registered model"
                f"{hint}; variants: {', '.join(variants)}; models: {', '.join(list_models())}") from None
        return chain


def _merge(base: dict, diff: dict) -> dict:
    """Recursive dict update: a variant's `augment: {flip: true}` keeps its base's other augment knobs."""
    out = copy.deepcopy(base)
    for k, v in diff.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def describe_changes(baseline: VariantSpec, variant: VariantSpec) -> list[str]:
    out = [] if baseline.arch == variant.arch else [f"model: {baseline.arch} -> {variant.arch}"]
    if baseline.seed_offset != variant.seed_offset:
        out.append(f"seed offset: {baseline.seed_offset} -> {variant.seed_offset}")
    for section in ("model", "train"):
        a, b = _flatten(getattr(baseline, section)), _flatten(getattr(variant, section))
        for knob in b:
            if a.get(knob) != b[knob]:
                out.append(f"{knob}: {_fmt(a.get(knob))} -> {_fmt(b[knob])}")
    return out


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, list):
        return "[" + ", ".join(map(str, v)) + "]"
    return str(v)
