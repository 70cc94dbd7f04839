"""One collapsible section per variant: its arithmetic, what its first model learned and where it fails."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import torch
from torch import nn

from cnnbench.report.figures import figure_html, plt, sns
from cnnbench.report.per_example import per_example_rows
from cnnbench.report.section import Section
from cnnbench.report.tables import html_table

GALLERY = 16  # misclassified examples shown
CAM_IMAGES = 6


def variant_details(ctx, variant: str, open_: bool = False) -> str:
    spec = ctx.specs[variant]
    desc = ctx.variant_descriptions.get(variant, "")
    changes = "baseline" if variant == ctx.baseline else "; ".join(ctx.changes(variant)) or "same knobs"
    parts = [f'<p><span class="note">{html.escape(changes)} &middot; model '
             f'<code>{html.escape(spec.arch)}</code> &middot; spec <code>{spec.spec_hash}</code></span></p>',
             layer_table_html(spec)]
    loaded = ctx.model(variant)
    if loaded is not None:
        model, val, val_idx, saved = loaded
        note = f"First run's model (fold {saved['fold']}, seed {saved['seed']})"
        if _convs(model):
            parts += [f'<h3>{note}: kernels and feature maps</h3>', kernels_and_maps(ctx, model, val, val_idx),
                      "<h3>Where it looks: class-activation maps (Grad-CAM)</h3>", cams(ctx, model, val, val_idx, spec)]
        else:  # a plugin network without convolutions (an MLP): nothing to draw kernels or Grad-CAM of
            parts.append(f'<p class="note">{note}: it has no convolution, so there are no kernels, feature maps '
                         "or class-activation maps to show.</p>")
    parts += ["<h3>Errors over all runs</h3>", confusion_and_gallery(ctx, variant), per_example_rows(ctx, variant),
              "<h3>Diagnostics</h3>", diagnostics(ctx, variant)]
    summary = html.escape(variant) + (f" &mdash; {html.escape(desc)}" if desc else "")
    return (f'<details id="variant-{html.escape(variant)}"{" open" if open_ else ""}><summary>{summary}</summary>'
            + "".join(parts) + "</details>")


def layer_table_html(spec) -> str:
    layers = spec.layer_table()
    rows = [[html.escape(r.name.removeprefix("features.")), html.escape(r.kind), "x".join(map(str, r.out_shape)),
             f"{r.params:,}", f"{r.macs:,}", "n/a" if spec.external else "all" if r.rf is None else str(r.rf)]
            for r in layers]
    total = sum(r.params for r in layers), sum(r.macs for r in layers)
    rows.append(["<b>total</b>", "", "", f"<b>{total[0]:,}</b>", f"<b>{total[1]:,}</b>", ""])
    table = html_table(["layer", "type", "output", "params", "MACs", "receptive field"], rows, numeric={3, 4, 5})
    return f"<details><summary>Layer table ({len(rows) - 1} layers)</summary>{table}</details>"


def _convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def _show(ax, img: np.ndarray) -> None:
    """img: (C, H, W) uint8 -> grey or RGB."""
    if img.shape[0] == 1:
        ax.imshow(img[0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(img.transpose(1, 2, 0))
    ax.axis("off")


@torch.inference_mode()
def kernels_and_maps(ctx, model: nn.Module, val, val_idx: np.ndarray) -> str:
    convs = _convs(model)
    first_name, first = convs[0]
    deep_name, deep = convs[-1]
    w = first.weight.detach()  # (C_out, C_in, k, k)
    n_k = min(32, w.shape[0])
    outputs = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: outputs.__setitem__(n, o[0].detach()))
             for n, m in ((first_name, first), (deep_name, deep))]
    model(val[0:1])
    for h in hooks:
        h.remove()
    n_maps = 8
    fig = plt.figure(figsize=(12, 4.6))
    grid = fig.add_gridspec(3, 1 + max(n_k // 2, n_maps), hspace=0.35)
    for i in range(n_k):  # kernels: two rows
        ax = fig.add_subplot(grid[i // (n_k // 2 or 1) if n_k > 1 else 0, 1 + i % max(n_k // 2, 1)])
        k = w[i]
        if k.shape[0] == 3:
            k = (k - k.min()) / (k.max() - k.min() + 1e-8)
            ax.imshow(k.permute(1, 2, 0).numpy())
        else:
            lim = float(k.abs().max()) or 1.0
            ax.imshow(k[0].numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.axis("off")
    ax = fig.add_subplot(grid[0:2, 0])
    ax.set_title("first-layer kernels ->", fontsize=8)
    ax.axis("off")
    probe = fig.add_subplot(grid[2, 0])
    _show(probe, ctx.images.x[val_idx[0]])
    probe.set_title("probe image", fontsize=8)
    fig2, axes = plt.subplots(2, n_maps, figsize=(12, 3.2))
    for row, (name, out) in enumerate(((first_name, outputs[first_name]), (deep_name, outputs[deep_name]))):
        for j in range(n_maps):
            ax = axes[row, j]
            if j < out.shape[0]:
                ax.imshow(out[j].numpy(), cmap="viridis")
            ax.axis("off")
        axes[row, 0].set_title(f"{name.removeprefix('features.')}: {out.shape[0]} maps of "
                               f"{out.shape[1]}x{out.shape[2]} (first {n_maps})", fontsize=8, loc="left")
    return (figure_html(fig, "first-layer kernels", f"{w.shape[-1]}x{w.shape[-1]} kernels of the first convolution "
                        f"(<code>{html.escape(first_name)}</code>)"
                        + (f", the first {n_k} of {w.shape[0]}" if n_k < w.shape[0] else f", all {n_k}")
                        + " (red positive, blue negative).")
            + figure_html(fig2, "feature maps", "Responses of the first and the deepest convolution to the probe "
                          "image (before their activation)."))


def cam_target(spec, model: nn.Module) -> nn.Module:
    """The Grad-CAM layer: the last stage of a design-space network; for an external one the variant's
    `cam_layer`, else its last convolution."""
    if not spec.external:
        return model.features[-1]
    from cnnbench.models.external import last_conv

    return model.get_submodule(spec.model.get("cam_layer") or last_conv(model))


def cams(ctx, model: nn.Module, val, val_idx: np.ndarray, spec=None) -> str:
    from pytorch_grad_cam import GradCAM

    y = ctx.images.y[val_idx]
    picks = [int(np.flatnonzero(y == c)[0]) for c in np.unique(y)[:CAM_IMAGES]]
    x = val[torch.tensor(picks)].clone()
    with GradCAM(model=model, target_layers=[cam_target(spec, model) if spec else model.features[-1]]) as cam:
        maps = cam(input_tensor=x, targets=None)  # (B, H, W) in [0, 1], for the predicted class
    with torch.inference_mode():
        pred = model(x).argmax(1).numpy()
    fig, axes = plt.subplots(2, len(picks), figsize=(1.7 * len(picks), 3.6))
    axes = np.atleast_2d(axes).reshape(2, -1)
    names = ctx.images.classes
    for j, (i, m) in enumerate(zip(picks, maps)):
        _show(axes[0, j], ctx.images.x[val_idx[i]])
        axes[0, j].set_title(f"true {names[y[i]]}\npred {names[pred[j]]}", fontsize=8,
                             color="black" if pred[j] == y[i] else "#c62828")
        _show(axes[1, j], ctx.images.x[val_idx[i]])
        axes[1, j].imshow(m, cmap="jet", alpha=0.45, extent=(-0.5, m.shape[1] - 0.5, m.shape[0] - 0.5, -0.5))
    fig.tight_layout()
    return figure_html(fig, "class activation maps", "Grad-CAM (pytorch-grad-cam) on the last stage's output, "
                       "for the predicted class: red regions raised that class's score most.")


def confusion_and_gallery(ctx, variant: str) -> str:
    pred = ctx.table("predictions")
    pred = pred[pred.variant == variant]
    y = ctx.images.y
    names = ctx.images.classes
    cm = pd.crosstab(pd.Series(y[pred["index"]], name="true"), pd.Series(pred["pred"].to_numpy(), name="predicted"),
                     normalize="index").reindex(index=range(len(names)), columns=range(len(names)), fill_value=0)
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    sns.heatmap(100 * cm, annot=len(names) <= 12, fmt=".0f", cmap="Blues", cbar_kws={"label": "% of true class"},
                xticklabels=names, yticklabels=names, ax=ax, annot_kws={"fontsize": 7})
    ax.set(xlabel="predicted", ylabel="true")
    confusion = figure_html(fig, "confusion matrix", "Row-normalised confusion over every run's validation "
                            "predictions.")
    first = pred[(pred.seed == pred.seed.min()) & (pred.fold < ctx.specs[variant].split["folds"])]
    wrong = first[first["pred"].to_numpy() != y[first["index"]]]
    if wrong.empty:
        return confusion
    shown = wrong.iloc[np.linspace(0, len(wrong) - 1, min(GALLERY, len(wrong))).astype(int)]
    cols = 8
    rows = int(np.ceil(len(shown) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), squeeze=False)
    for ax, (_, r) in zip(axes.flat, shown.iterrows()):
        _show(ax, ctx.images.x[r["index"]])
        ax.set_title(f"{names[y[r['index']]]}→{names[r['pred']]}", fontsize=10, color="#c62828")
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.tight_layout()
    gallery = figure_html(fig, "misclassified examples", f"{len(shown)} shown of the {len(wrong)} validation "
                          "images it misclassified in the first repeat (each image is validated once per repeat), "
                          "true → predicted.")
    return f'<div class="grid">{confusion}{gallery}</div>'


def diagnostics(ctx, variant: str) -> str:
    dead = ctx.table("dead_filters")
    dead = dead[dead.variant == variant]
    layers = ctx.table("layers")
    layers = layers[layers.variant == variant]
    figs = []
    if not dead.empty:
        d = dead.groupby("layer", sort=False)["fraction"].mean() * 100
        fig, ax = plt.subplots(figsize=(5, 0.3 * len(d) + 1.2))
        ax.barh([n.removeprefix("features.") for n in d.index], d.values, color="#c62828")
        ax.invert_yaxis()
        ax.set(xlabel="dead ReLU channels (% of the layer, mean over runs)", xlim=(0, max(5, d.max() * 1.15)))
        figs.append(figure_html(fig, "dead filters per layer", "Channels whose ReLU output is zero for every "
                                "validation image at every position."))
    if not layers.empty:
        g = layers.groupby(["layer", "epoch"], sort=False)["grad_norm"].mean().reset_index()
        order = list(dict.fromkeys(g["layer"]))
        colors = sns.color_palette("viridis", len(order))
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for c, name in zip(colors, order):
            s = g[g.layer == name]
            ax.plot(s["epoch"], s["grad_norm"], color=c, lw=1.2,
                    label=name.removeprefix("features.") if name in (order[0], order[-1]) or len(order) <= 8 else None)
        ax.set(yscale="log", xlabel="epoch", ylabel="gradient L2 norm (epoch mean)")
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.legend(fontsize=7)
        figs.append(figure_html(fig, "gradient norms per layer", "Per-layer weight-gradient norm, input side "
                                "(dark) to output side (yellow): vanishing gradients show as a gap that grows "
                                "towards the input."))
    return f'<div class="grid">{"".join(figs)}</div>'


def variant_sections(ctx) -> Section:
    """A collapsible section for each featured variant; the others are named."""
    shown = ctx.featured
    rest = [v for v in ctx.variants if v not in shown]
    brief = (f'<p class="note">Full sections for {len(shown)} of the {len(ctx.variants)} variants (the baseline, '
             "the comparisons with the smallest adjusted p-values and the A/A control). The others: "
             + ", ".join(f"<code>{html.escape(v)}</code>" for v in rest)
             + "; their numbers are in the summary and in the linked tables, and <code>cnnbench describe "
             "&lt;variant&gt;</code> prints any variant's layer table.</p>") if rest else ""
    return Section("variants", "Per variant", "".join(variant_details(ctx, v, open_=(v == ctx.baseline))
                                                      for v in shown) + brief)
