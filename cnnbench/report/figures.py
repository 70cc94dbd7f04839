"""Matplotlib/seaborn figures -> inline <figure> HTML (PNG as a data URI: the page needs no files)."""

from __future__ import annotations

import base64
import html
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import seaborn as sns

sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)
BASELINE_COLOR = "0.35"
VARIANT_COLOR = sns.color_palette("deep")[0]
VERDICT_COLORS = {"better": "#1a7f37", "worse": "#c62828", "no detectable difference": "0.45"}


def figure_html(fig: plt.Figure, alt: str, caption: str = "") -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">{cap}</figure>'
