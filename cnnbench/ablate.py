"""`cnnbench ablate`: leave-one-out variants of a full model, written into a study config.

Given a variant with several design choices on (BatchNorm, dropout, shortcuts, augmentation, ...), write
one variant per choice with only that choice switched off, each built on the full model and compared
with it, so the workflow trains them and the report tests what each choice contributes in the presence
of all the others - the ablation study the course describes.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path

import yaml

from cnnbench.config import TRAIN_KNOBS, load_study, read_config
from cnnbench.errors import ConfigError
from cnnbench.knobs import AugmentKnobs, TrainKnobs
from cnnbench.models.external import EXTERNAL_KNOBS

# What "switched off" means for the knobs whose off-value is not the model's default.
OFF = {"bn": False, "shortcut": False, "dropout": 0.0, "weight_decay": 0.0, "l1": 0.0, "activity": 0.0,
       "label_smoothing": 0.0, "pool": "none", "hidden": [], "augment": {}, "nesterov": False, "momentum": 0.0}


def off_value(knob: str, current, default):
    """The value of `knob` with the choice removed: a known off-value, else `default` (the model's for a
    model knob, the study's protocol value for a training knob: labels_per_class none = every label)."""
    if knob == "augment":
        return {k: v for k, v in vars(AugmentKnobs()).items()}
    if knob.startswith("augment."):
        return getattr(AugmentKnobs(), knob.split(".", 1)[1])
    return OFF.get(knob, default)


def ablate(config: str | Path, variant: str, remove: list[str], out: str | Path) -> list[str]:
    """Write `config` plus one `<variant>_no_<knob>` variant per knob in `remove` to `out`; returns their
    names. `out` is written only once the new study is valid, and never over the input config."""
    if not remove:
        raise ConfigError("ablate --remove: no knob given; name the choices to switch off, e.g. bn,dropout")
    twice = sorted({k for k in remove if remove.count(k) > 1})
    if twice:
        raise ConfigError(f"ablate --remove: {', '.join(twice)} given more than once; name each knob once")
    if Path(out).resolve() == Path(config).resolve():
        raise ConfigError(f"ablate --out: {out} is the input config; write the new study to another file")
    study = load_study(config)
    if variant not in study.variants:
        raise ConfigError(f"ablate: {variant!r} is not a variant of {config}; variants: {', '.join(study.variants)}")
    spec = study.variants[variant]
    from cnnbench.models.registry import get_entry

    model_defaults = {} if spec.external else get_entry(spec.arch).defaults
    raw = read_config(config)
    added = []
    augment_knobs = list(vars(AugmentKnobs()))
    for knob in remove:
        top, _, sub = knob.partition(".")
        if sub and (top != "augment" or sub not in augment_knobs):
            raise ConfigError(f"ablate --remove: {knob!r}: only augment has sub-knobs ({', '.join(augment_knobs)}); "
                              "name one as augment.<name>, or a whole knob")
        if knob in EXTERNAL_KNOBS or knob.startswith("_"):
            raise ConfigError(f"ablate --remove: {knob!r} is an external network's setting, not a choice to switch "
                              "off; remove a model or training knob")
        if top in TRAIN_KNOBS:
            current = spec.train[top] if not sub else spec.train["augment"][sub]
        elif knob in spec.model:
            current = spec.model[knob]
        else:
            model_knobs = [k for k in spec.model if not k.startswith("_")]
            close = difflib.get_close_matches(knob, [*model_knobs, *TRAIN_KNOBS], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"ablate --remove: {knob!r} is not a knob of variant {variant!r}{hint}; its model "
                              f"knobs: {', '.join(model_knobs)}; training knobs: {', '.join(TRAIN_KNOBS)}")
        default = (raw.get("protocol", {}).get(top, getattr(TrainKnobs(), top)) if top in TRAIN_KNOBS
                   else model_defaults.get(knob))
        off = off_value(knob, current, default)
        if off == current or (knob == "augment" and not any(current.values())):
            raise ConfigError(f"ablate --remove: {knob!r} is already off or at its default in {variant!r} "
                              f"({current!r}); remove only choices the full model changes")
        name = f"{variant}_no_{knob.replace('.', '_')}"
        if name in raw["variants"]:
            raise ConfigError(f"ablate: the config already has a variant {name!r}")
        entry = {"base": variant, "compare_to": variant,
                 "description": f"{variant} without {knob} ({knob}: {_show(off)} instead of {_show(current)})"}
        if "." in knob:
            entry["augment"] = {knob.split(".", 1)[1]: off}
        else:
            entry[knob] = copy.deepcopy(off)
        raw["variants"][name] = entry
        added.append(name)
    text = (f"# Generated by `cnnbench ablate {variant} --remove {','.join(remove)}` from {config}:\n"
            f"# the variants {', '.join(added)} each switch one choice of {variant} off.\n"
            f"# Written from {Path(config).name}'s values: its comments are not carried over (they stay in {config}).\n"
            + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    out = Path(out)
    draft = out.with_name(f".{out.name}.draft")  # beside it: relative data paths and modules resolve alike
    draft.write_text(text)
    try:
        load_study(draft)  # the new study must be valid before it replaces anything
        draft.replace(out)
    except ConfigError as e:
        raise ConfigError(f"ablate: the study with {', '.join(added)} would not be valid: "
                          f"{str(e).replace(str(draft), str(out))}") from None
    finally:
        draft.unlink(missing_ok=True)  # (gone already once moved into place)
    return added


def _show(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
