"""Report section: the translation probe (cnnbench.probe) - accuracy on shifted images, the equivariance
error of each stage, and how far the logits move (head invariance)."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from cnnbench.report.figures import figure_html, plt, sns
from cnnbench.report.section import Section
from cnnbench.report.tables import html_table

RUN_KEYS = ["variant", "fold", "seed"]


def probe_data(ctx) -> pd.DataFrame | None:
    """The `probe` table (cnnbench.probe.probe_table) of the featured variants' usable runs (diverged
    runs are left out, as everywhere in the report), or None when there is none."""
    from cnnbench.stats import usable

    try:
        t = ctx.table("probe")
    except FileNotFoundError:  # results collected before the probe existed
        return None
    if t.empty:
        return None
    runs = usable(ctx.runs)[RUN_KEYS].drop_duplicates()
    t = t.merge(runs, on=RUN_KEYS)
    t = t[t.variant.isin(ctx.featured)]
    return None if t.empty else t


def translation(ctx) -> Section | None:
    t = probe_data(ctx)
    if t is None:
        return None
    shown = [v for v in ctx.featured if v in set(t.variant)]
    return Section("translation", "Translation: equivariance and invariance",
                   near_chance_note(ctx, shown) + accuracy_vs_shift(ctx, t, shown) + equivariance_table(ctx, t, shown)
                   + NOTE + ctx.featured_note("Shown"))


NEAR_CHANCE = 0.10  # within 10 points of always answering the majority class


def near_chance_note(ctx, shown: list[str]) -> str:
    """A network that has barely learned is trivially invariant (a near-constant output does not move
    under a shift), so its flat lines say nothing about its design (a trial: a GAP net at 15% of 10
    classes after 3 epochs read as 'invariant')."""
    from cnnbench.stats import usable

    y = ctx.images.y
    chance = float(np.bincount(y).max() / len(y))
    acc = usable(ctx.runs).groupby("variant")["val_acc"].mean()
    low = [v for v in shown if v in acc and acc[v] < chance + NEAR_CHANCE]
    if not low:
        return ""
    named = ", ".join(f"{html.escape(v)} ({100 * acc[v]:.1f}%)" for v in low)
    return (f'<p class="alarm">Near chance ({100 * chance:.1f}%, the majority class): {named}. A network that has '
            "barely learned gives nearly the same output for any input, so it looks invariant to shifts whatever "
            "its design: read its lines below as 'not trained enough', not as invariance.</p>")


def accuracy_vs_shift(ctx, t: pd.DataFrame, shown: list[str]) -> str:
    acc = t[t.kind == "accuracy"].assign(acc=lambda d: 100 * d["value"])
    fig, ax = plt.subplots(figsize=(7.5, 4))
    palette = dict(zip(shown, sns.color_palette("tab10" if len(shown) <= 10 else "tab20", len(shown))))
    if ctx.baseline in palette:
        palette[ctx.baseline] = "black"
    sns.lineplot(data=acc, x="shift", y="acc", hue="variant", hue_order=shown, palette=palette, marker="o",
                 errorbar=("ci", 95), seed=0, ax=ax)
    ax.set(xlabel="shift s (pixels, along both axes; black enters)", ylabel="validation accuracy (%)")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.legend(fontsize=7, loc="lower left")
    n_runs = acc[["variant", "fold", "seed"]].drop_duplicates().groupby("variant").size()
    return figure_html(
        fig, "validation accuracy versus shift",
        "Validation accuracy when every image is shifted by s pixels right or left <i>and</i> up or down (image "
        "i in the i-th of the four diagonal directions, in turn), the pixels that enter black. Lines: mean over "
        f"runs ({_runs_text(n_runs)}); bands: 95% bootstrap confidence interval over runs. Shift 0 is the "
        "plain validation accuracy; nothing here was trained on shifted images unless the variant augments "
        "with shifts.")


def _runs_text(n_runs: pd.Series) -> str:
    lo, hi = int(n_runs.min()), int(n_runs.max())
    return f"{lo} per variant" if lo == hi else f"{lo} to {hi} per variant"


def _err(v: float) -> str:
    if not np.isfinite(v):
        return "n/a"
    return "0" if v < 5e-5 else f"{v:.2f}" if v >= 0.01 else f"{v:.1e}"


def equivariance_table(ctx, t: pd.DataFrame, shown: list[str]) -> str:
    """One row per variant and stage (then its logits): the stage's stride and, per input shift, the
    equivariance error (interior · whole map), mean over runs."""
    mean = t.groupby(["variant", "kind", "key", "shift"], sort=False)["value"].mean().to_dict()
    shifts = sorted({int(s) for s in t.loc[t.kind.isin(["equivariance", "head"]), "shift"]})
    header = ["variant", "head", "stage", "stride"] + [f"s = {s}" for s in shifts]
    rows = []
    for v in shown:
        strides = t[(t.variant == v) & (t.kind == "stride")].groupby("key", sort=False)["value"].mean()
        if strides.empty:
            continue
        head = html.escape(_head_kind(ctx, v))
        for stage, r in strides.items():
            cells = []
            for s in shifts:
                inner = mean.get((v, "equivariance", stage, s), np.nan)
                whole = mean.get((v, "equivariance_circular", stage, s), np.nan)
                cells.append(("", np.nan) if not (np.isfinite(inner) or np.isfinite(whole)) else
                             (f"{_err(inner)} &middot; {_err(whole)}", inner if np.isfinite(inner) else whole))
            rows.append([html.escape(v), head, html.escape(stage), (f"{int(r)}", r), *cells])
        heads = [mean.get((v, "head", "", s), np.nan) for s in shifts]
        rows.append([html.escape(v), head, "<i>logits</i>", (f"{int(strides.max())}", strides.max()),
                     *[(_err(x), x) if np.isfinite(x) else ("", np.nan) for x in heads]])
    if not rows:
        return ""
    table = html_table(header, rows, numeric=set(range(3, 4 + len(shifts))))
    return (table + '<p class="note">Normalised error ||f(shifted input) &minus; shifted f(input)|| / ||shifted '
            "f(input)|| of each stage's feature map, for an input shift of s pixels (along both axes); the map "
            "is shifted by s / stride, or by the better of the two nearest whole map pixels when the stride does "
            "not divide s. Each cell: <b>interior</b> (black enters; only the map positions whose receptive "
            "field lies on image pixels in both inputs, no padding; n/a where a stage has none, its receptive "
            "field covering the whole image) &middot; <b>whole map</b> (circular shift; the border effects of "
            "zero padding included). <i>logits</i>: relative change of the logits under a circular shift by s "
            "(head invariance). Mean over runs; computed on the first validation images of each run. A blank "
            "cell: that shift was not probed for this network, which is probed at 1 pixel and at each of its "
            "own stages' strides (a network without stride or pooling, at 1 only).</p>")


def _head_kind(ctx, variant: str) -> str:
    spec = getattr(ctx, "specs", {}).get(variant)
    head = (getattr(spec, "model", None) or {}).get("head")
    return {"gap": "global avg pool", "flatten": "flatten"}.get(head, str(head) if head else "?")


NOTE = ('<p class="note"><b>Reading it.</b> A convolution commutes with shifts: shift the input and the feature '
        "map shifts with it, so wherever padding plays no part (the interior) the error is 0 at every shift that "
        "is a multiple of the stage's stride. Stride and pooling keep one position in r, so a shift by less than "
        "r (1 pixel) cannot be matched by any shift of the map: that error is large, and it is what makes "
        "CNNs only approximately shift-equivariant. Invariance comes from the head: global average pooling "
        "sums over positions, so its logits barely move (exactly not at all for circular padding and shifts "
        "by multiples of the total stride), while a flatten head gives every position its own weights and its "
        "logits, and the accuracy curve, move with the shift.</p>")
