"""What the augmentation knobs do to an image: a grid of augmented training examples per distinct
augmentation setting, drawn with the training code's own `augment` (so the picture is what the network
saw, not an illustration)."""

from __future__ import annotations

import html

import numpy as np

from cnnbench.report.figures import figure_html, plt
from cnnbench.report.section import Section

EXAMPLES = 6  # images per setting
DRAWS = 3  # augmented draws of each


def augmentation_examples(ctx) -> Section | None:
    import torch

    from cnnbench.augment import augment, is_active

    settings: dict[str, list[str]] = {}
    for v in ctx.featured:
        cfg = ctx.specs[v].train.get("augment", {})
        if is_active(cfg):
            key = repr(sorted((k, val) for k, val in cfg.items() if val))
            settings.setdefault(key, []).append(v)
    if not settings:
        return None
    x = torch.from_numpy(ctx.images.x[:: max(1, len(ctx.images.x) // EXAMPLES)][:EXAMPLES]).float() / 255
    parts = []
    for variants in settings.values():
        cfg = ctx.specs[variants[0]].train["augment"]
        gen = torch.Generator().manual_seed(0)
        rows = [x] + [augment(x.clone(), cfg, gen) for _ in range(DRAWS)]
        fig, axes = plt.subplots(len(rows), EXAMPLES, figsize=(1.1 * EXAMPLES, 1.1 * len(rows)), squeeze=False)
        for r, batch in enumerate(rows):
            for j in range(EXAMPLES):
                img = batch[j].numpy()
                ax = axes[r, j]
                ax.imshow(img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0)), cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([]), ax.set_yticks([])
            axes[r, 0].set_ylabel("original" if r == 0 else f"draw {r}", fontsize=8)
        shown = ", ".join(f"{k} {v}" for k, v in cfg.items() if v)
        parts.append(f"<h3>{html.escape(', '.join(variants))}</h3>" + figure_html(
            fig, f"augmented examples: {shown}", f"Augmentation {html.escape(shown)}: the top row as stored, "
            "below it three random draws, as training batches see them."))
    return Section("augmentation", "Augmentation: what the network saw", "".join(parts))
