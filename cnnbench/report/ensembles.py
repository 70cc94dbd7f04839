"""Ensembles: the k fold models of a variant averaged (soft voting) on the test images none of them saw
- the official test split, or the part `data.holdout` kept out of every fold - next to the mean single
model on the same images, the gain with a paired bootstrap interval, and each variant's gain against its
comparison's (dropout is the cheap stand-in for an ensemble: does it leave less to gain?)."""

from __future__ import annotations

import html
import re

import numpy as np

from cnnbench.config import AA_CONTROL
from cnnbench.report.format import pts
from cnnbench.report.section import Section
from cnnbench.report.tables import html_table

RUN = re.compile(r"(?P<variant>.+)/fold(?P<fold>\d+)-seed(?P<seed>\d+)")
NOTE = ("Each variant's ensembles average the class probabilities of its k fold models of one repeat and "
        "seed (soft voting); the single-model accuracy is the mean of the same models on the same test images. "
        "<b>What the intervals cover</b>: a paired bootstrap over the test images (9,999 resamples, percentile): "
        "the trained models are held fixed, so an interval says how much the gain would move on another sample "
        "of test images, not how much it would move if the models were trained again (other seeds or splits "
        "give other models); with few ensembles per variant, the spread of their gains is the only sign of that. "
        "The difference of two variants' gains resamples the same images for both. Intervals only: no verdicts "
        "are drawn from them (coverage: README, statistics).")


def ensembles(ctx) -> Section | None:
    from cnnbench.ensemble import ensemble_table, gain_difference_interval, gain_interval

    path = ctx.results_dir / "test_probs.npz"
    if not path.exists():
        return None
    stored = np.load(path)
    y = stored["y_test"]
    folds = next(iter(ctx.specs.values())).split["folds"]
    runs: dict[str, dict] = {}
    for key in stored.files:
        m = RUN.fullmatch(key)
        if m:
            runs.setdefault(m["variant"], {})[(int(m["fold"]), int(m["seed"]))] = stored[key]
    # an ensemble missing a diverged fold model would be another ensemble: such a variant is named, not shown
    planned = ctx.runs["variant"].value_counts()
    incomplete = [v for v in ctx.featured if 0 < planned.get(v, 0) and len(runs.get(v, {})) < planned[v]]
    shown = [v for v in ctx.featured if v not in incomplete and len(runs.get(v, {})) > 1]
    if not shown:
        return None
    tables = {v: ensemble_table(runs[v], y, lambda run: (run[0] // folds, run[1])) for v in shown}
    rows, aa_note = [], ""
    for v in shown:
        g = gain_interval(tables[v])
        ref = ctx.references.get(v)
        versus = ""
        if ref in tables:
            d = gain_difference_interval(tables[ref], tables[v])
            if v == AA_CONTROL and np.isfinite(d["ci_low"]) and not d["ci_low"] <= 0 <= d["ci_high"]:
                aa_note = (f'<p class="note">The {AA_CONTROL} row is the baseline trained again, yet its gain '
                           "differs from the baseline's by an interval that excludes 0: these intervals hold the "
                           "trained models fixed, so they leave out retraining noise, and this row shows how much "
                           "that can be. Read the other rows' differences against it.</p>")
            versus = f"{pts(d['diff'])} [{pts(d['ci_low'])}, {pts(d['ci_high'])}] vs {html.escape(ref)}"
        rows.append([html.escape(v), f"{g['groups']} &times; {g['models'] // max(g['groups'], 1)}",
                     pts(g["single_acc"], False), pts(g["ensemble_acc"], False),
                     f"{pts(g['gain'])} [{pts(g['ci_low'])}, {pts(g['ci_high'])}]", versus])
    table = html_table(["variant", "ensembles × models", "single model %", "ensemble %",
                        "gain, pts [95% CI]", "gain minus its comparison's gain, pts [95% CI]"], rows,
                       numeric={2, 3})
    where = "the official test split" if not ctx.specs[ctx.baseline].data.get("holdout") else \
        f"the {ctx.specs[ctx.baseline].data['holdout']:.0%} of the images held out of every fold"
    left_out = ("<p>Left out, as some of their runs did not train: " + ", ".join(html.escape(v) for v in incomplete)
                + ".</p>") if incomplete else ""
    return Section("ensembles", "Ensembles of the fold models",
                   f"<p>Scored on {len(y):,} test images: {where}.</p>" + table + left_out + aa_note
                   + f'<p class="note">{NOTE}</p>')
