"""The ranking: mean ranks and pairwise differences, as description only.

Friedman/Nemenyi over cross-validation folds treats folds as independent data sets; under the null with
correlated folds it rejected about half the time at a nominal 5% (47%, tests/test_stats.py). No test is
made here: the only significance claims about design choices are the verdicts (one Holm family).
"""

from __future__ import annotations

import html

from cnnbench.report.figures import figure_html, plt, sns
from cnnbench.report.section import Section
from cnnbench.report.tables import html_table
from cnnbench.stats import mean_ranks, pairwise_differences


def ranking(ctx):
    variants = [ctx.baseline, *ctx.design_variants]
    ranks = mean_ranks(ctx.runs[ctx.runs.variant.isin(variants)], "val_acc")
    if ranks is None:
        return None
    rows = [[html.escape(v), (f"{rank:.2f}", rank)] for v, rank in ranks.items()]
    table = html_table(["variant", "mean rank over resamples (1 = best)"], rows, numeric={1})
    from cnnbench.report.context import MAX_FEATURED

    order = list(ranks.index)[:MAX_FEATURED]  # the heat map of a large study: its best-ranked variants
    diffs = pairwise_differences(ctx.runs, order, "val_acc") * 100
    fig, ax = plt.subplots(figsize=(0.55 * len(order) + 2.5, 0.45 * len(order) + 1.5))
    lim = float(diffs.abs().max().max()) or 1.0
    sns.heatmap(diffs, annot=len(order) <= 12, fmt=".1f", cmap="RdBu", vmin=-lim, vmax=lim, ax=ax,
                annot_kws={"fontsize": 7}, cbar_kws={"label": "column - row (pts)"})
    ax.set(xlabel="", ylabel="")
    text = ('<p>Mean rank of each variant over the resamples (seeds averaged), and the mean paired difference of '
            "every pair. <b>Description only, not a test</b>: ranks over correlated folds cannot be tested the "
            "way Friedman/Nemenyi test ranks over independent data sets (at a nominal 5% that test rejects a true "
            "null about half the time here). The significance claims are the verdicts above; to test a pair, "
            "give one variant <code>compare_to: &lt;the other&gt;</code>.</p>")
    heat = figure_html(fig, "pairwise differences", "Mean paired difference in validation accuracy, column "
                       "minus row (percentage points), ordered by mean rank"
                       + (f" (the {len(order)} best-ranked of {len(ranks)})." if len(order) < len(ranks) else "."))
    return Section("ranking", "Ranking (descriptive)", text + '<div class="grid">' + table + heat + "</div>")
