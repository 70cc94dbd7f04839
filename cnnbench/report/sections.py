"""Report sections. Each is a function `(ReportContext) -> Section | None`; the report shows them in
the order of `report_sections()`, so adding a section is writing one function and listing it there.
Sections of their own topic live in their own modules (calibration, ranking, per_example)."""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cnnbench.report.figures import BASELINE_COLOR, VARIANT_COLOR, VERDICT_COLORS, figure_html, plt, sns
from cnnbench.report.format import device_note, pts, pvalue, si, verdict_html
from cnnbench.report.tables import html_table
from cnnbench.results import job_overhead


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    html: str


def variant_summary(ctx) -> pd.DataFrame:
    """Per variant: accuracy mean and sd over runs, cost, and speed measured alone (cnnbench.timing)."""
    from cnnbench.stats import usable

    g = usable(ctx.runs).groupby("variant")
    cost = ctx.runs.groupby("variant")
    out = pd.DataFrame({"n": g.size(), "acc_mean": g["val_acc"].mean(), "acc_sd": g["val_acc"].std(ddof=1),
                        "params": cost["params"].first(), "macs": cost["macs_forward"].first()})
    timing = ctx.timing.reindex(out.index)
    for col in ("epoch_time_s", "train_img_per_s", "latency_b1_ms"):
        out[col] = timing[col] if col in timing else np.nan
    return out.reindex(ctx.variants)


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


# --- sections ----------------------------------------------------------------------------------------

def findings(ctx) -> Section:
    """The first screen: the measured noise floor, then every variant's effect, how sure we are, what it
    could have detected and what it costs."""
    from cnnbench.report.calibration import aa_finding

    cmp, s = ctx.comparison, variant_summary(ctx)
    items = []
    for v, row in cmp.sort_values("diff", ascending=False).iterrows():
        ref = row["reference"]
        changed = html.escape("; ".join(ctx.changes(v)) or "same knobs")
        vs = "" if ref == ctx.baseline else f" vs <b>{html.escape(ref)}</b>"
        cost = f"{s.loc[v, 'macs'] / s.loc[ref, 'macs']:.2g}&times; MACs"
        if np.isfinite(s.loc[ref, "epoch_time_s"]):
            cost += f", {s.loc[v, 'epoch_time_s'] / s.loc[ref, 'epoch_time_s']:.2g}&times; time per epoch"
        items.append(f"<li><b>{html.escape(v)}</b>{vs} ({changed}): &Delta; accuracy <b>{pts(row['diff'])} pts</b> "
                     f"[{pts(row['ci_low'])}, {pts(row['ci_high'])}], p<sub>Holm</sub> = {pvalue(row['p_holm'])} "
                     f"&rarr; {verdict_html(row)}; {cost}{diverged_here(ctx, v, ref)}</li>")
    base = s.loc[ctx.baseline]
    lead = (f"<p>Every variant against <b>{html.escape(ctx.baseline)}</b> (validation accuracy "
            f"{pts(base.acc_mean, False)}% &plusmn; {pts(base.acc_sd, False)}) unless another reference is "
            f"named, paired on the same {design_line(ctx)}. Differences in percentage points with 95% "
            "confidence intervals from the Nadeau-Bengio corrected resampled t-test. The intervals are per "
            f"comparison; the verdicts use p-values Holm-adjusted over all {len(cmp)} comparisons (the only "
            "significance claims about the design choices; the A/A control's test checks the method itself, "
            "and the per-run McNemar tests ask about two trained networks, not a choice), so an interval "
            "that just excludes 0 can still be 'no detectable difference'. Where there is none, the note says "
            "the smallest difference this study could have detected with 80% power at Holm's strictest level "
            "(run <code>cnnbench plan</code> for the runs a smaller one needs).</p>")
    return Section("findings", "Findings", synthetic_note(ctx) + aa_finding(ctx) + diverged_note(ctx) + lead
                   + (f"<ul>{''.join(items)}</ul>" if items else ""))


def diverged_here(ctx, variant: str, reference: str) -> str:
    """Next to a verdict: how many runs of the pair diverged and were left out of it."""
    if "status" not in ctx.runs:
        return ""
    runs = ctx.runs[ctx.runs.variant.isin([variant, reference])]
    bad = runs[runs["status"] == "diverged"]
    if bad.empty:
        return ""
    per = ", ".join(f"{len(g)} of {len(runs[runs.variant == v])} runs of {html.escape(v)}"
                    for v, g in bad.groupby("variant"))
    return f' <span class="worse">({per} diverged and are left out of this comparison)</span>'


def diverged_note(ctx) -> str:
    """Diverged runs, named: they are left out of every statistic, never averaged in silently."""
    runs = ctx.runs
    bad = runs[runs["status"] == "diverged"] if "status" in runs else runs.iloc[:0]
    if bad.empty:
        return ""
    per = "; ".join(f"{html.escape(v)}: {len(g)} of {len(runs[runs.variant == v])} runs (epochs "
                    f"{', '.join(str(int(e)) for e in g['diverged_epoch'])})" for v, g in bad.groupby("variant"))
    return (f'<div class="alarm"><p><b>{len(bad)} run(s) diverged</b> (non-finite loss, or accuracy at chance after '
            f"the warm-up) and were stopped early: {per}. They are left out of every comparison, ranking, mean "
            "and plot of accuracy below, and so are their pairs on the other variants: a variant that fails "
            "often looks only as good as its runs that trained.</p></div>")


def summary_table(ctx) -> Section:
    s, cmp = variant_summary(ctx), ctx.comparison
    rows = []
    for v in ctx.variants:
        r = s.loc[v]
        desc = html.escape(ctx.variant_descriptions.get(v, ""), quote=True)
        changed = "baseline" if v == ctx.baseline else html.escape("; ".join(ctx.changes(v)) or "(same knobs)")
        if v in cmp.index:
            c = cmp.loc[v]
            delta = (f"{pts(c['diff'])} [{pts(c['ci_low'])}, {pts(c['ci_high'])}]", c["diff"])
            ref = (html.escape(c["reference"]), 0.0)
            p, verdict = (pvalue(c["p_holm"]), c["p_holm"]), verdict_html(c)
        else:
            delta, ref, p, verdict = ("", 0.0), ("", 0.0), ("", 1.0), ""
        rows.append([f'<span title="{desc}">{html.escape(v)}</span>', changed, (f"{int(r.params):,}", r.params),
                     (si(r.macs), r.macs), (f"{r.epoch_time_s:.2f}", r.epoch_time_s),
                     (f"{r.train_img_per_s:,.0f}", r.train_img_per_s), (f"{r.latency_b1_ms:.2f}", r.latency_b1_ms),
                     (f"{pts(r.acc_mean, False)} &plusmn; {pts(r.acc_sd, False)}", r.acc_mean), ref, delta, p,
                     verdict])
    header = ["variant", "what changed", "params", "MACs/img", "s/epoch", "img/s", "latency b=1 (ms)",
              "val acc % (mean ± sd)", "compared with", "Δ acc, pts [95% CI]", "p (Holm)", "verdict"]
    table = html_table(header, rows, numeric={2, 3, 4, 5, 6, 7, 9, 10}, sortable=True,
                       row_class=lambda i: "baseline" if i == 0 else "")
    note = (f'<p class="note">Click a column to sort. Accuracy: final-epoch validation accuracy, mean &plusmn; '
            "sample sd over runs. MACs: multiply-accumulates per image, one forward pass. s/epoch, img/s "
            "(training step, warm-up excluded) and latency (eval mode, batch 1): measured alone, with no other "
            f"job of the workflow running (medians over repeated blocks; spread in 'Cost, speed, memory'). "
            f"{device_note(ctx)}</p>")
    return Section("summary", "Summary", table + note)


def accuracy_plot(ctx) -> Section:
    from cnnbench.stats import usable

    runs = usable(ctx.runs).assign(acc=lambda d: 100 * d["val_acc"])
    order = ctx.featured
    runs = runs[runs.variant.isin(order)]
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(order) + 1.2))
    palette = {v: BASELINE_COLOR if v == ctx.baseline else VARIANT_COLOR for v in order}
    sns.stripplot(data=runs, y="variant", x="acc", order=order, hue="variant", palette=palette, legend=False,
                  size=5, alpha=0.6, jitter=0.15, ax=ax)
    sns.pointplot(data=runs, y="variant", x="acc", order=order, errorbar="sd", color="black", linestyle="none",
                  markers="d", markersize=5, err_kws={"linewidth": 1.2}, ax=ax)
    ax.axvline(runs.loc[runs.variant == ctx.baseline, "acc"].mean(), color=BASELINE_COLOR, ls="--", lw=1)
    ax.set(xlabel="validation accuracy (%)", ylabel="")
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
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    forest = figure_html(fig, "forest plot of accuracy differences",
                         "Mean paired difference and 95% CI (corrected resampled t-test) against each variant's "
                         "reference. Green: better, red: worse, grey: no detectable difference after Holm "
                         "adjustment. Shaded: the A/A control's interval, what retraining alone produces here.")
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
                                                             values="val_acc").dropna() * 100
        if not {ref, v} <= set(wide.columns):  # every run of one side diverged: nothing is paired
            ax.text(0.5, 0.5, "no paired runs\n(diverged)", ha="center", va="center", transform=ax.transAxes,
                    fontsize=8)
            wide = wide.iloc[:0]
        for _, r in wide.iterrows():
            up = r[v] > r[ref]
            ax.plot([0, 1], [r[ref], r[v]], color=VERDICT_COLORS["better" if up else "worse"], alpha=0.6,
                    marker="o", ms=3)
        ax.set_xticks([0, 1], [ref, v], fontsize=7)
        ax.set_xlim(-0.3, 1.3)
        ax.set_title(v, fontsize=9)
    axes[0, 0].set_ylabel("validation accuracy (%)")
    for ax in list(axes.flat)[len(others):]:
        ax.set_visible(False)
    fig.tight_layout()
    return figure_html(fig, "paired runs per variant",
                       "Each line joins the reference and the variant on the same fold and seed (green: the "
                       "variant is better on that pair)." + ctx.featured_note("Panels"))


def cost_vs_accuracy(ctx) -> Section:
    s = variant_summary(ctx).assign(acc=lambda d: 100 * d["acc_mean"], sd=lambda d: 100 * d["acc_sd"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, col, label in ((axes[0], "macs", "MACs per image (forward)"),
                           (axes[1], "epoch_time_s", "training time per epoch (s)")):
        front = pareto_front(s[col], s["acc"])
        for v, r in s.iterrows():
            color = BASELINE_COLOR if v == ctx.baseline else VARIANT_COLOR
            ax.errorbar(r[col], r["acc"], yerr=r["sd"], fmt="o", color=color, ms=5, capsize=2)
            ax.annotate(v, (r[col], r["acc"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
        f = s.loc[front].sort_values(col)
        ax.step(f[col], f["acc"], where="post", color="#1a7f37", lw=1.2, label="Pareto front")
        ax.set(xlabel=label, ylabel="validation accuracy (%)")
        if s[col].max() > 20 * s[col].min():  # log only where costs span orders of magnitude
            ax.set_xscale("log")
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda x, _: si(x)))
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return Section("cost", "Accuracy vs cost", figure_html(
        fig, "accuracy versus MACs and training time",
        "Mean &plusmn; sd over runs. The green step line joins the variants no other variant beats on both "
        f"accuracy and cost. {device_note(ctx)}"))


def pareto_front(cost: pd.Series, acc: pd.Series) -> list:
    """Labels of the points that no other point dominates (cost <= and accuracy >=, one of them strictly).
    Among equally cheap points only the most accurate can be on the front (the default study's baseline,
    batchnorm and dropout share 1,031,744 MACs)."""
    order = pd.DataFrame({"cost": cost, "acc": acc}).sort_values(["cost", "acc"], ascending=[True, False],
                                                                  kind="stable")
    front, best = [], -np.inf
    for label, row in order.iterrows():
        if row["acc"] > best:
            front.append(label)
            best = row["acc"]
    return front


def learning_curves(ctx) -> Section:
    ep = ctx.epochs.assign(val_acc=lambda d: 100 * d["val_acc"])
    base = ep[ep.variant == ctx.baseline]
    others = [v for v in ctx.featured if v != ctx.baseline] or [ctx.baseline]
    cols = min(4, len(others))
    rows = int(np.ceil(len(others) / cols))
    figs = []
    for metric, label in (("val_acc", "validation accuracy (%)"), ("train_loss", "training loss")):
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


def _timed(tv, col: str, fmt: str) -> tuple:
    """A timing cell: the median with its spread where measured, sortable by the median; n/a where untimed."""
    if tv is None:
        return ("n/a", -1)
    return (f"{tv[col]:{fmt}} ({tv[col + '_iqr']:{fmt}})" if col + "_iqr" in tv else f"{tv[col]:{fmt}}", tv[col])


def measurements(ctx) -> Section:
    """Cost, speed measured alone (with its spread), and what training added to memory."""
    g = ctx.runs.groupby("variant")
    t = ctx.timing
    rows = []
    for v in ctx.variants:
        r = g.get_group(v)
        tv = t.loc[v] if v in t.index else None
        rows.append([
            html.escape(v), (si(r["flops_forward"].iloc[0]), r["flops_forward"].iloc[0]),
            (si(r["flops_train_step"].iloc[0]), r["flops_train_step"].iloc[0]),
            _timed(tv, "train_img_per_s", ",.0f"), _timed(tv, "epoch_time_s", ".2f"),
            (f"{tv['latency_b1_ms']:.3f} ({tv['latency_b1_iqr_ms']:.3f})", tv["latency_b1_ms"]) if tv is not None
            else ("n/a", -1),
            (f"{tv['latency_bN_ms']:.2f} ({tv['latency_bN_iqr_ms']:.2f})", tv["latency_bN_ms"]) if tv is not None
            else ("n/a", -1),
            (f"{r['train_img_per_s'].median():,.0f}", r["train_img_per_s"].median()),
            _timed(tv, "train_mb", ",.1f"),
            (f"{100 * r['dead_fraction'].mean():.1f}" if r["dead_fraction"].notna().any() else "n/a",
             r["dead_fraction"].mean() if r["dead_fraction"].notna().any() else -1),
        ])
    batch = int(t["latency_batch"].iloc[0]) if "latency_batch" in t and len(t) else "N"
    kind = str(t["memory_kind"].iloc[0]) if "memory_kind" in t and len(t) else "n/a"
    kind = {"process_rss": "process RSS", "cuda_allocator": "CUDA allocator"}.get(kind, kind)
    header = ["variant", "FLOPs/img forward", "FLOPs/img train step", "train img/s alone (IQR)",
              "s/epoch alone (IQR)", "latency b=1 ms (IQR)", f"latency b={batch} ms (IQR)",
              "train img/s under load (median over runs)", f"training memory MiB alone ({kind})", "dead ReLU %"]
    note = (f'<p class="note">FLOPs: {html.escape(ctx.runs["flop_counter"].iloc[0])}, per image; a training '
            "step is forward + backward. <b>Alone</b>: measured by the workflow's <code>time</code> job, which "
            "holds every core (and the GPU) so that no other job runs meanwhile: training steps on fold 0's "
            "images after untimed warm-up steps, median and IQR over 9 timed blocks; latency in eval mode, "
            "median (IQR) over 25 timed blocks after an untimed warm-up. <b>Under load</b>: what the training "
            "jobs saw while other jobs shared the machine; kept for reference, not for comparison. Training "
            "memory: measured by the same job, the peak during one epoch of a run (data copies, model, "
            "optimiser, evaluation) minus the level at its start (torch and the data set), in a warmed-up "
            "process whose heap returns freed memory. Dead ReLU: channels that "
            f"output zero for every validation image, final model."
            + (f" The A/A control is {html.escape(ctx.baseline)}'s network: its timing columns repeat the "
               "baseline's (one timing job for both)." if ctx.has_aa_control else "")
            + f" {device_note(ctx)}</p>")
    return Section("measurements", "Cost, speed, memory",
                   html_table(header, rows, numeric=set(range(1, 10)), sortable=True) + note)


def numerics_line(runs: pd.DataFrame) -> str:
    """Precision (what it resolved to, and the setting), compile and its time, deterministic kernels."""
    if "precision" not in runs:
        return "fp32 (recorded before cnnbench recorded precision)"
    parts = []
    for col, label in (("precision", "precision"), ("precision_setting", "setting"), ("compile", "torch.compile"),
                       ("deterministic", "deterministic kernels")):
        if col in runs:
            values = {"True": "on", "False": "off"}
            parts.append(f"{label} {', '.join(sorted({values.get(v, v) for v in runs[col].dropna().astype(str)}))}")
    if "compile_time_s" in runs and runs["compile_time_s"].notna().any():
        parts.append(f"compile time {runs['compile_time_s'].max():.1f} s at most per job, kept out of every "
                     "speed figure")
    return html.escape("; ".join(parts))


def environment(ctx) -> Section:
    runs = ctx.runs
    fields = ["device_name", "device", "cpu", "threads", "python", "torch", "torchvision", "numpy", "cnnbench",
              "platform", "cuda", "cudnn", "git_commit", "git_dirty"]
    rows = []
    for f in fields:
        if f in runs and runs[f].notna().any():
            values = sorted(set(runs[f].dropna().astype(str)))
            rows.append([html.escape(f), html.escape(", ".join(values))])
    rows.append(["numerics", numerics_line(runs)])
    rows.append(["runs", f"{len(runs)} between {runs['started_at'].min()} and {runs['finished_at'].max()} (UTC)"])
    jobs = job_overhead(runs, ctx.results_dir / "benchmarks" / "train")
    if len(jobs):
        share = jobs["overhead_s"].sum() / jobs["job_s"].sum()
        rows.append(["workflow overhead", f"{share:.1%} of training-job time outside training, evaluation and "
                     f"measurement (process start, imports, data loading, model building): "
                     f"{jobs['overhead_s'].sum():.1f} s "
                     f"of {jobs['job_s'].sum():.1f} s over {len(jobs)} jobs"])
    env = html_table(["", "value"], rows)
    spec_rows = [[html.escape(v), f"<code>{s.spec_hash}</code>", html.escape(s.arch),
                  " &lt;- ".join(html.escape(link) for link in s.chain)] for v, s in ctx.specs.items()]
    specs = html_table(["variant", "spec hash", "model", "base chain"], spec_rows)
    job_rows = [[html.escape(j.variant), f"{j.job_s:.1f}", f"{j.work_s:.1f}", f"{j.overhead_s:.1f}",
                 f"{j.max_rss_mb:,.0f}"] for j in jobs.itertuples()]
    jobs_html = html_table(["training job", "wall s (Snakemake benchmark)", "training + evaluation + measurement s",
                            "overhead s", "max RSS MiB"], job_rows, numeric={1, 2, 3, 4}) if job_rows else ""
    return Section("environment", "Environment and provenance", env + specs + jobs_html)


def data_files(ctx) -> Section:
    files = [("runs", "one row per run: metrics, cost, speed, memory, provenance"),
             ("epochs", "one row per run and epoch: losses, accuracies, learning rate, times"),
             ("layers", "one row per run, epoch and layer: gradient and weight norms"),
             ("dead_filters", "one row per run and ReLU layer: dead channels"),
             ("predictions", "one row per run and validation image: predicted class")]
    items = "".join(f'<li><a href="{ctx.link(ctx.results_dir / f"{n}.csv")}">{n}.csv</a> / '
                    f'<a href="{ctx.link(ctx.results_dir / f"{n}.parquet")}">{n}.parquet</a>: {d}</li>'
                    for n, d in files)
    items += (f'<li><a href="{ctx.link(ctx.results_dir / "runs")}">runs/</a>: the record of every run (JSON), '
              f'which <code>cnnbench verify</code> re-runs</li>'
              f'<li><a href="{ctx.link(ctx.results_dir / "specs.json")}">specs.json</a>: each variant\'s resolved spec</li>'
              f'<li><a href="{ctx.link(ctx.splits_path)}">splits.json</a>: the validation indices of every fold</li>')
    return Section("data", "Data behind this report", synthetic_note(ctx) + f"<ul>{items}</ul>")


def per_variant(ctx) -> Section:
    from cnnbench.report.variant import variant_details

    shown = ctx.featured
    rest = [v for v in ctx.variants if v not in shown]
    brief = (f'<p class="note">Full sections for {len(shown)} of the {len(ctx.variants)} variants (the baseline, '
             "the comparisons with the smallest adjusted p-values and the A/A control). The others: "
             + ", ".join(f"<code>{html.escape(v)}</code>" for v in rest)
             + "; their numbers are in the summary and in the linked tables, and <code>cnnbench describe "
             "&lt;variant&gt;</code> prints any variant's layer table.</p>") if rest else ""
    return Section("variants", "Per variant", "".join(variant_details(ctx, v, open_=(v == ctx.baseline))
                                                      for v in shown) + brief)


def report_sections() -> list[Callable]:
    from cnnbench.report.augmentation import augmentation_examples
    from cnnbench.report.calibration import aa_control
    from cnnbench.report.ensembles import ensembles
    from cnnbench.report.invariance import translation
    from cnnbench.report.ladder import ladder_section
    from cnnbench.report.norms import weight_norms
    from cnnbench.report.per_example import per_example
    from cnnbench.report.ranking import ranking
    from cnnbench.report.silent import silent_kernels
    from cnnbench.report.transfer import transfer

    return [findings, aa_control, summary_table, accuracy_plot, effects, ladder_section, transfer, ensembles,
            per_example, cost_vs_accuracy, learning_curves, error_edfs, translation, weight_norms, silent_kernels,
            augmentation_examples, ranking, measurements, per_variant, environment, data_files]
