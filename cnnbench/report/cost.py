"""Cost, speed and memory: accuracy against cost, and every measured figure with its spread."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from cnnbench.config import AA_CONTROL
from cnnbench.metrics import METRICS
from cnnbench.report.figures import BASELINE_COLOR, VARIANT_COLOR, figure_html, plt
from cnnbench.report.format import device_note, metric_cell, si
from cnnbench.report.section import Section
from cnnbench.report.tables import html_table


def cost_vs_accuracy(ctx) -> Section:
    acc = METRICS["val_acc"]
    s = ctx.per_variant("val_acc", "val_acc_sd", "macs", "epoch_time_s")
    s = s.drop(index=AA_CONTROL, errors="ignore")  # the baseline trained again: not a design to weigh
    s = s.assign(acc=acc.scale * s["val_acc"], sd=acc.scale * s["val_acc_sd"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, col in zip(axes, ("macs", "epoch_time_s")):
        front = pareto_front(s[col], s["acc"])
        for v, r in s.iterrows():
            color = BASELINE_COLOR if v == ctx.baseline else VARIANT_COLOR
            ax.errorbar(r[col], r["acc"], yerr=r["sd"], fmt="o", color=color, ms=5, capsize=2)
            ax.annotate(v, (r[col], r["acc"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
        f = s.loc[front].sort_values(col)
        ax.step(f[col], f["acc"], where="post", color="#1a7f37", lw=1.2)
        ax.plot(f[col], f["acc"], "o", mfc="none", mec="#1a7f37", ms=11, mew=1.2,  # seen with one point too
                label="Pareto front")
        ax.set(xlabel=METRICS[col].label, ylabel=acc.label)
        if s[col].max() > 20 * s[col].min():  # log only where costs span orders of magnitude
            ax.set_xscale("log")
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda x, _: si(x)))
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return Section("cost", "Accuracy vs cost", figure_html(
        fig, "accuracy versus MACs and training time",
        "Mean &plusmn; sd over runs. Ringed in green, joined by a step line: the variants no other variant "
        "beats on both accuracy and cost (the Pareto front)"
        + (f"; the {AA_CONTROL}, the baseline trained again, is left out" if AA_CONTROL in ctx.variants else "")
        + f". {device_note(ctx)}"))


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


MEASURED = ("flops_forward", "flops_train_step", "train_img_per_s", "epoch_time_s", "latency_b1_ms", "latency_bN_ms",
            "train_img_per_s_under_load", "train_mb", "dead_fraction")  # cnnbench.metrics, in column order


def measurements(ctx) -> Section:
    """Cost, speed measured alone (with its spread), and what training added to memory."""
    s, t = ctx.per_variant(*MEASURED), ctx.timing
    rows = [[html.escape(v), *(metric_cell(METRICS[m], s.loc[v, m], s.loc[v].get(f"{m}_spread")) for m in MEASURED)]
            for v in ctx.variants]
    batch = int(t["latency_batch"].iloc[0]) if "latency_batch" in t and len(t) else "N"
    kind = str(t["memory_kind"].iloc[0]) if "memory_kind" in t and len(t) else "n/a"
    kind = {"process_rss": "process RSS", "cuda_allocator": "CUDA allocator"}.get(kind, kind)
    labels = {"latency_bN_ms": f"latency b={batch} ms", "train_mb": f"{METRICS['train_mb'].label} ({kind})"}
    header = ["variant", *(labels.get(m, METRICS[m].label) + (" (IQR)" if METRICS[m].spread else "") for m in MEASURED)]
    note = (f'<p class="note">FLOPs: {html.escape(ctx.runs["flop_counter"].iloc[0])}, per image; a training '
            "step is forward + backward. <b>Alone</b>: measured by the workflow's <code>time</code> job, which "
            "times every variant one after another on one machine and holds every core (and the GPU) so that "
            "no other job runs meanwhile: training steps on fold 0's "
            "images after untimed warm-up steps, median and IQR over 9 timed blocks; latency in eval mode, "
            "median (IQR) over 25 timed blocks after an untimed warm-up. <b>Under load</b>: what the training "
            "jobs saw while other jobs shared the machine; kept for reference, not for comparison. Training "
            "memory: measured by the same job, the peak during one epoch of a run (data copies, model, "
            "optimiser, evaluation) minus the level at its start (torch and the data set), in a warmed-up "
            "process whose heap returns freed memory. Dead ReLU: channels that "
            f"output zero for every validation image, final model."
            + (f" The A/A control is {html.escape(ctx.baseline)}'s network: its timing columns repeat the "
               "baseline's (the same network, timed once)." if ctx.has_aa_control else "")
            + f" {device_note(ctx)}</p>")
    return Section("measurements", "Cost, speed, memory",
                   html_table(header, rows, numeric=set(range(1, len(header))), sortable=True) + note
                   + slower_alone_warning(s, ctx))


def slower_alone_warning(s, ctx) -> str:
    """Alone, a variant has the machine to itself, so its speed should not fall below what its training jobs
    saw while sharing it; where it does by more than the spread of its own timed blocks, the machine was
    slower while the timing job ran (another program, throttling), which that IQR cannot show. Within the
    spread it is noise: on the 2-vCPU VM, where two one-thread jobs barely compete, alone/under load ran
    0.94-1.13 over architectures.yaml's 24 variants, and the two below 1 lay within their IQR."""
    alone, shared = s["train_img_per_s"], s["train_img_per_s_under_load"]
    iqr = s.get("train_img_per_s_spread", pd.Series(dtype=float)).reindex(s.index).fillna(0.0)
    slow = [v for v in ctx.variants
            if v != AA_CONTROL and alone.get(v, float("nan")) + iqr.get(v, 0.0) < shared.get(v, float("nan"))]
    if not slow:
        return ""
    named = "; ".join(f"{html.escape(v)}: {alone[v]:,.0f} img/s alone (IQR {iqr[v]:,.0f}) vs {shared[v]:,.0f} "
                      "under load" for v in slow)
    return (f'<div class="alarm"><p>Measured alone slower than under load by more than the spread of the timed '
            f"blocks: {named}. The machine was slower while the timing job ran (another program, throttling), so "
            "these speeds understate the variant: compare them with care, or time the study again (delete "
            f"{html.escape(str(ctx.results_dir))}/timing/ and run snakemake).</p></div>")
