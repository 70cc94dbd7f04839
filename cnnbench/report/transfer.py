"""Transfer learning: accuracy against the number of labelled target images per class, for training from
scratch, from frozen pretrained layers and fine-tuned; each recipe's comparison with scratch on the same
images is among the report's tested comparisons (Effects). Shown when a study uses `pretrained:` or
`labels_per_class:`."""

from __future__ import annotations

import html

import numpy as np

from cnnbench.report.figures import figure_html, plt, sns
from cnnbench.report.format import pts
from cnnbench.report.section import Section
from cnnbench.report.tables import html_table


def recipe(spec) -> str:
    t = spec.train
    if not t.get("pretrained"):
        return "from scratch"
    return "pretrained, frozen" if t.get("freeze") else f"pretrained, fine-tuned (lr x {t.get('finetune_lr_factor', 1.0):g})"


def transfer(ctx) -> Section | None:
    from cnnbench.stats import usable

    specs = {v: s for v, s in ctx.specs.items() if v in ctx.featured}
    if not any(s.train.get("pretrained") or s.train.get("labels_per_class") for s in specs.values()):
        return None
    runs = usable(ctx.runs)
    runs = runs[runs.variant.isin(specs)].assign(
        recipe=lambda d: d.variant.map(lambda v: recipe(specs[v])),
        labels=lambda d: d.variant.map(lambda v: specs[v].train.get("labels_per_class") or np.nan))
    parts = []
    if runs["labels"].notna().any():
        fig, ax = plt.subplots(figsize=(6.5, 3.6))
        sns.lineplot(runs.assign(acc=100 * runs["val_acc"]), x="labels", y="acc", hue="recipe", marker="o",
                     errorbar=("ci", 95), ax=ax)
        ax.set_xscale("log")
        ax.set_xlabel("labelled training images per class (log scale)")
        ax.set_ylabel("validation accuracy (%)")
        parts.append(figure_html(fig, "accuracy against labels per class, per recipe",
                                 "Mean over runs with a 95% bootstrap band across runs (a description; the tests "
                                 "are the paired comparisons under Effects)."))
    sources = runs.dropna(subset=["pretrained"]) if "pretrained" in runs else runs.iloc[:0]
    if len(sources):
        rows = [[html.escape(name), html.escape(str(ctx.specs[g.variant.iloc[0]].pretrain["spec"]["data"])),
                 pts(g["pretrained_source_val_acc"].iloc[0], False), f"<code>{g['pretrained_sha256'].iloc[0]}</code>",
                 html.escape(", ".join(sorted(set(g.variant))))] for name, g in sources.groupby("pretrained")]
        parts.append(html_table(["pretrained network", "source data", "accuracy on its own held-out 10%",
                                 "weights sha256", "used by"], rows))
    note = ('<p class="note">Pretrained networks are trained once on their source data (the pretrain job), not once '
            "per fold; every run that starts from one records the weights' hash. Frozen: every layer but the new "
            "head keeps its pretrained weights and statistics. Fine-tuned: everything trains, the pretrained layers "
            "at a fraction of the learning rate. Each variant with the same number of labels per class trains on "
            "the same images of each fold, so the comparisons are paired.</p>")
    return Section("transfer", "Transfer learning", "".join(parts) + note)
