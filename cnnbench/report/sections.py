"""Report sections. Each is a function `(ReportContext) -> Section | None`; the report shows them in
the order of `SECTIONS`, so adding a section is writing one function and listing it there."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from cnnbench.results import job_overhead
from cnnbench.report.figures import BASELINE_COLOR, VARIANT_COLOR, figure_html, plt, sns


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    html: str


def html_table(header: list[str], rows: Iterable[list], numeric: set[int] = frozenset(),
               row_class: Callable[[int], str] = lambda i: "") -> str:
    """A plain HTML table; cells are escaped unless they are already `Markup`-like (str with '<')."""
    head = "".join(f'<th class="num">{html.escape(h)}</th>' if i in numeric else f"<th>{html.escape(h)}</th>"
                   for i, h in enumerate(header))
    body = []
    for r, row in enumerate(rows):
        cells = "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row))
        cls = row_class(r)
        body.append(f'<tr class="{cls}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f}"


def si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def variant_summary(ctx) -> pd.DataFrame:
    """Per variant: mean and sd of the final validation accuracy, cost and speed."""
    g = ctx.runs.groupby("variant")
    out = pd.DataFrame({
        "n": g.size(),
        "acc_mean": g["val_acc"].mean(), "acc_sd": g["val_acc"].std(ddof=1),
        "params": g["params"].first(), "macs": g["macs_forward"].first(),
        "epoch_time_s": g["epoch_time_s"].median(), "img_per_s": g["train_img_per_s"].median(),
    })
    return out.loc[ctx.variants]


def overview(ctx) -> Section:
    base = ctx.specs[ctx.baseline]
    t, split = base.train, base.split
    runs = ctx.runs
    devices = ", ".join(sorted(set(runs["device_name"].astype(str))))
    aug = ", ".join(f"{k}={v}" for k, v in t["augment"].items() if v) or "none"
    items = [
        ("Data", f"{html.escape(base.data['name'])}: {len(ctx.images.y):,} images of "
                 f"{'x'.join(map(str, base.input_shape))}, {base.num_classes} classes"),
        ("Protocol", f"{split['repeats']} x {split['folds']}-fold stratified cross-validation "
                     f"(split seed {split['split_seed']}), seeds {sorted(set(runs['seed']))}; "
                     f"{len(runs)} runs of {runs['variant'].nunique()} variants"),
        ("Training (baseline)", f"{t['epochs']} epochs, batch {t['batch_size']}, {t['optimizer']} lr {t['lr']} "
                                f"({t['schedule']}), weight decay {t['weight_decay']}, augmentation: {aug}"),
        ("Measured on", html.escape(devices)),
    ]
    jobs = job_overhead(runs, ctx.results_dir / "benchmarks" / "train")
    if len(jobs):
        share = jobs["overhead_s"].sum() / jobs["job_s"].sum()
        items.append(("Workflow overhead", f"{share:.1%} of training-job time spent outside training and evaluation "
                      f"(process start, imports, data loading, model building): {jobs['overhead_s'].sum():.1f} s of "
                      f"{jobs['job_s'].sum():.1f} s over {len(jobs)} jobs"))
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in items)
    return Section("overview", "Overview", f"<table>{body}</table>")


def summary_table(ctx) -> Section:
    s = variant_summary(ctx)
    rows = []
    for v in ctx.variants:
        r = s.loc[v]
        changed = "baseline" if v == ctx.baseline else html.escape("; ".join(ctx.changes(v)) or "(same knobs)")
        desc = html.escape(ctx.variant_descriptions.get(v, ""), quote=True)
        rows.append([f'<span title="{desc}">{html.escape(v)}</span>', changed, f"{int(r.params):,}", si(r.macs), f"{r.epoch_time_s:.2f}",
                     f"{r.img_per_s:,.0f}", f"{pct(r.acc_mean, 2)} ± {pct(r.acc_sd, 2)}", int(r.n)])
    header = ["variant", "what changed", "params", "MACs/img", "s/epoch", "img/s", "val acc % (mean ± sd)", "runs"]
    table = html_table(header, rows, numeric={2, 3, 4, 5, 6, 7}, row_class=lambda i: "baseline" if i == 0 else "")
    note = ('<p class="note">Accuracy: final-epoch validation accuracy of each fold, mean ± sample sd over runs. '
            "MACs: multiply-accumulates per image for one forward pass (convolutions and linear layers). "
            "s/epoch and img/s: training only (evaluation excluded), median over runs, warm-up steps excluded "
            "from img/s.</p>")
    return Section("summary", "Summary", table + note)


def accuracy_plot(ctx) -> Section:
    runs = ctx.runs.assign(acc=lambda d: 100 * d["val_acc"])
    order = ctx.variants
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(order) + 1.2))
    palette = {v: BASELINE_COLOR if v == ctx.baseline else VARIANT_COLOR for v in order}
    sns.stripplot(data=runs, y="variant", x="acc", order=order, hue="variant", palette=palette, legend=False,
                  size=5, alpha=0.6, jitter=0.15, ax=ax)
    sns.pointplot(data=runs, y="variant", x="acc", order=order, errorbar=("ci", 95), color="black",
                  linestyle="none", markers="d", markersize=5, err_kws={"linewidth": 1.2}, ax=ax)
    ax.axvline(runs.loc[runs.variant == ctx.baseline, "acc"].mean(), color=BASELINE_COLOR, ls="--", lw=1)
    ax.set(xlabel="validation accuracy (%)", ylabel="")
    caption = ("Each dot is one run (fold, seed); the diamond and bar are the mean and its 95% bootstrap CI. "
               "The dashed line is the baseline mean.")
    return Section("accuracy", "Accuracy per variant", figure_html(fig, "validation accuracy per variant", caption))


def learning_curves(ctx) -> Section:
    ep = ctx.epochs.assign(val_acc=lambda d: 100 * d["val_acc"])
    base = ep[ep.variant == ctx.baseline]
    others = [v for v in ctx.variants if v != ctx.baseline] or [ctx.baseline]
    cols = min(3, len(others))
    rows = int(np.ceil(len(others) / cols))
    figs = []
    for metric, label in (("val_acc", "validation accuracy (%)"), ("train_loss", "training loss")):
        fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows), sharex=True, sharey=True,
                                 squeeze=False)
        for ax, v in zip(axes.flat, others):
            sns.lineplot(data=base, x="epoch", y=metric, errorbar=("pi", 100), color=BASELINE_COLOR, ax=ax,
                         label=ctx.baseline)
            if v != ctx.baseline:
                sns.lineplot(data=ep[ep.variant == v], x="epoch", y=metric, errorbar=("pi", 100),
                             color=VARIANT_COLOR, ax=ax, label=v)
            ax.set_title(v, fontsize=10)
            ax.set(ylabel=label, xlabel="epoch")
            ax.legend(fontsize=7, loc="lower right" if metric == "val_acc" else "upper right")
            if metric == "val_acc":
                lo = ep[metric].quantile(0.02)
                ax.set_ylim(max(lo - 1, 0), 100)
        for ax in list(axes.flat)[len(others):]:
            ax.set_visible(False)
        fig.tight_layout()
        figs.append(figure_html(fig, f"learning curves: {label}"))
    caption = ('<p class="note">Lines: mean over folds; bands: the range over folds (min to max). Each panel '
               "shows one variant against the baseline (grey).</p>")
    return Section("curves", "Learning curves", "".join(figs) + caption)


SECTIONS: list[Callable] = [overview, summary_table, accuracy_plot, learning_curves]
