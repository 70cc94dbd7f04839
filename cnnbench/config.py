"""Study config -> validated, resolved specs.  config file -> `load_study` -> `Study` of `VariantSpec`s.

Validation happens once, up front, and every failure is one `ConfigError`, one line, naming the file,
the variant and the field:

1. reading: `StrictLoader` refuses a key written twice in one mapping (with both line numbers) and reads
   YAML 1.2 floats (`1e-3`) as floats, which PyYAML's YAML 1.1 rules leave as strings;
2. numbers (`normalise`, also applied to the dict Snakemake parsed itself): an integer field takes 2 and
   refuses 2.0 and 2.5 alike; every number must be finite; `'1e-3'` strings become floats;
3. types, ranges and upper bounds come from the JSON schema (the one in workflow/schemas);
4. cross-field rules: data folders, bases and cycles, padding within the kernel's span, and each
   variant's network walked with the shape formulas, so an impossible geometry stops the workflow
   before any training;
5. optionally (`budget=`; the workflow always does it) the study's memory and compute budget
   (cnnbench.budget).

Nothing here imports torch.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from cnnbench.catalog import CATALOG, SYNTHETIC_KEYS, complete_data, dataset_info
from cnnbench.config_schema import check_schema, normalise, path_words, schema  # noqa: F401 (re-exported)
from cnnbench.config_yaml import StrictLoader, read_config  # noqa: F401 (re-exported)
from cnnbench.errors import ConfigError, did_you_mean
from cnnbench.knobs import TRAIN_KNOBS, AugmentKnobs, TrainKnobs  # noqa: F401 (re-exported)
from cnnbench.models import plan as P
from cnnbench.models.convnet import UNUSED_BY_BLOCK
from cnnbench.models.external import EXTERNAL_KNOBS, is_external
from cnnbench.models.geometry import GeometryError, LayerRow, layer_table
from cnnbench.models.registry import get_entry, list_models

SPEC_VERSION = 2  # bump when the meaning of a knob changes, so old results stop matching new specs
# 2: run seeds derive from (seed, fold, seed offset) instead of the raw seed (cnnbench.seeds)
AA_CONTROL = "aa_control"  # name of the A/A control variant that `aa_control: true` adds
AA_SEED_OFFSET = 1  # its seed offset: same folds and seeds as the baseline, independent random streams


SPLIT_DEFAULTS = {"folds": 5, "repeats": 1, "seeds": [0], "split_seed": 0}
EXECUTION_DEFAULTS = {"device": "auto", "threads": 1, "max_hours": 24, "runs_per_job": "all",  # max_memory_gb: see budget
                      "precision": "auto", "compile": False, "deterministic": False, "jobs_per_gpu": "auto"}
NUMERICS = ("precision", "compile", "deterministic")  # execution settings a run's numbers depend on


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
    numerics: dict[str, Any] = field(default_factory=dict)  # precision, compile, deterministic (cnnbench.numerics)
    pretrain: dict[str, Any] = field(default_factory=dict)  # with train.pretrained: {name, spec, spec_hash} of the source

    def identity(self) -> dict[str, Any]:
        """What the numbers of a run depend on (the name and description do not). The plan's digest is
        included, so a code change that alters the network built from the same knobs changes the hash."""
        if self.external:  # the library's version or the module's source hash, not a plan
            from cnnbench.models import external

            built = {"source": external.identity(self.arch, self.model.get("_search", ())),
                     **external.weights_identity(self.model)}
        else:
            built = {"plan": P.plan_digest(self.plan())}
        # not identity: where to import from (_search), where the weights file lies (its hash is), which
        # layer Grad-CAM looks at (the report only)
        model = {k: v for k, v in self.model.items()
                 if not k.startswith("_") and not (self.external and k in ("weights", "cam_layer"))}
        return {"version": SPEC_VERSION, "arch": self.arch, "model": model, "train": self.train,
                "data": self.data, "split": self.split, "input_shape": list(self.input_shape),
                "num_classes": self.num_classes, "seed_offset": self.seed_offset, **built,
                # only numerics that differ from the defaults (a default-precision study's hash does not
                # name them); new train knobs such as decay_biases, activity and labels_per_class are in
                # `train` with their defaults, so results from before they existed do not match, and retrain
                **({"numerics": changed} if (changed := non_default_numerics(self.numerics)) else {}),
                **({"pretrain": self.pretrain["spec_hash"]} if self.pretrain else {})}

    @cached_property  # the plan digest rebuilds the network plan: compute it once per spec
    def spec_hash(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def external(self) -> bool:
        """Built by torchvision, timm or the user's own module, not from the design space's plan."""
        return is_external(self.arch)

    def plan(self) -> P.Network:
        if self.external:
            raise ConfigError(f"variant {self.name!r}: {self.arch} is an external network; it has no design-space plan")
        return get_entry(self.arch).plan_fn(self.model, self.input_shape, self.num_classes)

    def network(self):
        """The torch module this variant trains (on the CPU, freshly initialised from torch's global RNG)."""
        if self.external:
            from cnnbench.models import external

            return external.build(self.arch, self.model, self.input_shape, self.num_classes, self.model.get("_search", ()))
        from cnnbench.models.build import build_model

        return build_model(self.plan(), self.input_shape)

    def layer_table(self) -> list[LayerRow]:
        if self.external:
            return self._external_rows
        return layer_table(self.plan(), self.input_shape)

    @cached_property
    def _external_rows(self) -> list[LayerRow]:
        from cnnbench.models import external

        return external.layer_rows(self.network(), self.input_shape, self.num_classes)

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
    def from_dict(cls, d: dict[str, Any]) -> VariantSpec:
        return cls(**{**d, "chain": tuple(d.get("chain", ())), "input_shape": tuple(d["input_shape"])})


PRESENTATION = ("description", "chain", "diff", "compare_to")  # VariantSpec fields no run depends on


def non_default_numerics(numerics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in numerics.items() if v != EXECUTION_DEFAULTS[k]}


@dataclass(frozen=True)
class Study:
    name: str
    description: str
    data: dict[str, Any]  # the config's data section, root included
    split: dict[str, Any]  # folds, repeats, seeds, split_seed
    execution: dict[str, Any]
    baseline: str
    variants: dict[str, VariantSpec]
    pretrain: dict[str, VariantSpec] = field(default_factory=dict)  # name -> the network trained on the source task
    pretrain_sources: dict[str, dict] = field(default_factory=dict)  # name -> its data section, root/path included

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

def load_study(source: str | Path | dict, name_hint: str | None = None, *, files: list | None = None,
               budget: Any = None) -> Study:
    """Validate and resolve a study from a YAML path or an already-parsed dict (Snakemake's config).

    files: the config files a dict was parsed from (Snakemake's `workflow.configfiles`); they are read
      again with `StrictLoader`, since only the file shows a key written twice.
    budget: None (default: validation only, for tools that look at a study without running all of it),
      True (check memory and compute against this host, see cnnbench.budget) or a `budget.Machine`.
    """
    if isinstance(source, dict):
        where = name_hint or "config"
        for path in files or ():
            read_config(path)  # raises on duplicate keys and YAML errors, naming the file
        raw = copy.deepcopy(source)
    else:
        where = str(source)
        raw = read_config(source)
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a study config must be a mapping with study, data and variants")
    try:
        folder = Path(source).resolve().parent if not isinstance(source, dict) else \
            (Path(files[0]).resolve().parent if files else None)
        study = _resolve(raw, (str(folder),) if folder else ())
        if budget is not None and budget is not False:
            from cnnbench import budget as B

            machine = B.detect_machine(study.execution) if budget is True else budget
            B.check_study(study, machine)
        return study
    except ConfigError as e:
        raise ConfigError(_one_line(f"{where}: {e}")) from None


def _one_line(message: str) -> str:
    return " ".join(message.split())


# --- numbers ---------------------------------------------------------------------------------------

def _resolve(raw: dict, search: tuple[str, ...] = ()) -> Study:
    raw = normalise(raw)
    check_schema(raw)
    data = dict(raw["data"])
    check_data(data)
    data = complete_data(data)  # synthetic: shape, classes, n and test_n written out (part of the identity)
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
    synthetic = data["name"] == "synthetic"
    if info.n_dev is not None and info.n_dev < 2 * split["folds"]:
        raise ConfigError(f"protocol.folds: {split['folds']} folds need at least {2 * split['folds']} images, "
                          f"the data has {info.n_dev}" + ("; raise data.n or use fewer folds" if synthetic else ""))
    # synthetic labels are i mod classes: the smallest class has n // classes images
    balanced = synthetic or data.get("labels")  # a label subset: its share of the images is estimated as balanced
    smallest = info.n_dev // info.num_classes if balanced else _smallest_class(data["name"], info.n_dev)
    if data["name"] == "npz" and not data.get("labels") and not data.get("subset") and not data.get("holdout"):
        from cnnbench.npzdata import inspect

        smallest = inspect(data["path"]).smallest_class  # counted, not estimated
    if smallest is not None and split["folds"] > smallest:
        raise ConfigError(f"protocol.folds: {split['folds']} stratified folds need at least {split['folds']} images "
                          f"of every class, and the smallest class of {data['name']} has about {smallest} here; "
                          f"use at most {smallest} folds or a larger "
                          + ("data.n (or fewer data.classes)" if synthetic else "data.subset"))
    specs, identity = {}, data_identity(data)  # (an npz file is hashed once, not per variant)
    for name in variants_raw:
        specs[name] = _resolve_variant(raw["study"], name, variants_raw, train_defaults, identity,
                                       {k: split[k] for k in ("folds", "repeats", "split_seed")}, info, search)
        specs[name] = replace(specs[name], compare_to=_reference(name, variants_raw, baseline),
                              numerics={k: execution[k] for k in NUMERICS})
        if execution["deterministic"] and execution["device"] != "cpu" and specs[name].external:
            from cnnbench.models.external import nondeterministic_on_cuda

            if culprits := nondeterministic_on_cuda(specs[name].network()):
                raise ConfigError(f"execution.deterministic: variant {name!r} has the layer(s) {', '.join(culprits)}, "
                                  "whose CUDA backward pass torch cannot make deterministic (it would stop the "
                                  "first step); set deterministic: false (verify then compares within a "
                                  "tolerance) or device: cpu")
    pretrain = {name: pretrain_spec(name, entry, specs, variants_raw) for name, entry in raw.get("pretrain", {}).items()}
    pretrain_sources = {name: complete_data(dict(entry["data"])) for name, entry in raw.get("pretrain", {}).items()}
    for name, spec in specs.items():
        if spec.train.get("pretrained"):
            specs[name] = with_pretrained(spec, pretrain)
        else:
            for knob, default in (("freeze", False), ("finetune_lr_factor", 1.0)):
                if spec.train.get(knob, default) != default:
                    raise ConfigError(f"variant {name!r}, field {knob!r}: acts on pretrained weights, and the "
                                      "variant has none; add pretrained: <a pretrain entry> or remove "
                                      f"{knob}")
    if raw.get("aa_control"):
        specs[AA_CONTROL] = aa_control(specs[baseline], variants_raw)
    return Study(raw["study"], raw.get("description", ""), data, split, execution, baseline, specs, pretrain,
                 pretrain_sources)


TRANSFER_KNOBS = ("pretrained", "freeze", "finetune_lr_factor", "labels_per_class")


def pretrain_spec(name: str, entry: dict, specs: dict[str, VariantSpec], variants: dict) -> VariantSpec:
    """The network of `pretrain.<name>`: its variant's network and protocol, trained on the source data
    (all of it but a 10% check) for `epochs`, from scratch."""
    if entry["variant"] not in specs:
        raise ConfigError(f"pretrain.{name}.variant: {entry['variant']!r} is not a variant; variants: "
                          f"{', '.join(variants)}")
    source = complete_data(dict(entry["data"]))
    try:
        check_data(source)
        info = dataset_info(source)
    except ConfigError as e:  # "data.path: ..." -> "pretrain.NAME.data.path: ..."
        raise ConfigError(f"pretrain.{name}.{e}") from None
    base = specs[entry["variant"]]
    if info.shape != base.input_shape:
        raise ConfigError(f"pretrain.{name}.data: its images are {'x'.join(map(str, info.shape))}, the study's "
                          f"{'x'.join(map(str, base.input_shape))}; pretrain on images of the same shape")
    train = {**base.train, "epochs": entry.get("epochs", base.train["epochs"]), "pretrained": None, "freeze": False,
             "finetune_lr_factor": 1.0, "labels_per_class": None}
    return replace(base, name=f"pretrain-{name}", data=data_identity(source), train=train, num_classes=info.num_classes,
                   split={"folds": 1, "repeats": 1, "split_seed": base.split["split_seed"]}, pretrain={},
                   description=f"pretrained network {name!r}: {base.name}'s network on {source['name']}",
                   compare_to=None, chain=(), diff={})


def data_identity(data: dict) -> dict:
    """What a run's numbers depend on in a data section: which images, not where they are stored (root,
    path and download are left out); an npz file by the sha256 of its contents."""
    identity = {k: data.get(k) for k in ("name", "labels", "subset", "holdout", "image_size", "channels",
                                         *SYNTHETIC_KEYS) if data.get(k) is not None}
    if data["name"] == "npz":
        from cnnbench.data import file_hash

        identity["sha256"] = file_hash(Path(data["path"]).expanduser())
    return identity


def with_pretrained(spec: VariantSpec, pretrain: dict[str, VariantSpec]) -> VariantSpec:
    """A variant that starts from pretrained weights: the source is part of its identity, and its network
    must be the source's (only the head, which is replaced, may differ in its number of classes)."""
    name = spec.train["pretrained"]
    if name not in pretrain:
        raise ConfigError(f"variant {spec.name!r}, field 'pretrained': {name!r} is not an entry of the study's "
                          f"pretrain section ({', '.join(pretrain) or 'none'}); add pretrain: {{{name}: "
                          "{variant: ..., data: ...}}")
    source = pretrain[name]
    if spec.external:
        raise ConfigError(f"variant {spec.name!r}, field 'pretrained': {spec.arch} is an external network, whose "
                          "head cnnbench cannot tell apart from its body; pretrain a design-space base (cnn, "
                          "lenet, ...) or load the external network's own weights with its weights knob")
    differ = sorted(k for k in spec.model if spec.model[k] != source.model.get(k)) + \
        ([] if spec.arch == source.arch else ["base model"])
    if differ:
        raise ConfigError(f"variant {spec.name!r}, field 'pretrained': its network differs from the pretrained "
                          f"one ({source.description}) in {', '.join(differ)}; the weights would not fit - change "
                          "the pretrain entry's variant or these knobs")
    return replace(spec, pretrain={"name": name, "spec": source.run_dict(), "spec_hash": source.spec_hash})


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
                     data_identity: dict, split: dict, info, search: tuple[str, ...] = ()) -> VariantSpec:
    chain = _base_chain(name, variants, search)
    arch = variants[chain[-1]]["base"]
    external = is_external(arch)
    if external:
        model = {"kwargs": {}, "weights": None, "cam_layer": None, "_search": list(search)}
    else:
        model = dict(get_entry(arch).defaults)
    train, explicit = copy.deepcopy(train_defaults), set()
    for link in reversed(chain):  # root first, so nearer diffs win
        for knob, value in variants[link].items():
            if knob in ("base", "description", "compare_to"):
                continue
            explicit.add(knob)
            if knob in TRAIN_KNOBS:
                train = _merge(train, {knob: value})
            elif external and knob in EXTERNAL_KNOBS:
                model[knob] = value
            elif external:
                what = ("a design-space knob of the built-in models" if knob in get_entry("cnn").defaults
                        else "not a knob")
                raise ConfigError(f"variant {link!r}, field {knob!r}: {what}; it cannot apply to {arch} (an external "
                                  "network): pass the network's own arguments under kwargs: {...}, or build on a "
                                  "registered model")
            elif knob in EXTERNAL_KNOBS:
                raise ConfigError(f"variant {link!r}, field {knob!r}: only external networks (torchvision:, timm:, "
                                  f"module:function) take it; {arch!r} is a registered model")
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
    own = variants[name]  # (inherited from a base, they may be what the variant switches off: no_pool)
    if "pool_size" in own and model.get("pool") == "none":
        raise ConfigError(f"variant {name!r}, field 'pool_size': has no effect with pool: none; remove it or "
                          "choose pool: max or avg")
    if own.get("nesterov") and train["optimizer"] != "sgd":
        raise ConfigError(f"variant {name!r}, field 'nesterov': has no effect with optimizer "
                          f"{train['optimizer']!r} (SGD only; Adam's momentum knob is its beta1); remove it")
    _check_spans(name, model, train, info.shape, block)
    spec = VariantSpec(
        study=study, name=name, arch=arch, model=model, train=train, data=data_identity, split=split,
        input_shape=info.shape, num_classes=info.num_classes, description=variants[name].get("description", ""),
        chain=tuple(chain), diff={k: v for k, v in variants[name].items() if k not in ("base", "description", "compare_to")})
    try:
        spec.layer_table()
    except GeometryError as e:
        same = spec.model.get("padding") == "same"
        fix = e.fix or (("" if same else "padding: same, ") + "a smaller stride or kernel, fewer stages/pooling, "
                        "or larger images")
        raise ConfigError(f"variant {name!r}: impossible geometry for {'x'.join(map(str, info.shape))} "
                          f"inputs: {e}. Fix: {fix}") from None
    except ConfigError as e:  # the family's own checks say "knob: what is wrong"
        if spec.external:
            raise ConfigError(f"variant {name!r} ({arch}): {e}") from None
        knob, _, why = str(e).partition(": ")
        raise ConfigError(f"variant {name!r}, field {knob!r}: {why}") from None
    if info.n_dev is not None:
        n_train = info.n_dev - -(-info.n_dev // split["folds"])  # smallest training part over the folds
        lpc = train.get("labels_per_class")
        largest = _largest_class_in_fold(data_identity, info, split["folds"])
        if lpc and lpc >= largest:
            raise ConfigError(f"variant {name!r}, field 'labels_per_class': {lpc} per class keeps every training "
                              f"image of a fold (its largest class has {'about ' if largest < n_train else ''}"
                              f"{largest if largest < n_train else n_train} there); use fewer, or remove it")
        if lpc:
            n_train = min(n_train, lpc * info.num_classes)  # at most what the runs train on
        if train["batch_size"] > n_train:
            # named where it was written: protocol's value reaches every variant, so blaming the first one
            # misleads, unless a variant's own labels_per_class is what makes it too large
            def written_in(knob: str) -> str | None:
                return next((link for link in chain if knob in variants.get(link, {})), None)

            batch_in, lpc_in = written_in("batch_size"), written_in("labels_per_class") if lpc else None
            where = (f"variant {batch_in!r}, field 'batch_size'" if batch_in else
                     f"variant {lpc_in!r}, field 'labels_per_class' with protocol.batch_size" if lpc_in else
                     "protocol.batch_size")
            raise ConfigError(f"{where}: {train['batch_size']} is larger than the "
                              f"{n_train} training images of a fold"
                              + (f" ({lpc} per class, labels_per_class)" if lpc else "")
                              + f"; use a batch size of at most {n_train}")
    if train.get("activity"):
        from cnnbench.models.build import ACTIVATIONS

        if not any(isinstance(m, tuple(ACTIVATIONS.values())) for m in spec.network().modules()):
            raise ConfigError(f"variant {name!r}, field 'activity': its network has no activation modules "
                              f"({', '.join(ACTIVATIONS)}) whose outputs the penalty could act on (a functional "
                              "F.relu has no hook); remove activity or use activation modules")
    return spec


def _check_spans(name: str, model: dict, train: dict, shape: tuple[int, int, int], block: str | None) -> None:
    """Sizes that only make sense relative to another knob or to the image."""
    pad, k, d = model.get("padding"), model.get("kernel_size"), model.get("dilation", 1)
    if isinstance(pad, int) and not isinstance(pad, bool) and isinstance(k, int) and block != "inception":
        span = d * (k - 1)
        if pad > span:
            raise ConfigError(
                f"variant {name!r}, field 'padding': {pad} pixels per side is more than a {k}x{k} kernel with "
                f"dilation {d} can reach ({span}); every output row and column beyond that sees only zeros. "
                f"Use padding of at most {span}, or padding: same")
    shift = train.get("augment", {}).get("shift", 0)
    side = min(shape[1:])
    if shift >= side:
        raise ConfigError(f"variant {name!r}, field 'augment.shift': a shift of {shift} pixels can move a "
                          f"{side}x{side} image out of view entirely; use a shift below {side} (4 is usual for 32x32)")


# Shares of the images in the smallest and the largest class, for the data sets the catalog knows (train
# split; stratified subsets and folds keep them).
_CLASS_SHARES = {"mnist5k": (0.1, 0.1), "digits": (174 / 1797, 183 / 1797), "mnist": (5421 / 60000, 6742 / 60000),
                 "fashion_mnist": (0.1, 0.1), "kmnist": (0.1, 0.1), "cifar10": (0.1, 0.1), "cifar100": (0.01, 0.01),
                 "svhn": (4659 / 73257, 13861 / 73257)}


def _largest_class_in_fold(data: dict, info, folds: int) -> int:
    """At least the images of the largest class in a fold's training part: labels_per_class at or above
    it keeps them all. Where the class sizes are unknown (npz, image folders, a labels subset), the
    training part itself, the one bound that holds whatever the balance."""
    n_train = info.n_dev - info.n_dev // folds  # the largest training part over the folds
    if data["name"] == "synthetic":
        share = 1 / info.num_classes  # labels are i mod classes
    else:
        share = None if data.get("labels") else _CLASS_SHARES.get(data["name"], (None, None))[1]
    return n_train if share is None else min(n_train, math.ceil(share * n_train) + 1)  # +1: stratified rounding


def _smallest_class(name: str, n_dev: int | None) -> int | None:
    """About how many images the smallest class has (a stratified subset keeps the proportions)."""
    share = _CLASS_SHARES.get(name, (None, None))[0]
    return None if share is None or n_dev is None else math.floor(n_dev * share + 1e-9)


SPLIT_NAMES = {"train", "test", "val", "valid", "validation"}  # folder names of a split, not of a class


def check_data(data: dict) -> None:
    """What can be known about the data before any job: fields that do nothing for this data set, and
    the folders a data set is read from (they are read only by the first job, which is too late)."""
    name = data["name"]
    if (name == "npz") != ("path" in data):
        raise ConfigError("data.path: an npz study needs path, the .npz file with x and y" if name == "npz" else
                          f"data.path: only npz data is read from a file ({name} is not); remove it")
    if name == "npz":
        for key in ("root", "download", "image_size", "channels"):
            if data.get(key) not in (None, False):
                raise ConfigError(f"data.{key}: npz data is read from data.path as it is; remove {key}")
        from cnnbench.npzdata import inspect

        inspect(data["path"])  # every check of the file, now rather than in the first job
        return
    if name == "synthetic":  # generated from its section alone (the schema checks types and upper bounds)
        fixes = {"root": "it is generated, not read; remove root", "download": "nothing is downloaded; remove it",
                 "subset": "set data.n, the number of images, instead",
                 "image_size": "set data.shape, e.g. [3, 32, 32], instead",
                 "channels": "set the first entry of data.shape (1 or 3) instead"}
        for key, fix in fixes.items():
            if data.get(key) not in (None, False):  # download: false says nothing
                raise ConfigError(f"data.{key}: synthetic data does not use it; {fix}")
        shape = data.get("shape")
        if shape is not None and shape[0] not in (1, 3):
            raise ConfigError(f"data.shape: {shape[0]} channels; the first entry is the number of channels, 1 (grey) "
                              "or 3 (RGB), e.g. shape: [3, 32, 32]")
        if shape is not None and min(shape[1:]) < 4:
            raise ConfigError(f"data.shape: {shape[1]}x{shape[2]} images are smaller than 4x4; give sides of at "
                              "least 4, e.g. shape: [3, 32, 32]")
        return
    for key in SYNTHETIC_KEYS:
        if data.get(key) is not None:
            size = ("image_size and channels set its image size" if name == "imagefolder" else
                    f"its images are {'x'.join(map(str, CATALOG[name].shape))}")
            raise ConfigError(f"data.{key}: only synthetic data uses it ({name} is a real data set: {size}); "
                              "remove it, or set data.name: synthetic for random images")
    if name != "imagefolder":
        for key in ("image_size", "channels"):
            if data.get(key) is not None:
                raise ConfigError(f"data.{key}: only an imagefolder study uses it ({name} images are "
                                  f"{'x'.join(map(str, CATALOG[name].shape))}); remove it")
    if name in CATALOG and CATALOG[name].embedded:
        return
    root = data.get("root")
    if not root:
        if name == "imagefolder":
            return  # catalog.dataset_info says what it needs
        raise ConfigError(f"data.root: {name} is read from a local folder; set data.root to it (and "
                          "data.download: true to let torchvision fetch it there once, which needs internet)")
    folder = Path(root).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"data.root: {str(root)!r} is a file, not a folder; point data.root at the data set's folder")
    if name == "imagefolder":
        if not folder.is_dir():
            raise ConfigError(f"data.root: folder {str(root)!r} does not exist (from {os.getcwd()}); an imagefolder "
                              "study reads one sub-folder of images per class from it")
        train = folder / "train"
        class_root = train if train.is_dir() and (folder / "test").is_dir() else folder
        classes = [e.name for e in os.scandir(class_root) if e.is_dir()]  # torchvision: every folder is a class
        hidden = [c for c in classes if c.startswith(".")]
        if hidden:
            raise ConfigError(f"data.root: {str(class_root / hidden[0])!r} is a hidden folder, which torchvision "
                              "would read as a class; remove or move it (e.g. .ipynb_checkpoints)")
        splits = sorted(c for c in classes if c.lower() in SPLIT_NAMES) if class_root == folder else []
        if splits:  # train/ alone, or train/ + val/: split folders that torchvision would read as classes
            raise ConfigError(f"data.root: {str(root)!r} holds {', '.join(s + '/' for s in splits)}, which would be "
                              "read as classes; put the class folders directly in root (holdout: then keeps a "
                              "test part of them), or give root exactly train/ and test/, each with one sub-folder "
                              "per class (a validation folder is not used: the folds make their own)")
        if len(classes) < 2:
            raise ConfigError(f"data.root: {str(class_root)!r} has {len(classes)} class folder(s); an imagefolder "
                              "study needs at least 2, one sub-folder of images per class")
        if not data.get("image_size"):
            return  # the error that asks for it comes first (catalog.dataset_info)
        for split_root in [class_root, *([folder / "test"] if class_root == train else [])]:
            for name in sorted(classes):
                if not _has_image(split_root / name):
                    raise ConfigError(f"data.root: class folder {str(split_root / name)!r} holds no image "
                                      f"({', '.join(IMAGE_EXTENSIONS)}); add its images or remove the folder")
    elif not folder.is_dir() and not data.get("download"):
        raise ConfigError(f"data.root: folder {str(root)!r} does not exist (from {os.getcwd()}); point data.root "
                          "at the data set or set data.download: true (needs internet)")


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's


def _has_image(folder: Path) -> bool:
    """Whether torchvision's ImageFolder finds an image in `folder` (sub-folders too), stopping at the first:
    every job parses the config, and a class folder can hold a million files."""
    subfolders = []
    with os.scandir(folder) as entries:
        for e in entries:
            if e.is_dir():
                subfolders.append(e.path)
            elif e.name.lower().endswith(IMAGE_EXTENSIONS):
                return True
    return any(_has_image(Path(p)) for p in subfolders)


def _base_chain(name: str, variants: dict[str, dict], search: tuple[str, ...] = ()) -> list[str]:
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
        if is_external(base):
            from cnnbench.models import external

            try:
                external.identity(base, search)  # importable, and the model exists
            except ConfigError as e:
                raise ConfigError(f"variant {chain[-1]!r}, field 'base': {e}") from None
            return chain
        try:
            get_entry(base)
        except ConfigError:
            if base == chain[-1]:
                raise ConfigError(f"variant {base!r}, field 'base': a variant cannot be its own base; start from a "
                                  f"model such as 'cnn' or from another variant") from None
            hint = did_you_mean(base, [*variants, *list_models()])
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
            if knob.startswith("_"):  # bookkeeping (where a custom module was found), not a choice
                continue
            if a.get(knob) != b[knob]:
                was, now = _fmt(a.get(knob)), _fmt(b[knob])
                if knob == "width":  # unset (null): the first stage has the preset's own width
                    if _width(a, knob) == _width(b, knob):  # the preset's own width, written out or not
                        continue
                    was, now = _width(a, knob), _width(b, knob, mark=True)
                out.append(f"{knob}: {was} -> {now}")
    return out


def _width(model: dict, knob: str, mark: bool = False) -> str:
    """A first-stage width as a change shows it: the preset's own where `width` is unset, so `width: null`
    undoing a widening reads '32 -> 16 (the preset's)', not '32 -> none'."""
    if model.get(knob) is None and model.get("widths"):
        return f"{model['widths'][0]}" + (" (the preset's)" if mark else "")
    return _fmt(model.get(knob))


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
