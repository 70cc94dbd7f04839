"""The report's first screen: the findings (every verdict, with what it costs) and the summary table."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from cnnbench.config import AA_CONTROL
from cnnbench.metrics import METRICS
from cnnbench.report.format import device_note, interval, metric_cell, pts, pvalue, verdict_html
from cnnbench.report.section import Section
from cnnbench.report.tables import html_table


def design_line(ctx) -> str:
    """How many runs each comparison pairs, and how they become resamples."""
    split = ctx.specs[ctx.baseline].split
    seeds = ctx.runs.loc[ctx.runs.variant == ctx.baseline, "seed"].nunique()
    j = split["repeats"] * split["folds"]
    seeds_text = (f" &times; {seeds} seeds, averaged within each fold first, so J = {j} resamples"
                  if seeds > 1 else f", J = {j} resamples")
    return f"{j * seeds} paired runs ({split['repeats']} &times; {split['folds']}-fold cross-validation{seeds_text})"


SYNTHETIC_NOTICE = ("Synthetic data (random images, random labels): accuracies and every accuracy comparison "
                    "mean nothing; this study measures speed, memory and cost only.")


def synthetic_note(ctx) -> str:
    """On synthetic data (cnnbench.data._synthetic), the alarm that its accuracies mean nothing."""
    if ctx.data_name != "synthetic":
        return ""
    return f'<div class="alarm"><p><b>{SYNTHETIC_NOTICE}</b></p></div>'


FEW_RESAMPLES = 5  # as cnnbench plan: below this the corrected t test's variance has too few degrees of freedom


def small_design_note(ctx) -> str:
    """With fewer than FEW_RESAMPLES paired resamples the tests can only detect very large differences: the
    report says so up front rather than leave it to the per-verdict notes (a trial: 2 folds, J = 2, "could
    detect |Δ| ≥ 55.67 pts" and nothing more)."""
    split = ctx.specs[ctx.baseline].split
    j = split["repeats"] * split["folds"]  # as designed; fewer where runs did not train
    compared = getattr(ctx, "comparison", None)
    if compared is not None and "resamples" in compared and len(compared):  # a diverged run's fold drops out
        j = min(j, int(compared["resamples"].min()))
    if j >= FEW_RESAMPLES:
        return ""
    designed = split["repeats"] * split["folds"]
    where = f"of {split['repeats']} &times; {split['folds']}-fold"
    if j < designed:  # runs that did not train took their pairs with them
        where = (f"in the comparison with the fewest, of the {designed} the {split['repeats']} &times; "
                 f"{split['folds']}-fold design gives: runs that did not train take their pairs with them")
    fix = (f"Use at least {FEW_RESAMPLES} folds &times; repeats" if designed < FEW_RESAMPLES
           else "Find out why those runs did not train (below), and rerun")
    return (f'<div class="alarm"><p><b>Only J = {j} paired resamples</b> ({where}): the corrected t test has '
            f'{j - 1} degree{"s" * (j != 2)} of freedom, so the intervals are very wide and only very large '
            f"differences can be detected; read it as a pilot. {fix}, and see <code>cnnbench plan</code> for "
            "the runs a given difference needs.</p></div>")


def findings(ctx) -> Section:
    """The first screen: the measured noise floor, then every variant's effect, how sure we are, what it
    could have detected and what it costs."""
    from cnnbench.report.calibration import aa_finding

    cmp, s = ctx.comparison, ctx.per_variant("val_acc", "val_acc_sd", "macs", "epoch_time_s")
    items = []
    for v, row in cmp.sort_values("diff", ascending=False).iterrows():
        ref = row["reference"]
        changed = html.escape("; ".join(ctx.changes(v)) or "same knobs")
        vs = "" if ref == ctx.baseline else f" vs <b>{html.escape(ref)}</b>"
        cost = f"{s.loc[v, 'macs'] / s.loc[ref, 'macs']:.2g}&times; MACs"
        if np.isfinite(s.loc[ref, "epoch_time_s"]):
            cost += f", {s.loc[v, 'epoch_time_s'] / s.loc[ref, 'epoch_time_s']:.2g}&times; time per epoch"
        items.append(f"<li><b>{html.escape(v)}</b>{vs} ({changed}): &Delta; accuracy <b>{pts(row['diff'])} pts</b> "
                     f"{interval(row['ci_low'], row['ci_high'])}, p<sub>Holm</sub> = {pvalue(row['p_holm'])} "
                     f"&rarr; {verdict_html(row)}; {cost}{diverged_here(ctx, v, ref)}</li>")
    base = s.loc[ctx.baseline]
    lead = (f"<p>Every variant against <b>{html.escape(ctx.baseline)}</b> (validation accuracy "
            f"{METRICS['val_acc'].text(base.val_acc)}% &plusmn; {METRICS['val_acc_sd'].text(base.val_acc_sd)}) unless another reference is "
            f"named, paired on the same {design_line(ctx)}. Differences in percentage points with 95% "
            "confidence intervals from the Nadeau-Bengio corrected resampled t-test. The intervals are per "
            f"comparison; the verdicts use p-values Holm-adjusted over all {len(cmp)} comparisons (the only "
            "significance claims about the design choices; the A/A control's test checks the method itself, "
            "and the per-run McNemar tests ask about two trained networks, not a choice), so an interval "
            "that just excludes 0 can still be 'no detectable difference'. Where there is none, the note says "
            "the smallest difference this study could have detected with 80% power at Holm's strictest level "
            "(run <code>cnnbench plan</code> for the runs a smaller one needs).</p>")
    return Section("findings", "Findings", synthetic_note(ctx) + small_design_note(ctx) + aa_finding(ctx)
                   + diverged_note(ctx) + lead
                   + (f"<ul>{''.join(items)}</ul>" if items else ""))


def diverged_here(ctx, variant: str, reference: str) -> str:
    """Next to a verdict: how many runs of the pair did not train and were left out of it."""
    if "status" not in ctx.runs:
        return ""
    runs = ctx.runs[ctx.runs.variant.isin([variant, reference])]
    bad = runs[runs["status"] == "diverged"]
    if bad.empty:
        return ""
    per = ", ".join(f"{len(g)} of {len(runs[runs.variant == v])} runs of {html.escape(v)}"
                    for v, g in bad.groupby("variant"))
    return f' <span class="worse">({per} did not train and are left out of this comparison)</span>'


def failure_kind(reason) -> str:
    """A stopped run's record says why (cnnbench.train.DivergenceWatch); older records do not."""
    if not isinstance(reason, str):
        return "diverged or stuck"
    return "diverged (non-finite loss)" if reason.startswith("non-finite") else "stuck at chance"


def _epoch(e) -> str:
    return str(int(e)) if pd.notna(e) else "?"  # a record marked diverged without its epoch


def diverged_note(ctx) -> str:
    """Runs that did not train, named with how and when they were stopped: they are left out of every
    statistic, never averaged in silently."""
    runs = ctx.runs
    bad = runs[runs["status"] == "diverged"] if "status" in runs else runs.iloc[:0]
    if bad.empty:
        return ""
    reasons = bad["diverged_reason"] if "diverged_reason" in bad else pd.Series(None, index=bad.index, dtype=object)
    kinds = reasons.map(failure_kind)
    per = []
    for v, g in bad.groupby("variant"):
        epochs = ctx.specs[v].train["epochs"] if v in getattr(ctx, "specs", {}) else None
        how = "; ".join(f"{kind} at epoch{'s' * (len(runs_) > 1)} {', '.join(_epoch(e) for e in runs_['diverged_epoch'])}"
                        + (f" of {epochs}" if epochs else "") for kind, runs_ in g.groupby(kinds[g.index]))
        per.append(f"{html.escape(v)}: {len(g)} of {len(runs[runs.variant == v])} runs ({how})")
    return (f'<div class="alarm"><p><b>{len(bad)} run(s) did not train</b>: {"; ".join(per)}. A run is marked and '
            "stopped when its loss becomes non-finite (diverged), or when after the first epoch (one-cycle: "
            "after its warm-up, the first 20% of epochs) its training accuracy stays at chance with a loss that no longer falls for two epochs (stuck; also "
            "checked at the last epoch). They are left out of every comparison, ranking, mean and plot of "
            "accuracy below, and so are their pairs on the other variants: a variant that fails often looks "
            "only as good as its runs that trained.</p></div>")


SUMMARY_COSTS = ("params", "macs", "epoch_time_s", "train_img_per_s", "latency_b1_ms")  # cnnbench.metrics


def summary_table(ctx) -> Section:
    s, cmp = ctx.per_variant("val_acc", "val_acc_sd", *SUMMARY_COSTS), ctx.comparison
    acc, sd = METRICS["val_acc"], METRICS["val_acc_sd"]
    rows = []
    for v in ctx.variants:
        r = s.loc[v]
        desc = html.escape(ctx.variant_descriptions.get(v, ""), quote=True)
        changed = "baseline" if v == ctx.baseline else html.escape("; ".join(ctx.changes(v)) or "(same knobs)")
        if v in cmp.index:
            c = cmp.loc[v]
            delta = (f"{pts(c['diff'])} {interval(c['ci_low'], c['ci_high'])}", c["diff"])
            ref = (html.escape(c["reference"]), 0.0)
            p, verdict = (pvalue(c["p_holm"]), c["p_holm"]), verdict_html(c)
        elif v == AA_CONTROL and ctx.aa is not None:  # the noise floor: its own test, not one of the verdicts
            t = ctx.aa.test
            delta = (f"{pts(t.mean)} {interval(t.ci_low, t.ci_high)} (plain t)", t.mean)  # not the corrected CI
            ref = (html.escape(ctx.baseline), 0.0)
            p, verdict = (f"{pvalue(t.p)} (plain t)", t.p), '<span class="nodiff">noise floor, no verdict</span>'
        else:
            delta, ref, p, verdict = ("", 0.0), ("", 0.0), ("", 1.0), ""
        rows.append([f'<span title="{desc}">{html.escape(v)}</span>', changed,
                     *(metric_cell(METRICS[m], r[m]) for m in SUMMARY_COSTS),
                     (f"{acc.text(r.val_acc)} &plusmn; {sd.text(r.val_acc_sd)}", r.val_acc), ref, delta, p,
                     verdict])
    header = ["variant", "what changed", *(METRICS[m].label for m in SUMMARY_COSTS),
              "val acc % (mean ± sd)", "compared with", "Δ acc, pts [95% CI]", "p (Holm)", "verdict"]
    table = html_table(header, rows, numeric={2, 3, 4, 5, 6, 7, 9, 10}, sortable=True,
                       row_class=lambda i: "baseline" if i == 0 else "")
    note = (f'<p class="note">Click a column to sort. Accuracy: final-epoch validation accuracy, mean &plusmn; '
            "sample sd over runs. MACs: multiply-accumulates per image, one forward pass. s/epoch, img/s "
            "(training step, warm-up excluded) and latency (eval mode, batch 1): measured alone, with no other "
            f"job of the workflow running (medians over repeated blocks; spread in 'Cost, speed, memory'). "
            f"{aa_row_note(ctx)}{device_note(ctx)}</p>")
    return Section("summary", "Summary", table + note)


def aa_row_note(ctx) -> str:
    if ctx.aa is None:
        return ""
    return (f"The {AA_CONTROL} row is the noise floor: its plain paired t-test against {html.escape(ctx.baseline)} "
            "(see 'Noise floor'), outside the Holm family and with no verdict. ")
