"""Config checks driven by the JSON schema: numbers read exactly, then types, ranges and bounds.

`normalise` walks the raw config beside the schema: a float in an integer field is refused, 2.0 as much
as 2.5 (the field counts something, and a decimal there is most often a value typed into the wrong
field); every number must be finite; and a YAML 1.2 float that arrived as a string ('1e-3', Snakemake's
own parse) becomes a float. `check_schema` then validates the result and turns the most useful
jsonschema error into one line naming the variant and the field.
"""

from __future__ import annotations

import math
import re
from dataclasses import fields
from functools import cache
from importlib import resources
from typing import Any

import yaml

from cnnbench.errors import ConfigError, did_you_mean
from cnnbench.knobs import TRAIN_KNOBS, AugmentKnobs, TrainKnobs
from cnnbench.models.convnet import KNOB_NAMES, ConvNetKnobs

# YAML 1.2 floats that YAML 1.1 (PyYAML) reads as strings: an exponent without a dot (1e-3, 5E-4) or
# without a sign (1.0e3). Forms with a dot and a signed exponent are already floats under YAML 1.1.
EXP_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")


def normalise(raw: Any) -> Any:
    """Numbers read exactly, guided by the schema: a float in an integer field is refused, 2.0 as much as
    2.5; every number must be finite; a YAML 1.2 float left as a string by YAML 1.1 ('1e-3') becomes a
    float in a number field. Also every key must be a name.
    The same function serves a file read here and the dict Snakemake parsed itself."""
    return _normalise(raw, schema(), [])


def _normalise(value: Any, node: dict | None, path: list) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                where = path_words(path) if path else "top level"
                raise ConfigError(f"{where}: key {key!r} ({type(key).__name__}) is not a name; write names as "
                                  f"text (quote it: '{key}')")
            child = _child_schema(node, key) if node is not None else None
            out[key] = _normalise(item, child, [*path, key])
        return out
    if node is None:
        return value
    types = _types(node)
    if isinstance(value, list):
        items = _items_schema(node) if "array" in types else None
        return [_normalise(item, items, [*path, i]) for i, item in enumerate(value)] if items else value
    numeric = types & {"number", "integer"}
    if not numeric or isinstance(value, bool):
        return value
    if isinstance(value, str) and EXP_FLOAT.match(value.strip()):
        value = float(value.strip().replace("_", ""))
    if isinstance(value, float):
        where = path_words(path)
        if not math.isfinite(value):
            written = ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
            default = _default_of(path)
            hint = f" such as {default!r}" if default is not None else ""
            raise ConfigError(f"{where}: {written} is not a finite number; give a finite number{hint}")
        if "integer" in types and "number" not in types:
            if value.is_integer():
                raise ConfigError(_decimal_in_integer_field(where, value, node))
            raise ConfigError(f"{where}: {value!r} is not a whole number; this field counts something, so write "
                              f"an integer such as {math.floor(value)} or {math.ceil(value)}")
    return value


def _decimal_in_integer_field(where: str, value: float, node: dict) -> str:
    """The refusal of 10.0 where a count goes, with the integer to write; where the value is also out of
    the field's range (epochs: 1e9), the range's end, so that the fix it gives is one that passes."""
    low = max((b["minimum"] for b in _branches(node) if "minimum" in b), default=None)
    high = min((b["maximum"] for b in _branches(node) if "maximum" in b), default=None)
    if high is not None and value > high:
        return (f"{where}: {_short(value)} is a decimal number and above the upper bound of {high}; write an "
                f"integer of at most {high}")
    if low is not None and value < low:
        return (f"{where}: {_short(value)} is a decimal number and below the minimum of {low}; write an integer "
                f"of at least {low}")
    return (f"{where}: {value!r} is a decimal number, but this field counts something; write the integer "
            f"{int(value)} (no decimal point or exponent)")


def _default_of(path: list) -> Any:
    """The default of a training or model knob, for messages (None when there is none)."""
    name = path[-1] if path else None
    if not isinstance(name, str):
        return None
    if name in TRAIN_KNOBS:
        return getattr(TrainKnobs(), name)
    if len(path) >= 2 and path[-2] == "augment" and name in {f.name for f in fields(AugmentKnobs)}:
        return getattr(AugmentKnobs(), name)
    if name in KNOB_NAMES:
        return getattr(ConvNetKnobs(), name)
    return None


def _deref(node: dict) -> dict:
    while isinstance(node, dict) and "$ref" in node:
        node = _ref(node["$ref"])
    return node


def _ref(ref: str) -> dict:
    target: Any = schema()
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return target


def _branches(node: dict) -> list[dict]:
    """The node and every schema it combines (allOf, oneOf, anyOf), dereferenced."""
    node = _deref(node)
    out = [node]
    for key in ("allOf", "oneOf", "anyOf"):
        for sub in node.get(key, ()):
            out += _branches(sub)
    return out


def _types(node: dict) -> set[str]:
    types: set[str] = set()
    for b in _branches(node):
        t = b.get("type")
        types.update([t] if isinstance(t, str) else t or ())
        for v in b.get("enum", ()):
            if isinstance(v, bool):
                types.add("boolean")
            elif isinstance(v, int):
                types.add("integer")
            elif isinstance(v, float):
                types.add("number")
    return types


def _child_schema(node: dict, key: str) -> dict | None:
    for b in _branches(node):
        if key in b.get("properties", {}):
            return b["properties"][key]
    for b in _branches(node):
        extra = b.get("additionalProperties")
        if isinstance(extra, dict):
            return extra
    return None


def _items_schema(node: dict) -> dict | None:
    for b in _branches(node):
        if isinstance(b.get("items"), dict):
            return b["items"]
    return None


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
        raise ConfigError(_schema_message(_branch_error(error)))


def _branch_error(error):
    """For a value that fits none of a oneOf's branches, the error of the branch of its own type
    (padding: 1000 -> "above the maximum", not "not one of [same, valid] or an integer")."""
    while error.validator in ("oneOf", "anyOf") and error.context:
        same_type = [e for e in error.context if e.validator not in ("type", "enum", "const")]
        if not same_type:
            break
        error = min(same_type, key=lambda e: len(e.absolute_path))
    return error


def _schema_message(error) -> str:
    path = list(error.absolute_path)
    where = path_words(path)
    if error.validator in ("maximum", "exclusiveMaximum", "maxItems"):
        bound = error.validator_value
        why = error.schema.get("x-bound")  # a sanity bound (not a range that follows from the meaning)
        tail = f" ({why}); use at most {bound}; the bound is set in workflow/schemas/config.schema.yaml" if why else ""
        if error.validator == "maxItems":
            return f"{where}: {len(error.instance)} entries are more than the upper bound of {bound}" + (
                tail or f"; give at most {bound}")
        if error.validator == "exclusiveMaximum":
            return f"{where}: {_short(error.instance)} must be less than {bound}; give a number below {bound}"
        if why:
            return f"{where}: {_short(error.instance)} is above the upper bound of {bound}{tail}"
        return f"{where}: {_short(error.instance)} is more than the maximum of {bound}; use at most {bound}"
    if error.validator == "minimum":
        return f"{where}: {_short(error.instance)} is less than the minimum of {error.validator_value}; use at least {error.validator_value}"
    if error.validator == "exclusiveMinimum":
        return (f"{where}: {_short(error.instance)} must be more than {error.validator_value}; give a number above "
                f"{error.validator_value}")
    if error.validator == "minProperties":
        example = "; add one, e.g. baseline: {base: cnn}" if path == ["variants"] else "; add an entry or remove it"
        return f"{where}: is empty{example}"
    if error.validator == "minItems":
        n = error.validator_value
        return f"{where}: {_short(error.instance)} has {len(error.instance)} entries; give at least {n}"
    if error.validator == "pattern":
        return (f"{where}: {_short(error.instance)} is not a usable name; use letters, digits, '_', '.' and '-', "
                "starting with a letter or digit")
    if error.validator == "propertyNames":
        return f"{where}: a key is not a usable name; use letters, digits, '_', '.' and '-', starting with a letter or digit"
    if error.validator == "type":
        expected = error.validator_value
        expected = [expected] if isinstance(expected, str) else expected
        want = " or ".join(_TYPE_WORDS.get(t, t) for t in expected)
        if error.instance is None:  # `key:` with nothing after it
            return f"{where}: is empty; give {want}"
        if expected == ["object"] and isinstance(error.instance, list) and error.instance \
                and all(isinstance(x, str) for x in error.instance):  # `augment: [flip]`
            example = ", ".join(f"{x}: <value>" for x in error.instance[:3])
            return f"{where}: {_short(error.instance)} is a list, not a mapping; give a mapping such as {{{example}}}"
        return f"{where}: {_short(error.instance)} is {_kind_of(error.instance)}, not {want}; give {want}"
    if error.validator in ("additionalProperties", "unevaluatedProperties"):
        names = re.findall(r"'([^']+)'", error.message.split("(")[-1])
        kind = "knob or field" if path and path[0] == "variants" else "field"
        section = _section_of(path)
        homes = _field_homes()
        misplaced = [n for n in names if n in homes and section not in homes[n]]
        if misplaced:  # a real field in the wrong section: say where it goes, not "did you mean" itself
            n = misplaced[0]
            return f"{where}: {n!r} does not go here; it belongs {' or '.join(SECTIONS[x] for x in homes[n])}"
        here = [n for n, places in homes.items() if section in places]
        hints = [f"{n!r}{did_you_mean(n, here)}" for n in names]
        return f"{where}: unknown {kind} {', '.join(hints)}; see workflow/schemas/config.schema.yaml for the allowed ones"
    if error.validator == "uniqueItems":
        return f"{where}: {_short(error.instance)} lists an entry more than once; give each one once"
    if error.validator == "required":
        missing = re.findall(r"'([^']+)' is a required property", error.message)
        return f"{where}: {missing[0]!r} is missing; add it" if missing else f"{where}: {error.message}"
    if error.validator == "enum":
        choices = ", ".join(_short(v) if isinstance(v, bool) or v is None else str(v) for v in error.validator_value)
        return f"{where}: {_short(error.instance)} is not allowed; choose one of {choices}"
    if error.validator in ("oneOf", "anyOf"):
        options = []
        for branch in map(_deref, error.validator_value):
            if "enum" in branch:
                options += [_short(v) for v in branch["enum"]]
            elif "const" in branch:
                options.append(_short(branch["const"]))
            else:
                t = branch.get("type", "value")
                options += [_TYPE_WORDS.get(x, x) for x in ([t] if isinstance(t, str) else t)]
        expected = " or ".join(dict.fromkeys(options))
        if isinstance(error.instance, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?([eE][-+]?\d+)?", error.instance.strip()):
            return f"{where}: {_short(error.instance)} is text, not a number; write it without quotes (expected {expected})"
        return f"{where}: {_short(error.instance)} is not allowed; expected {expected}"
    return f"{where}: {error.message}"


def _short(value: Any) -> str:
    """The value as the config spells it (YAML's true/false/null, not Python's True/None), cut to fit a
    one-line message (a 400-digit number, a long list)."""
    text = {True: "true", False: "false"}[value] if isinstance(value, bool) else "null" if value is None else repr(value)
    return text if len(text) <= 60 else f"{text[:40]}...({len(text)} characters)"


_TYPE_WORDS = {"integer": "an integer", "number": "a number", "string": "text", "boolean": "true or false",
               "array": "a list", "object": "a mapping", "null": "null"}


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    return {int: "an integer", float: "a number", str: "text", list: "a list", dict: "a mapping",
            type(None): "empty"}.get(type(value), f"a {type(value).__name__}")


def path_words(path: list) -> str:
    if not path:
        return "top level"
    if path[0] == "variants" and len(path) >= 2:
        rest = ".".join(map(str, path[2:]))
        return f"variant {path[1]!r}" + (f", field {rest!r}" if rest else "")
    return ".".join(map(str, path))


SECTIONS = {"top": "at the top level", "data": "under data:", "protocol": "under protocol:",
            "execution": "under execution:", "variant": "in a variant (under variants: NAME:)",
            "pretrain": "in a pretrain entry (under pretrain: NAME:)", "augment": "under augment:"}


def _section_of(path: list) -> str:
    """The schema section a config path is in (the keys of SECTIONS)."""
    if not path:
        return "top"
    if path[-1] == "augment" and (len(path) < 2 or path[-2] not in ("variants", "pretrain")):  # the field,
        return "augment"  # not a variant or pretrain entry that happens to be called augment
    if path[0] == "variants":
        return "variant"
    if path[0] == "pretrain":
        return "data" if len(path) > 2 and path[2] == "data" else "pretrain"
    return path[0] if path[0] in SECTIONS else "top"


@cache
def _field_homes() -> dict[str, tuple[str, ...]]:
    """Every field name -> the sections (SECTIONS' keys) it may be written in (training knobs: protocol
    or a variant), from the schema itself."""
    s, defs = schema(), schema()["$defs"]

    def names(node: dict) -> set[str]:
        out = set(node.get("properties", {}))
        for part in node.get("allOf", []):
            out |= names(defs[part["$ref"].split("/")[-1]])
        return out

    sections = {"top": set(s["properties"]), "data": names(defs["data"]), "protocol": names(defs["protocol"]),
                "execution": names(defs["execution"]), "variant": names(defs["variant"]),
                "pretrain": set(s["properties"]["pretrain"]["additionalProperties"]["properties"]),
                "augment": set(defs["training_knobs"]["properties"]["augment"]["properties"])}
    homes: dict[str, list[str]] = {}
    for section, names_here in sections.items():
        for field in names_here:
            homes.setdefault(field, []).append(section)
    return {f: tuple(places) for f, places in homes.items()}
