"""Weight norms per layer at the end of training: what L2, L1, an activity penalty or BatchNorm did to
the weights, read from the per-layer norms every run records (cnnbench.measure.LayerNorms)."""

from __future__ import annotations

import html

import numpy as np

from cnnbench.report.section import Section
from cnnbench.report.tables import html_table


def weight_norms(ctx) -> Section | None:
    """Final-epoch L2 norm of every conv and linear weight, mean over runs, per featured variant; and each
    variant's total against the variant it is compared with. Descriptive: no test is made on it."""
    layers = ctx.table("layers")
    if layers.empty:
        return None
    last = layers[layers["epoch"] == layers.groupby(["variant", "fold", "seed"])["epoch"].transform("max")]
    shown = [v for v in ctx.featured if v in set(last["variant"])]
    mean = last[last["variant"].isin(shown)].groupby(["variant", "layer"], sort=False)["weight_norm"].mean()
    total = last.groupby(["variant", "fold", "seed"])["weight_norm"].apply(lambda s: float(np.sqrt((s ** 2).sum())))
    total = total.groupby("variant").mean()
    rows = []
    for v in shown:
        ref = ctx.references.get(v)
        ratio = f"{total[v] / total[ref]:.2f}× {html.escape(ref)}" if ref in total.index else ""
        per_layer = ", ".join(f"{html.escape(layer)} {value:.2f}" for layer, value in mean[v].items())
        rows.append([html.escape(v), f"{total[v]:.2f}", ratio, per_layer])
    table = html_table(["variant", "total weight norm", "vs its comparison", "per layer (final epoch, mean over runs)"],
                       rows, numeric={1})
    note = ('<p class="note">L2 norm of every convolution and linear weight after the last epoch, averaged over '
            "the runs; the total is the norm of all of them together. L2 weight decay and L1 shrink the "
            "weights they act on (<code>decay_biases: false</code> leaves biases and BatchNorm alone); before a "
            "BatchNorm layer the scale of a kernel does not change the output, so decay there changes the "
            "effective learning rate rather than the function. Description only, not a test.</p>")
    return Section("weight-norms", "Weight norms", table + note)
