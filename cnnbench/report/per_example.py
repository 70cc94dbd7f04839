"""Per-example comparison: which validation images flip between a variant and its reference.

From the stored validation predictions of every run: on the same fold and seed, the images one model
gets right and the other wrong (the flip rate), and an exact McNemar test per run. McNemar compares
two *trained models* on one fold's images; it ignores training variance, so it is no test of the design
choice (the verdicts are): it says how differently two equally accurate networks can behave.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from cnnbench.io import atomic_path
from cnnbench.report.format import pvalue
from cnnbench.report.section import Section
from cnnbench.report.tables import html_table
from cnnbench.stats import mcnemar

KEYS = ["fold", "seed"]
MAX_ROWS = 20  # per-run rows shown inline per variant; the CSV has every run


def mcnemar_table(ctx) -> pd.DataFrame:
    """One row per (variant, run): discordant counts, flip rate and exact McNemar p against its reference."""
    from cnnbench.stats import usable

    pred = ctx.table("predictions")
    ok = usable(ctx.runs)[["variant", *KEYS]]
    pred = pred.merge(ok, on=["variant", *KEYS])  # diverged runs are left out here too
    rows = []
    for v in [*ctx.design_variants, *([ctx.variants[-1]] if ctx.has_aa_control else [])]:
        ref = ctx.reference(v)
        a = pred[pred.variant == ref][[*KEYS, "index", "correct"]]
        b = pred[pred.variant == v][[*KEYS, "index", "correct"]]
        both = a.merge(b, on=[*KEYS, "index"], suffixes=("_ref", "_variant"))
        for (fold, seed), g in both.groupby(KEYS):
            rows.append({"variant": v, "reference": ref, "fold": fold, "seed": seed,
                         **mcnemar(g["correct_ref"].to_numpy(), g["correct_variant"].to_numpy())})
    cols = ["variant", "reference", "fold", "seed", "n", "only_baseline_right", "only_variant_right", "flip_rate", "p"]
    return pd.DataFrame(rows, columns=cols).rename(columns={"only_baseline_right": "only_reference_right",
                                                            "p": "mcnemar_p"})


def write_per_example(ctx, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        ctx.per_example.to_csv(tmp, index=False)


def per_example(ctx):
    t = ctx.per_example
    if t.empty:
        return None
    rows = []
    for v, g in t.groupby("variant", sort=False):
        rows.append([html.escape(v), html.escape(g["reference"].iloc[0]),
                     (f"{100 * g['flip_rate'].mean():.2f}", g["flip_rate"].mean()),
                     (f"{g['only_reference_right'].sum():,}", g["only_reference_right"].sum()),
                     (f"{g['only_variant_right'].sum():,}", g["only_variant_right"].sum()),
                     (f"{(g['mcnemar_p'] < 0.05).sum()} of {len(g)}", (g["mcnemar_p"] < 0.05).mean())])
    table = html_table(["variant", "reference", "flip rate % (mean over runs)", "only the reference right",
                        "only the variant right", "runs with McNemar p < 0.05"], rows, numeric={2, 3, 4, 5},
                       sortable=True)
    note = ('<p class="note">Flip rate: the share of a run\'s validation images that exactly one of the two models '
            "classifies correctly, on the same fold and seed. McNemar: exact binomial test on those flipped images, "
            "one per run; it asks whether these two trained networks differ on these images, not whether the design "
            "choice helps (that is the verdict, which accounts for training variance across folds). Per run: "
            f'<a href="{ctx.link(ctx.out_dir / "per_example.csv")}">per_example.csv</a> and each variant\'s section.'
            "</p>")
    return Section("per-example", "Per-example differences", table + note)


def per_example_rows(ctx, variant: str) -> str:
    """The per-run table of one variant, for its section in 'Per variant'."""
    t = ctx.per_example
    g = t[t.variant == variant]
    if g.empty:
        return ""
    rows = [[str(r.fold), str(r.seed), f"{r.n:,}", f"{r.only_reference_right}", f"{r.only_variant_right}",
             f"{100 * r.flip_rate:.2f}", pvalue(r.mcnemar_p)] for r in g.head(MAX_ROWS).itertuples()]
    ref = html.escape(g["reference"].iloc[0])
    more = (f'<p class="note">First {MAX_ROWS} of {len(g)} runs; all of them are in '
            f'<a href="{ctx.link(ctx.out_dir / "per_example.csv")}">per_example.csv</a>.</p>'
            if len(g) > MAX_ROWS else "")
    return (f"<details><summary>Flips against {ref}, per run (exact McNemar)</summary>"
            + html_table(["fold", "seed", "images", f"only {ref} right", "only this right", "flip rate %",
                          "McNemar p"], rows, numeric={2, 3, 4, 5, 6}) + more + "</details>")
