"""The per-variant numbers a report shows, described once (as pycls's `metrics_info`): where each is
stored, how runs combine into one value per variant, its label and unit, how it prints, and which
direction is better. The summary, findings and cost tables, the cost plots and the mean ranks read their
figures from here (each section lists the names it shows), so a figure's column, label or format
changes in one place.

Torch-free: it reads the tables `collect` writes (runs: one row per run; timing: one row per variant,
measured alone by the workflow's timing job).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Metric:
    name: str  # the key in METRICS
    label: str  # with its unit: table headers and axes
    column: str  # the column in `table`
    table: str  # runs | timing
    combine: str = "first"  # how a variant's runs become one value: first (the same in every run) | mean | std | median
    trained_only: bool = False  # from runs that trained only: diverged runs are left out of accuracy (stats.usable)
    scale: float = 1.0  # shown value = scale x stored value (fractions as percent)
    fmt: str = ".3g"  # format of the shown value; "si" for k/M/G, "sig": 3 significant digits in fixed point
    higher_is_better: bool = True
    spread: str | None = None  # the timing table's column with its IQR

    def text(self, value: float) -> str:
        """The value as shown, or n/a where it was not measured."""
        if value is None or not np.isfinite(value):
            return "n/a"
        if self.fmt in ("si", "sig"):
            from cnnbench.numtext import si, significant

            return (si if self.fmt == "si" else significant)(self.scale * value)
        return f"{self.scale * value:{self.fmt}}"


def _metrics(*ms: Metric) -> dict[str, Metric]:
    return {m.name: m for m in ms}


METRICS = _metrics(
    Metric("val_acc", "validation accuracy (%)", "val_acc", "runs", "mean", True, 100, ".2f"),
    Metric("val_acc_sd", "validation accuracy sd (pts)", "val_acc", "runs", "std", True, 100, ".2f"),
    Metric("train_loss", "training loss", "train_loss", "runs", "mean", True, fmt=".3f", higher_is_better=False),
    Metric("params", "params", "params", "runs", fmt=",.0f", higher_is_better=False),
    Metric("macs", "MACs/img (forward)", "macs_forward", "runs", fmt="si", higher_is_better=False),
    Metric("flops_forward", "FLOPs/img forward", "flops_forward", "runs", fmt="si", higher_is_better=False),
    Metric("flops_train_step", "FLOPs/img train step", "flops_train_step", "runs", fmt="si",
           higher_is_better=False),
    Metric("train_img_per_s", "train img/s alone", "train_img_per_s", "timing", fmt=",.0f",
           spread="train_img_per_s_iqr"),
    Metric("epoch_time_s", "s/epoch alone", "epoch_time_s", "timing", fmt="sig", higher_is_better=False,
           spread="epoch_time_s_iqr"),
    Metric("latency_b1_ms", "latency b=1 ms", "latency_b1_ms", "timing", fmt="sig", higher_is_better=False,
           spread="latency_b1_iqr_ms"),
    Metric("latency_bN_ms", "latency b=N ms", "latency_bN_ms", "timing", fmt="sig", higher_is_better=False,
           spread="latency_bN_iqr_ms"),
    Metric("train_mb", "training memory MiB alone", "train_mb", "timing", fmt=",.1f", higher_is_better=False),
    Metric("train_img_per_s_under_load", "train img/s under load (median over runs)", "train_img_per_s", "runs",
           "median", fmt=",.0f"),
    Metric("dead_fraction", "dead ReLU %", "dead_fraction", "runs", "mean", scale=100, fmt=".1f",
           higher_is_better=False),
)


def per_variant(runs: pd.DataFrame, timing: pd.DataFrame, names: list[str], variants: list[str]) -> pd.DataFrame:
    """One row per variant (in `variants`' order), one column per metric in `names`, plus `<name>_spread`
    for a timed metric with a spread; NaN where a variant has no value (no timing job; every run diverged,
    for a metric of trained runs only)."""
    from cnnbench.stats import usable

    out = pd.DataFrame(index=pd.Index(variants, name="variant"))
    trained = usable(runs)
    for name in names:
        m = METRICS[name]
        if m.table == "runs":
            source = trained if m.trained_only else runs
            values = source.groupby("variant")[m.column].agg(m.combine) if m.column in source else None
        elif m.column in timing:
            values = timing[m.column]
            if m.spread and m.spread in timing:
                out[f"{name}_spread"] = timing[m.spread].reindex(variants)
        else:
            values = None
        out[name] = values.reindex(variants) if values is not None else np.nan
    return out
