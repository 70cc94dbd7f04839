"""Number and verdict formatting shared by the report's sections."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from cnnbench.numtext import si, significant  # noqa: F401 (the sections' formatting in one place)


def pts(x: float, sign: bool = True) -> str:
    """A fraction as percentage points (n/a where there is none, never 'nan')."""
    if not np.isfinite(x):
        return "n/a"
    return f"{100 * x:+.2f}" if sign else f"{100 * x:.2f}"


def interval(low: float, high: float) -> str:
    """A 95% CI in points; where the test had nothing to test against (the same difference in every pair,
    or fewer than 2 resamples) it says so instead of [nan, nan], and a bound past +-100 pts is cut there."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "[no interval: the same difference in every pair, or under 2 resamples]"
    # past +-100 pts, where no accuracy difference can be (a 2-resample t interval reached -401.75), the
    # bound says only that: the interval is uninformative there
    return f"[{'< -100' if low < -1 else pts(low)}, {'> +100' if high > 1 else pts(high)}]"


def metric_cell(metric, value: float, spread: float | None = None) -> tuple[str, float]:
    """A table cell of a cnnbench.metrics.Metric: its value as shown, with the spread in brackets where
    measured, sortable by the value; n/a (sorting first) where not measured."""
    if value is None or not np.isfinite(value):
        return ("n/a", -1)
    text = metric.text(value)
    if spread is not None and np.isfinite(spread):
        text += f" ({metric.text(spread)})"
    return (text, float(value))


def pvalue(p: float) -> str:
    return "n/a" if not np.isfinite(p) else f"{p:.2g}"


def verdict_html(row: pd.Series) -> str:
    """The verdict; 'no detectable difference' says what the study could have detected (80% power)."""
    css = {"better": "better", "worse": "worse"}.get(row["verdict"], "nodiff")
    text = html.escape(row["verdict"])
    if css == "nodiff" and np.isfinite(row.get("mde", np.nan)):
        if row["mde"] <= 1:
            text += f' <span class="note">(could detect |&Delta;| &ge; {pts(row["mde"], False)} pts with 80% power)</span>'
        else:  # more than accuracy can differ by (cnnbench plan prints >100)
            text += ' <span class="note">(no possible difference is detectable with 80% power: it would take &gt;100 pts)</span>'
    return f'<span class="{css}">{text}</span>'


def device_note(ctx) -> str:
    if len(ctx.devices) == 1:
        return f"Timings measured on {html.escape(ctx.devices[0])}."
    return (f'<b class="worse">Timings come from {len(ctx.devices)} different devices '
            f'({html.escape(", ".join(ctx.devices))}); compare them only within a device (see the environment '
            "section).</b>")
