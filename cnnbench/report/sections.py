"""Report sections. Each is a function `(ReportContext) -> Section | None`; the report shows them in
the order of `SECTIONS`, so adding a section is writing one function and listing it there."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from cnnbench.report.tables import html_table
from cnnbench.report.figures import BASELINE_COLOR, VARIANT_COLOR, VERDICT_COLORS, figure_html, plt, sns
from cnnbench.results import job_overhead
from cnnbench.stats import friedman

@dataclass(frozen=True)
class Section:
    id: str
    title: str
    html: str


def pts(x: float, sign: bool = True) -> str:
    """A fraction as percentage points."""
    return f"{100 * x:+.2f}" if sign else f"{100 * x:.2f}"


def si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def verdict_html(row: pd.Series) -> str:
    css = {"better": "better", "worse": "worse"}.get(row["verdict"], "nodiff")
    text = html.escape(row["verdict"])
    if row["below_noise"]:
        noise = pts(row["noise_floor"], False)
        text += (f' <span class="note">(smaller than the &plusmn;{noise}-pt noise of a single fold: detectable only '
                 "across the paired runs)</span>" if css != "nodiff" else
                 f' <span class="note">(|&Delta;| within the &plusmn;{noise}-pt noise of a single fold)</span>')
    return f'<span class="{css}">{text}</span>'


def variant_summary(ctx) -> pd.DataFrame:
    """Per variant: accuracy mean and sd over runs, cost, median speed and latency."""
    g = ctx.runs.groupby("variant")
    out = pd.DataFrame({
        "n": g.size(), "acc_mean": g["val_acc"].mean(), "acc_sd": g["val_acc"].std(ddof=1),
        "params": g["params"].first(), "macs": g["macs_forward"].first(),
        "epoch_time_s": g["epoch_time_s"].median(), "img_per_s": g["train_img_per_s"].median(),
        "latency_b1_ms": g["latency_b1_ms"].median(),
    })
    return out.loc[ctx.variants]


def device_note(ctx) -> str:
    if len(ctx.devices) == 1:
        return f"Timings measured on {html.escape(ctx.devices[0])}."
    return (f'<b class="worse">Timings come from {len(ctx.devices)} different devices '
            f'({html.escape(", ".join(ctx.devices))}); compare them only within a device (see the environment '
            "section).</b>")


# --- sections ----------------------------------------------------------------------------------------

def findings(ctx) -> Section:
    """The first screen: for every variant, the effect on accuracy, how sure we are, and what it costs."""
    cmp, s = ctx.comparison, variant_summary(ctx)
    base = s.loc[ctx.baseline]
    split = ctx.specs[ctx.baseline].split
    items = []
    for v, row in cmp.sort_values("diff", ascending=False).iterrows():
        changed = html.escape("; ".join(ctx.changes(v)) or "same knobs")
        cost = (f"{s.loc[v, 'macs'] / base.macs:.2g}&times; MACs, "
                f"{s.loc[v, 'epoch_time_s'] / base.epoch_time_s:.2g}&times; time per epoch")
        items.append(f"<li><b>{html.escape(v)}</b> ({changed}): &Delta; accuracy <b>{pts(row['diff'])} pts</b> "
                     f"[{pts(row['ci_low'])}, {pts(row['ci_high'])}], p<sub>Holm</sub> = {row['p_holm']:.2g} "
                     f"&rarr; {verdict_html(row)}; {cost}</li>")
    n_pairs = int(cmp["pairs"].max()) if len(cmp) else 0
    lead = (f"<p>Every variant against <b>{html.escape(ctx.baseline)}</b> (validation accuracy "
            f"{pts(base.acc_mean, False)}% &plusmn; {pts(base.acc_sd, False)}), paired on the same "
            f"{n_pairs} runs ({split['repeats']} &times; {split['folds']}-fold cross-validation). "
            "Differences in percentage points with 95% confidence intervals from the Nadeau-Bengio corrected "
            "resampled t-test. The intervals are per comparison; the verdict uses p-values Holm-adjusted over "
            f"the {len(cmp)} variants, so an interval that just excludes 0 can still be 'no detectable "
            "difference'.</p>")
    return Section("findings", "Findings", lead + (f"<ul>{''.join(items)}</ul>" if items else ""))


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
            p, verdict = (f"{c['p_holm']:.2g}", c["p_holm"]), verdict_html(c)
        else:
            delta, p, verdict = ("", 0.0), ("", 1.0), ""
        rows.append([f'<span title="{desc}">{html.escape(v)}</span>', changed, (f"{int(r.params):,}", r.params),
                     (si(r.macs), r.macs), (f"{r.epoch_time_s:.2f}", r.epoch_time_s),
                     (f"{r.img_per_s:,.0f}", r.img_per_s), (f"{r.latency_b1_ms:.2f}", r.latency_b1_ms),
                     (f"{pts(r.acc_mean, False)} &plusmn; {pts(r.acc_sd, False)}", r.acc_mean), delta, p, verdict])
    header = ["variant", "what changed", "params", "MACs/img", "s/epoch", "img/s", "latency b=1 (ms)",
              "val acc % (mean ± sd)", "Δ acc, pts [95% CI]", "p (Holm)", "verdict"]
    table = html_table(header, rows, numeric={2, 3, 4, 5, 6, 7, 8, 9}, sortable=True,
                       row_class=lambda i: "baseline" if i == 0 else "")
    note = (f'<p class="note">Click a column to sort. Accuracy: final-epoch validation accuracy, mean &plusmn; '
            "sample sd over runs. MACs: multiply-accumulates per image, one forward pass. s/epoch, img/s "
            "(training, warm-up excluded) and latency (eval mode, batch 1): medians over runs. "
            f"{device_note(ctx)}</p>")
    return Section("summary", "Summary", table + note)


def accuracy_plot(ctx) -> Section:
    runs = ctx.runs.assign(acc=lambda d: 100 * d["val_acc"])
    order = ctx.variants
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
        "sd over runs; dashed line: the baseline's mean."))


def effects(ctx) -> Section | None:
    cmp = ctx.comparison
    if cmp.empty:
        return None
    order = cmp.sort_values("diff").index.tolist()
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(order) + 1.3))
    noise = cmp["noise_floor"].mean()
    ax.axvspan(-100 * noise, 100 * noise, color="0.9", zorder=0, label="noise of one fold (binomial 95% CI)")
    ax.axvline(0, color=BASELINE_COLOR, lw=1)
    for i, v in enumerate(order):
        c = cmp.loc[v]
        color = VERDICT_COLORS[c["verdict"]]
        ax.errorbar(100 * c["diff"], i, xerr=[[100 * (c["diff"] - c["ci_low"])], [100 * (c["ci_high"] - c["diff"])]],
                    fmt="o", color=color, capsize=3)
    ax.set_yticks(range(len(order)), order)
    ax.set(xlabel=f"Δ validation accuracy vs {ctx.baseline} (percentage points)")
    ax.legend(loc="lower right", fontsize=8)
    forest = figure_html(fig, "forest plot of accuracy differences",
                         "Mean paired difference and 95% CI (corrected resampled t-test). Green: better, red: "
                         "worse, grey: no detectable difference after Holm adjustment.")
    return Section("effects", "Effects on accuracy", forest + paired_lines(ctx))


def paired_lines(ctx) -> str:
    others = [v for v in ctx.variants if v != ctx.baseline]
    cols = min(5, len(others))
    rows = int(np.ceil(len(others) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.4 * rows), sharey=True, squeeze=False)
    runs = ctx.runs
    for ax, v in zip(axes.flat, others):
        wide = runs[runs.variant.isin([ctx.baseline, v])].pivot_table(index=["fold", "seed"], columns="variant",
                                                                      values="val_acc").dropna() * 100
        for _, r in wide.iterrows():
            up = r[v] > r[ctx.baseline]
            ax.plot([0, 1], [r[ctx.baseline], r[v]], color=VERDICT_COLORS["better" if up else "worse"], alpha=0.6,
                    marker="o", ms=3)
        ax.set_xticks([0, 1], [ctx.baseline, v], fontsize=7)
        ax.set_xlim(-0.3, 1.3)
        ax.set_title(v, fontsize=9)
    axes[0, 0].set_ylabel("validation accuracy (%)")
    for ax in list(axes.flat)[len(others):]:
        ax.set_visible(False)
    fig.tight_layout()
    return figure_html(fig, "paired runs per variant",
                       "Each line joins the baseline and the variant on the same fold and seed (green: the variant "
                       "is better on that pair).")


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
    """Labels of the points that no cheaper (or equally cheap) point beats in accuracy."""
    front, best = [], -np.inf
    for label in cost.sort_values(kind="stable").index:
        if acc[label] > best:
            front.append(label)
            best = acc[label]
    return front


def learning_curves(ctx) -> Section:
    ep = ctx.epochs.assign(val_acc=lambda d: 100 * d["val_acc"])
    base = ep[ep.variant == ctx.baseline]
    others = [v for v in ctx.variants if v != ctx.baseline] or [ctx.baseline]
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
            "one variant against the baseline (grey).</p>")
    return Section("curves", "Learning curves", "".join(figs) + note)


def error_edfs(ctx) -> Section:
    runs = ctx.runs.assign(error=lambda d: 100 * (1 - d["val_acc"]))
    fig, ax = plt.subplots(figsize=(7.5, 4))
    palette = dict(zip(ctx.variants, sns.color_palette("tab10" if len(ctx.variants) <= 10 else "tab20",
                                                       len(ctx.variants))))
    palette[ctx.baseline] = "black"
    sns.ecdfplot(data=runs, x="error", hue="variant", hue_order=ctx.variants, palette=palette, ax=ax)
    ax.set(xlabel="validation error (%)", ylabel="fraction of runs with error ≤ x")
    return Section("edf", "Error distributions", figure_html(
        fig, "empirical distribution functions of the error",
        "Empirical distribution of the validation error over runs (RegNet's design-space view): a curve to the "
        "left and rising steeply is a variant that is good and reliably so."))


def ranking(ctx) -> Section | None:
    r = friedman(ctx.runs, "val_acc")
    if r is None:
        return None
    rows = [[html.escape(v), (f"{rank:.2f}", rank)] for v, rank in r.mean_ranks.items()]
    table = html_table(["variant", "mean rank (1 = best)"], rows, numeric={1})
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(rows) + 1.2))
    ranks = r.mean_ranks
    ax.scatter(ranks.values, range(len(ranks)), color=VARIANT_COLOR)
    ax.set_yticks(range(len(ranks)), ranks.index)
    best = ranks.iloc[0]
    ax.plot([best, best + r.critical_difference], [-0.7, -0.7], color="black", lw=3)
    ax.annotate(f"critical difference = {r.critical_difference:.2f}", (best, -0.7), xytext=(0, 6),
                textcoords="offset points", fontsize=8)
    ax.set_ylim(len(ranks) - 0.5, -1.3)
    ax.set(xlabel="mean rank over paired runs (1 = best)")
    text = (f"<p>Friedman test over {r.blocks} paired runs: &chi;&sup2; = {r.statistic:.1f}, p = {r.p:.2g}. "
            "Variants whose mean ranks differ by more than the Nemenyi critical difference differ "
            "significantly (&alpha; = 0.05).</p>")
    return Section("ranking", "Ranking", text + '<div class="grid">' + table + figure_html(fig, "mean ranks") + "</div>")


def measurements(ctx) -> Section:
    g = ctx.runs.groupby("variant")
    rows = []
    for v in ctx.variants:
        r = g.get_group(v)
        rows.append([
            html.escape(v), (si(r["flops_forward"].iloc[0]), r["flops_forward"].iloc[0]),
            (si(r["flops_train_step"].iloc[0]), r["flops_train_step"].iloc[0]),
            (f"{r['latency_b1_ms'].median():.3f} ({r['latency_b1_iqr_ms'].median():.3f})", r["latency_b1_ms"].median()),
            (f"{r['latency_bN_ms'].median():.2f} ({r['latency_bN_iqr_ms'].median():.2f})", r["latency_bN_ms"].median()),
            (f"{r['train_img_per_s'].median():,.0f}", r["train_img_per_s"].median()),
            (f"{r['train_time_s'].median():.1f}", r["train_time_s"].median()),
            (f"{r['memory_peak_mb'].median():,.0f}", r["memory_peak_mb"].median()),
            (f"{100 * r['dead_fraction'].mean():.1f}" if r["dead_fraction"].notna().any() else "n/a",
             r["dead_fraction"].mean() if r["dead_fraction"].notna().any() else -1),
        ])
    batch = int(ctx.runs["latency_batch"].iloc[0])
    kind = ctx.runs["memory_kind"].iloc[0].replace("_", " ")
    header = ["variant", "FLOPs/img forward", "FLOPs/img train step", "latency b=1 ms (IQR)",
              f"latency b={batch} ms (IQR)", "train img/s", "train time s", f"peak MiB ({kind})", "dead ReLU %"]
    note = (f'<p class="note">FLOPs: {html.escape(ctx.runs["flop_counter"].iloc[0])}, per image; a training '
            "step is forward + backward. Latency: eval mode, median (IQR) over 25 timed blocks after an untimed "
            "warm-up, then the median over runs. Peak memory: from the start of a run to its end (the CUDA "
            "allocator's peak on a GPU). Dead ReLU: channels that output zero for every validation image, "
            f"final model. {device_note(ctx)}</p>")
    return Section("measurements", "Cost, speed, memory",
                   html_table(header, rows, numeric=set(range(1, 9)), sortable=True) + note)


def environment(ctx) -> Section:
    runs = ctx.runs
    fields = ["device_name", "device", "cpu", "threads", "python", "torch", "torchvision", "numpy", "cnnbench",
              "platform", "cuda", "cudnn", "git_commit", "git_dirty"]
    rows = []
    for f in fields:
        if f in runs and runs[f].notna().any():
            values = sorted(set(runs[f].dropna().astype(str)))
            rows.append([html.escape(f), html.escape(", ".join(values))])
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
                  html.escape(" &lt;- ".join(s.chain) or "")] for v, s in ctx.specs.items()]
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
    return Section("data", "Data behind this report", f"<ul>{items}</ul>")


def per_variant(ctx) -> Section:
    from cnnbench.report.variant import variant_details

    return Section("variants", "Per variant", "".join(variant_details(ctx, v, open_=(v == ctx.baseline))
                                                      for v in ctx.variants))


SECTIONS: list[Callable] = [findings, summary_table, accuracy_plot, effects, cost_vs_accuracy, learning_curves, error_edfs,
                            ranking, measurements, per_variant, environment, data_files]
