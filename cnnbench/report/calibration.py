"""The study's empirical null: the A/A control (the baseline retrained with another seed offset).

Its difference from the baseline is retraining noise by construction: initial weights, batch order and
dropout, on the same training sets. The two trainings share each fold's training set, so their fold
differences carry no training-set effect and are independent across folds: the plain paired t-test is
the right test for them (the corrected one would flag them ~0.2% of the time, not 5%). A significant
A/A difference therefore says that two trainings of the same network are not exchangeable - seeds
reused, pairing broken, nondeterminism - not that the folds are more correlated than the correction
assumes, which the A/A control cannot see (README, statistics).
"""

from __future__ import annotations

import html

import numpy as np

from cnnbench.config import AA_CONTROL
from cnnbench.report.figures import BASELINE_COLOR, figure_html, plt
from cnnbench.report.format import interval, pts, pvalue
from cnnbench.report.section import Section
from cnnbench.stats import resample_differences


def aa_is_significant(ctx) -> bool:
    return ctx.aa is not None and np.isfinite(ctx.aa.test.p) and ctx.aa.test.p < 0.05


def aa_finding(ctx) -> str:
    """The first lines of the findings: the measured noise floor, or a loud warning."""
    if ctx.aa is None:
        return ('<p class="note">This study has no A/A control, so its noise floor is not measured: add '
                "<code>aa_control: true</code> to the config.</p>")
    t = ctx.aa.test
    text = (f"<b>Noise floor (A/A control)</b>: {html.escape(ctx.baseline)} retrained with another seed offset "
            f"differs from itself by <b>{pts(t.mean)} pts</b> {interval(t.ci_low, t.ci_high)}, p = "
            f"{pvalue(t.p)} (paired t-test): what retraining alone does here.")
    if aa_is_significant(ctx):
        return (f'<div class="alarm"><p>{text}</p><p><b>The A/A control is significant at 5%.</b> That happens by '
                "chance in 1 study in 20 even when all is well, so on its own it is a warning, not a proof. "
                "Otherwise two trainings of the same network differ more than retraining noise allows: the runs "
                "are not exchangeable (seeds reused across runs, broken pairing, nondeterministic kernels, runs "
                "that did not train), and the verdicts below may be false positives. Check <code>cnnbench "
                "verify</code> on a few runs and rerun with another split seed: if the A/A control is "
                "significant again, do not trust a verdict of this setup.</p></div>")
    return f"<p>{text}</p>"


def widths_against_noise_floor(ctx) -> str:
    """How the comparisons' interval widths stand against the A/A interval's, counted rather than assumed:
    a comparison's corrected interval also carries the training sets' effect on the variant, so it is
    usually the wider, but with few resamples either can be (a trial: A/A 30.8 pts wide, a comparison 7.5)."""
    aa_width = ctx.aa.test.ci_high - ctx.aa.test.ci_low
    c = ctx.comparison  # (a study of the baseline and its A/A control alone has none: an empty, untyped frame)
    widths = np.asarray(c["ci_high"], dtype=float) - np.asarray(c["ci_low"], dtype=float)
    widths = widths[np.isfinite(widths)]
    if not np.isfinite(aa_width) or widths.size == 0:
        return ""
    wider = int((widths > aa_width).sum())
    return (f" The comparisons' own intervals are {pts(float(np.median(widths)), False)} pts wide (median of "
            f"{len(widths)}; this one {pts(aa_width, False)}), {wider} of {len(widths)} wider than this one: they "
            "use the corrected t-test, which also allows for the training sets' effect on the variant, absent "
            "between two trainings of the same network.")


def aa_control(ctx):
    if ctx.aa is None:
        return None
    aa, t = ctx.aa, ctx.aa.test
    d = resample_differences(ctx.runs, ctx.baseline, AA_CONTROL, "val_acc")["diff"] * 100
    fig, ax = plt.subplots(figsize=(7, 2.4))
    ax.axvline(0, color=BASELINE_COLOR, lw=1)
    ax.axvspan(100 * t.ci_low, 100 * t.ci_high, color="0.88", label="95% CI of the mean (paired t-test)")
    ax.scatter(d, np.zeros(len(d)) + np.random.default_rng(0).uniform(-0.2, 0.2, len(d)), color="0.3", s=18,
               label="one resample (fold)")
    ax.set(yticks=[], ylim=(-1, 1), xlabel=f"{AA_CONTROL} - {ctx.baseline}, validation accuracy (pts)")
    ax.legend(fontsize=8, loc="upper right")
    seed = (f" Seeds within a fold differ by {pts(aa.seed_sd, False)} pts (sd), shown apart from the fold-to-fold "
            "spread." if np.isfinite(aa.seed_sd) else "")
    sd = float(np.std(d, ddof=1)) if len(d) > 1 else float("nan")
    text = (f"<p>The baseline trained twice on the same {aa.resamples} resamples with independent initial "
            f"weights, batch order and dropout (seed offset 1): mean difference {pts(t.mean)} pts, 95% CI "
            f"{interval(t.ci_low, t.ci_high)}, paired t = {t.t:.2f} on {t.df} df, p = {pvalue(t.p)}. "
            f"One retraining moves a fold's accuracy difference by {sd:.2f} pts (sd over folds): an effect "
            f"of that size on a single fold is noise.{widths_against_noise_floor(ctx)}{seed}</p>")
    caption = ("Per-resample differences between two trainings of the same network. They scatter around 0; "
               "their spread is the noise every comparison in this report is measured against.")
    return Section("aa-control", "Noise floor: the A/A control", text + figure_html(fig, "A/A control", caption))
