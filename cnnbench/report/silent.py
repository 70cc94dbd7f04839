"""Kernels that do not fire, the strict way and the per-image way (the course's 16 vs 64 kernels).

The strict count (a channel is dead if it outputs zero for every validation image at every position)
finds almost nothing in a trained first layer. The course looked instead at one digit's activation maps
and saw, with 64 kernels, maps that were entirely zero: kernels that caught no pattern *in that image*.
Both views are measured on every run (cnnbench.measure.dead_filters) and shown here side by side."""

from __future__ import annotations

import html

import numpy as np

from cnnbench.report.figures import figure_html, plt, sns
from cnnbench.report.format import pts
from cnnbench.report.section import Section
from cnnbench.report.tables import html_table

COLUMNS = ("first_layer_dead", "first_layer_zero_maps_probe", "first_layer_silent_half")


def silent_kernels(ctx) -> Section | None:
    from cnnbench.stats import compare_pair, usable

    runs = usable(ctx.runs)
    if any(c not in runs for c in COLUMNS):
        return None
    # a variant without a ReLU (tanh, sigmoid, GELU nets) has no kernel that can be silent: left out
    measured = set(runs.loc[runs["first_layer_total"].notna(), "variant"])
    shown = [v for v in ctx.featured if v in measured]
    if not shown:
        return None
    rows = []
    for v in shown:
        r = runs[runs.variant == v]
        total = int(r["first_layer_total"].iloc[0])
        ref = ctx.references.get(v)
        diff = ""
        if ref in measured:
            c = compare_pair(runs, ref, v, "first_layer_zero_maps_probe")
            if c is not None and np.isfinite(c.test.ci_low):
                diff = (f"{c.test.mean:+.1f} [{c.test.ci_low:+.1f}, {c.test.ci_high:+.1f}] vs "
                        f"{html.escape(ref)}")
        rows.append([html.escape(v), str(total), f"{r['first_layer_dead'].mean():.1f}",
                     f"{r['first_layer_zero_maps_probe'].mean():.1f} ({pts(r['first_layer_zero_maps_probe'].mean() / total, False)}%)",
                     f"{r['first_layer_silent_half'].mean():.1f}", diff])
    table = html_table(["variant", "first-layer kernels", "dead (never fire)", "blank maps on the probe image",
                        "silent on ≥ half the images", "blank maps: paired Δ [95% CI]"], rows, numeric={1, 2, 3, 4})
    figure = _silence_figure(ctx, shown)
    note = ('<p class="note">First ReLU layer of every run, final model, validation images. <b>Dead</b>: the '
            "kernel's map is zero for every image at every position. <b>Blank maps on the probe image</b>: maps "
            "entirely zero for the fold's first validation image (what looking at one digit's activation maps "
            "shows). <b>Silent on ≥ half</b>: kernels whose map is entirely zero on at least half the images. "
            "Means over runs; the paired Δ is over the same folds and seeds (corrected t interval, not in the "
            "Holm family: a description of the size, not a verdict).</p>")
    return Section("silent-kernels", "Kernels that do not fire", table + figure + note)


def _silence_figure(ctx, variants: list[str]) -> str:
    """Per variant, each first-layer kernel's share of images with a blank map (sorted), over all runs."""
    records = ctx.results_dir / "runs"
    import json

    fig, ax = plt.subplots(figsize=(6.5, 3))
    palette = sns.color_palette("deep", len(variants))
    drawn = False
    for colour, v in zip(palette, variants):
        fractions = []
        for path in sorted((records / v).glob("*.json")):
            layers = json.loads(path.read_text()).get("diagnostics", {}).get("dead_filters", {})
            first = next(iter(layers.values()), {})
            if "silent_fraction" in first:
                fractions.append(sorted(first["silent_fraction"], reverse=True))
        if fractions:
            mean = np.mean(fractions, axis=0)
            ax.plot(np.arange(1, len(mean) + 1) / len(mean), 100 * mean, color=colour, label=f"{v} ({len(mean)})")
            drawn = True
    if not drawn:
        plt.close(fig)
        return ""
    ax.set_xlabel("first-layer kernels, most often silent first (share of the layer)")
    ax.set_ylabel("% of images with a blank map")
    ax.legend(fontsize=8)
    return figure_html(fig, "share of images on which each first-layer kernel is silent",
                       "Each kernel's share of validation images whose whole map is zero, sorted, mean over runs.")
