"""Numbers as text, for tables and progress lines alike (torch-free and light: a training job's log
imports it, and must not pull in the report's plotting)."""

from __future__ import annotations

import math


def si(x: float) -> str:
    """k/M/G with three significant digits (MACs, FLOPs)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def significant(x: float) -> str:
    """Three significant digits in fixed point (every integer digit from 100 up), for times that span
    0.00003 s (the spread of a tiny net's epoch on a GPU) to 1,500 s: .2f showed the first as 0.00, .3g
    the last as 1.5e+03."""
    if not math.isfinite(x):
        return "n/a"
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{2 - math.floor(math.log10(abs(x)))}f}"
