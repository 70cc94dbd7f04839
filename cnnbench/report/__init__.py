"""The study report: one self-contained HTML page (figures inline), built from the tidy tables.

A report is a list of sections; each section is one function of the report context (see `sections`).
"""

from __future__ import annotations

from pathlib import Path

from cnnbench.io import atomic_path
from cnnbench.report.context import ReportContext
from cnnbench.report.page import render_page
from cnnbench.report.per_example import write_per_example
from cnnbench.report.sections import report_sections


def build_report(*, results_dir: str | Path, data_path: str | Path, splits_path: str | Path,
                 models_dir: str | Path, baseline: str, out: str | Path, title: str, description: str = "",
                 variant_descriptions: dict[str, str] | None = None, references: dict[str, str] | None = None,
                 chains: dict[str, list[str]] | None = None) -> Path:
    ctx = ReportContext.load(results_dir=results_dir, data_path=data_path, splits_path=splits_path,
                             models_dir=models_dir, baseline=baseline, title=title, description=description,
                             out_dir=Path(out).parent, variant_descriptions=variant_descriptions or {},
                             references=references or {}, chains=chains or {})
    sections = [s for make in report_sections() if (s := make(ctx)) is not None]
    write_per_example(ctx, Path(out).parent / "per_example.csv")
    html = render_page(ctx, sections)
    with atomic_path(out) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return Path(out)
