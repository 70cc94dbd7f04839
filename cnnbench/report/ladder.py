"""The ablation ladder (ConvNeXt style): variants that form a chain, each built on the previous one and
compared with it, drawn as rungs - each rung's paired difference from the rung below, tested in the
report's one Holm family, and the cumulative difference from the start with its own paired CI."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from cnnbench.config import AA_CONTROL
from cnnbench.report.figures import BASELINE_COLOR, VARIANT_COLOR, figure_html, plt
from cnnbench.report.format import interval, pts, pvalue, verdict_html
from cnnbench.report.section import Section

MIN_RUNGS = 2  # a start and at least two steps: one step is an ordinary comparison


def ladders(specs: dict, references: dict[str, str]) -> list[list[str]]:
    """Every root-to-leaf path of at least MIN_RUNGS + 1 variants in which each variant is built on the
    previous one (`base:`) and compared with it (the default `compare_to`)."""
    parent = {v: s.chain[1] for v, s in specs.items()
              if v != AA_CONTROL and len(s.chain) > 1 and references.get(v) == s.chain[1]}
    children: dict[str, list[str]] = {}
    for v, p in parent.items():
        children.setdefault(p, []).append(v)
    roots = [v for v in specs if v != AA_CONTROL and v not in parent and v in children]
    paths: list[list[str]] = []

    def walk(path: list[str]) -> None:
        kids = children.get(path[-1], [])
        if not kids:
            if len(path) > MIN_RUNGS:
                paths.append(path)
            return
        for kid in kids:
            walk(path + [kid])

    for root in roots:
        walk([root])
    return paths


def ladder_table(runs: pd.DataFrame, path: list[str], comparison: pd.DataFrame) -> pd.DataFrame:
    """One row per rung: mean accuracy, the step from the rung below (from the report's comparisons, Holm
    included) and the cumulative difference from the start (paired on the same fold and seed)."""
    from cnnbench.stats import compare_pair, usable

    ok = usable(runs)
    rows = [{"variant": path[0], "acc": ok.loc[ok.variant == path[0], "val_acc"].mean()}]
    for v in path[1:]:
        step = comparison.loc[v]
        total = compare_pair(ok, path[0], v, "val_acc")
        rows.append({"variant": v, "acc": step["variant_mean"], "step": step["diff"], "step_low": step["ci_low"],
                     "step_high": step["ci_high"], "p_holm": step["p_holm"], "verdict": step["verdict"],
                     "mde": step["mde"], "total": total.test.mean if total else np.nan,
                     "total_low": total.test.ci_low if total else np.nan,
                     "total_high": total.test.ci_high if total else np.nan})
    return pd.DataFrame(rows)


def _figure(table: pd.DataFrame) -> str:
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(table) + 1.2))
    y = np.arange(len(table))[::-1]
    ax.barh(y, 100 * table["acc"], color=[BASELINE_COLOR] + [VARIANT_COLOR] * (len(table) - 1), height=0.6)
    lo = 100 * (table["acc"].min() - 0.02)
    ax.set_xlim(left=max(0, lo))
    for yi, (_, row) in zip(y, table.iterrows()):
        label = "start" if np.isnan(row.get("step", np.nan)) else f"{pts(row['step'])} pts"
        ax.text(100 * row["acc"], yi, f"  {100 * row['acc']:.2f}%  ({label})", va="center", fontsize=8)
    ax.set_yticks(y, table["variant"])
    ax.set_xlabel("validation accuracy (%), mean over runs")
    return figure_html(fig, "ablation ladder", "Each rung is built on the rung above it; the table below says "
                                               "what each one changes (one knob or several).")


def ladder_section(ctx) -> Section | None:
    paths = ladders(ctx.specs, ctx.references)
    if not paths:
        return None
    parts = []
    for path in paths:
        table = ladder_table(ctx.runs, path, ctx.comparison)
        rows = [[html.escape(path[0]), "start", pts(table["acc"][0], False), "start", "", "", ""]]
        for _, r in table.iloc[1:].iterrows():
            rows.append([html.escape(r["variant"]), html.escape("; ".join(ctx.changes(r["variant"])) or "nothing"),
                         pts(r["acc"], False), f"{pts(r['step'])} {interval(r['step_low'], r['step_high'])}",
                         pvalue(r["p_holm"]), verdict_html(r),
                         f"{pts(r['total'])} {interval(r['total_low'], r['total_high'])}"])
        from cnnbench.report.tables import html_table

        parts.append(_figure(table) + html_table(
            ["rung", "what it changes from the rung above", "accuracy %", "step vs the rung above, pts [95% CI]",
             "p (Holm)", "verdict", "cumulative vs the start, pts [95% CI]"], rows, numeric={2}))
    note = ('<p class="note">A ladder is a chain of variants, each built on the one above (<code>base:</code>) '
            "and compared with it. Every step is one of the report's comparisons: paired over the same folds and "
            "seeds, corrected t-test, Holm-adjusted with all the others. The cumulative difference from the "
            "start is paired the same way; its CI is not adjusted for multiplicity and carries no verdict.</p>")
    return Section("ladder", "Ablation ladder", "".join(parts) + note)
