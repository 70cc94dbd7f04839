"""Accuracy seen from several sides: per run, as paired effects, over epochs and as error distributions."""

from __future__ import annotations

import numpy as np

from cnnbench.metrics import METRICS
from cnnbench.report.figures import BASELINE_COLOR, VARIANT_COLOR, VERDICT_COLORS, figure_html, plt, sns
from cnnbench.report.section import Section

ACC = METRICS["val_acc"]  # what every accuracy figure here shows, scaled to percent


def accuracy_plot(ctx) -> Section:
    from cnnbench.stats import usable

    runs = usable(ctx.runs).assign(acc=lambda d: ACC.scale * d[ACC.column])
    order = ctx.featured
    runs = runs[runs.variant.isin(order)]
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(order) + 1.2))
    palette = {v: BASELINE_COLOR if v == ctx.baseline else VARIANT_COLOR for v in order}
    sns.stripplot(data=runs, y="variant", x="acc", order=order, hue="variant", palette=palette, legend=False,
                  size=5, alpha=0.6, jitter=0.15, ax=ax)
    sns.pointplot(data=runs, y="variant", x="acc", order=order, errorbar="sd", color="black", linestyle="none",
                  markers="d", markersize=5, err_kws={"linewidth": 1.2}, ax=ax)
    ax.axvline(runs.loc[runs.variant == ctx.baseline, "acc"].mean(), color=BASELINE_COLOR, ls="--", lw=1)
    ax.set(xlabel=ACC.label, ylabel="")
    return Section("accuracy", "Accuracy per variant", figure_html(
        fig, "validation accuracy per variant", "Each dot is one run (fold, seed); diamond and bar: mean &plusmn; "
        "sd over runs; dashed line: the baseline's mean." + ctx.featured_note("Shown")))


def effects(ctx) -> Section | None:
    cmp = ctx.comparison
    if cmp.empty:
        return None
    order = cmp.sort_values("diff").index.tolist()
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(order) + 1.3))
    if ctx.aa is not None and np.isfinite(ctx.aa.test.ci_low):
        ax.axvspan(100 * ctx.aa.test.ci_low, 100 * ctx.aa.test.ci_high, color="0.9", zorder=0,
                   label="A/A control's 95% CI (retraining noise)")
    ax.axvline(0, color=BASELINE_COLOR, lw=1)
    for i, v in enumerate(order):
        c = cmp.loc[v]
        color = VERDICT_COLORS[c["verdict"]]
        ax.errorbar(100 * c["diff"], i, xerr=[[100 * (c["diff"] - c["ci_low"])], [100 * (c["ci_high"] - c["diff"])]],
                    fmt="o", color=color, capsize=3)
    ax.set_yticks(range(len(order)), order)
    ax.set(xlabel="Δ validation accuracy vs the reference (percentage points)")
    lo, hi = ax.get_xlim()
    cut = ""
    if lo < -105 or hi > 105:  # a 2-resample interval reached -401 pts and squashed every other bar
        ax.set_xlim(max(lo, -105), min(hi, 105))
        cut = " Bars past &plusmn;100 pts, where no accuracy difference can be, are cut at the frame."
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    shaded = ("" if ctx.aa is None or not np.isfinite(ctx.aa.test.ci_low) else
              " Shaded: the A/A control's 95% CI (its own plain paired t-test, the right one for two trainings "
              "on the same training sets): how far retraining alone moves the baseline here. It need not sit "
              "on 0, and it is not an interval of the same test as the bars.")
    forest = figure_html(fig, "forest plot of accuracy differences",
                         "Mean paired difference and 95% CI (corrected resampled t-test) against each variant's "
                         "reference. Green: better, red: worse, grey: no detectable difference after Holm "
                         "adjustment." + cut + shaded)
    return Section("effects", "Effects on accuracy", forest + paired_lines(ctx))


def paired_lines(ctx) -> str:
    others = [v for v in ctx.featured if v != ctx.baseline]
    if not others:
        return ""
    from cnnbench.stats import usable

    cols = min(5, len(others))
    rows = int(np.ceil(len(others) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.4 * rows), sharey=True, squeeze=False)
    runs = usable(ctx.runs)
    for ax, v in zip(axes.flat, others):
        ref = ctx.reference(v)
        wide = runs[runs.variant.isin([ref, v])].pivot_table(index=["fold", "seed"], columns="variant",
                                                             values=ACC.column).dropna() * ACC.scale
        if not {ref, v} <= set(wide.columns):  # every run of one side diverged: nothing is paired
            ax.text(0.5, 0.5, "no paired runs\n(runs did not train)", ha="center", va="center", transform=ax.transAxes,
                    fontsize=8)
            wide = wide.iloc[:0]
        for _, r in wide.iterrows():
            up = r[v] > r[ref]
            ax.plot([0, 1], [r[ref], r[v]], color=VERDICT_COLORS["better" if up else "worse"], alpha=0.6,
                    marker="o", ms=3)
        ax.set_xticks([0, 1], [ref, v], fontsize=7)
        ax.set_xlim(-0.3, 1.3)
        ax.set_title(v, fontsize=9)
    axes[0, 0].set_ylabel(ACC.label)
    for ax in list(axes.flat)[len(others):]:
        ax.set_visible(False)
    fig.tight_layout()
    return figure_html(fig, "paired runs per variant",
                       "Each line joins the reference and the variant on the same fold and seed (green: the "
                       "variant is better on that pair)." + ctx.featured_note("Panels"))


def learning_curves(ctx) -> Section:
    ep = ctx.epochs.assign(val_acc=lambda d: ACC.scale * d["val_acc"])
    base = ep[ep.variant == ctx.baseline]
    others = [v for v in ctx.featured if v != ctx.baseline] or [ctx.baseline]
    cols = min(4, len(others))
    rows = int(np.ceil(len(others) / cols))
    figs = []
    for metric, label in (("val_acc", ACC.label), ("train_loss", METRICS["train_loss"].label)):
        fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 2.4 * rows), sharex=True, sharey=True,
                                 squeeze=False)
        for ax, v in zip(axes.flat, others):
            sns.lineplot(data=base, x="epoch", y=metric, errorbar=("pi", 100), color=BASELINE_COLOR, ax=ax,
                         label=ctx.baseline)
            if v != ctx.baseline:
                sns.lineplot(data=ep[ep.variant == v], x="epoch", y=metric, errorbar=("pi", 100),
                             color=VARIANT_COLOR, ax=ax, label=v)
            ax.set_title(v, fontsize=9)
            ax.set(ylabel=label, xlabel="epoch")
            ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
            ax.legend(fontsize=7, loc="lower right" if metric == "val_acc" else "upper right")
            if metric == "val_acc":
                ax.set_ylim(max(ep[metric].quantile(0.02) - 1, 0), 100)
            else:
                ax.set_yscale("log")
        for ax in list(axes.flat)[len(others):]:
            ax.set_visible(False)
        fig.tight_layout()
        figs.append(figure_html(fig, f"learning curves: {label}"))
    note = ('<p class="note">Lines: mean over runs; bands: the range over runs (min to max). Each panel shows '
            "one variant against the baseline (grey)." + ctx.featured_note("Panels") + "</p>")
    return Section("curves", "Learning curves", "".join(figs) + note)


def error_edfs(ctx) -> Section:
    from cnnbench.stats import usable

    shown = ctx.featured
    runs = usable(ctx.runs).assign(error=lambda d: 100 * (1 - d["val_acc"]))
    runs = runs[runs.variant.isin(shown)]
    fig, ax = plt.subplots(figsize=(7.5, 4))
    palette = dict(zip(shown, sns.color_palette("tab10" if len(shown) <= 10 else "tab20", len(shown))))
    palette[ctx.baseline] = "black"
    sns.ecdfplot(data=runs, x="error", hue="variant", hue_order=shown, palette=palette, ax=ax)
    ax.set(xlabel="validation error (%)", ylabel="fraction of runs with error ≤ x")
    return Section("edf", "Error distributions", figure_html(
        fig, "empirical distribution functions of the error",
        "Empirical distribution of the validation error over runs (RegNet's design-space view): a curve to the "
        "left and rising steeply is a variant that is good and reliably so." + ctx.featured_note("Shown")))
