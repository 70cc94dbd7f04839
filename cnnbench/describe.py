"""`cnnbench describe`: the layer arithmetic of a variant or model, computed from the formulas."""

from __future__ import annotations

from pathlib import Path

from cnnbench.errors import ConfigError, did_you_mean
from cnnbench.models.geometry import LayerRow, layer_table
from cnnbench.models.registry import get_plan, is_model, list_models

DEFAULT_CONFIG = Path("config/config.yaml")


def describe(name: str, config: str | Path | None = None, input_shape: tuple[int, ...] | None = None,
             num_classes: int | None = None) -> str:
    explicit = config is not None  # --config given: its variant of that name wins over a model of that name
    if config is None and not is_model(name) and DEFAULT_CONFIG.exists():
        config = DEFAULT_CONFIG
    study = None
    if config is not None and (explicit or not is_model(name)):
        from cnnbench.config import load_study

        study = load_study(config)
        if name not in study.variants and not is_model(name):
            hint = did_you_mean(name, [*study.variants, *list_models()])
            raise ConfigError(f"{config}: no variant {name!r}{hint}; variants: {', '.join(study.variants)}; "
                              f"models: {', '.join(list_models())}")
    if input_shape is not None and len(input_shape) != 3:
        raise ConfigError("--input: give channels, height and width, e.g. 3x32x32")
    if study is not None and name in study.variants:
        spec = study.variants[name]
        changes = study.changes(name)
        title = (f"variant {name!r} of study {study.name!r} (base chain: {' <- '.join(spec.chain)} <- {spec.arch})"
                 + (f"\nchanges vs {study.baseline}: {'; '.join(changes)}" if changes else ""))
        if input_shape or num_classes:  # the variant on other images: what it would build there
            from dataclasses import replace

            asked = replace(spec, input_shape=tuple(input_shape or spec.input_shape),
                            num_classes=num_classes or spec.num_classes)
            title += (f"\nshown on {_shape(asked.input_shape)} images, {asked.num_classes} classes "
                      f"(--input/--classes; the study's: {_shape(spec.input_shape)}, {spec.num_classes})")
            spec = asked
        if spec.external:
            title += ("\nan external network: shapes and parameters from a forward pass with hooks; MACs of "
                      "convolutions and linear layers only; receptive fields not available")
        return title + "\n" + format_table(spec.layer_table(), spec.input_shape, rf_known=not spec.external)
    if study is not None:  # a model named with --config: on that study's images and classes
        some = next(iter(study.variants.values()))
        input_shape, num_classes = input_shape or some.input_shape, num_classes or some.num_classes
    shape = tuple(input_shape or (1, 28, 28))
    rows = layer_table(get_plan(name, shape, num_classes or 10), shape)
    return f"model {name!r}\n" + format_table(rows, shape)


def format_table(rows: list[LayerRow], input_shape: tuple[int, ...], rf_known: bool = True) -> str:
    head = ("layer", "type", "output", "params", "MACs", "RF")
    body = [("input", "", _shape(input_shape), "", "", "1")]
    for r in rows:
        body.append((r.name.removeprefix("features."), r.kind, _shape(r.out_shape), f"{r.params:,}",
                     f"{r.macs:,}", "n/a" if not rf_known else "all" if r.rf is None else str(r.rf)))
    total_p, total_m = sum(r.params for r in rows), sum(r.macs for r in rows)
    body.append(("total", "", "", f"{total_p:,}", f"{total_m:,}", ""))
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    right = {3, 4, 5}

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    note = ("MACs: multiply-accumulates per image (convolutions and linear layers; FLOPs = 2 x MACs). "
            + ("RF: receptive field in input pixels." if rf_known else "RF: not known for an external network."))
    return "\n".join([line(head), rule, *map(line, body[:-1]), rule, line(body[-1]), note])


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))
