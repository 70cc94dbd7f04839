"""Where the numbers come from: environment, numerics, provenance of every spec, and the data files."""

from __future__ import annotations

import html

import pandas as pd

from cnnbench.report.overview import synthetic_note
from cnnbench.report.section import Section
from cnnbench.report.tables import html_table
from cnnbench.results import job_overhead


def numerics_line(runs: pd.DataFrame) -> str:
    """Precision (what it resolved to, and the setting), compile and its time, deterministic kernels."""
    if "precision" not in runs:
        return "fp32 (recorded before cnnbench recorded precision)"
    parts = []
    for col, label in (("precision", "precision"), ("precision_setting", "setting"), ("compile", "torch.compile"),
                       ("deterministic", "deterministic kernels")):
        if col in runs:
            values = {"True": "on", "False": "off"}
            parts.append(f"{label} {', '.join(sorted({values.get(v, v) for v in runs[col].dropna().astype(str)}))}")
    if "compile_time_s" in runs and runs["compile_time_s"].notna().any():
        parts.append(f"compile time {runs['compile_time_s'].max():.1f} s at most per job, kept out of every "
                     "speed figure")
    return html.escape("; ".join(parts))


def environment(ctx) -> Section:
    runs = ctx.runs
    fields = ["device_name", "device", "cpu", "threads", "python", "torch", "torchvision", "numpy", "cnnbench",
              "platform", "cuda", "cudnn", "git_commit", "git_dirty"]
    rows = []
    for f in fields:
        if f in runs and runs[f].notna().any():
            values = sorted(set(runs[f].dropna().astype(str)))
            rows.append([html.escape(f), html.escape(", ".join(values))])
    rows.append(["numerics", numerics_line(runs)])
    rows.append(["runs", f"{len(runs)} between {runs['started_at'].min()} and {runs['finished_at'].max()} (UTC)"])
    jobs = job_overhead(runs, ctx.results_dir / "benchmarks" / "train")
    if len(jobs):
        share = jobs["overhead_s"].sum() / jobs["job_s"].sum()
        rows.append(["workflow overhead", f"{share:.1%} of training-job time outside training, evaluation and "
                     f"measurement (process start, imports, data loading, model building): "
                     f"{jobs['overhead_s'].sum():.1f} s "
                     f"of {jobs['job_s'].sum():.1f} s over {len(jobs)} jobs"])
    env = html_table(["", "value"], rows)
    spec_rows = [[html.escape(v), f"<code>{s.spec_hash}</code>", html.escape(s.arch),
                  " &lt;- ".join(html.escape(link) for link in s.chain)] for v, s in ctx.specs.items()]
    specs = html_table(["variant", "spec hash", "model", "base chain"], spec_rows)
    job_rows = [[html.escape(j.variant), f"{j.job_s:.1f}", f"{j.work_s:.1f}", f"{j.overhead_s:.1f}",
                 f"{j.max_rss_mb:,.0f}"] for j in jobs.itertuples()]
    jobs_html = html_table(["training job", "wall s (Snakemake benchmark)", "training + evaluation + measurement s",
                            "overhead s", "max RSS MiB"], job_rows, numeric={1, 2, 3, 4}) if job_rows else ""
    return Section("environment", "Environment and provenance", env + specs + jobs_html)


def data_files(ctx) -> Section:
    files = [("runs", "one row per run: metrics, cost, speed, memory, provenance"),
             ("epochs", "one row per run and epoch: losses, accuracies, learning rate, times"),
             ("layers", "one row per run, epoch and layer: gradient and weight norms"),
             ("dead_filters", "one row per run and ReLU layer: dead channels"),
             ("predictions", "one row per run and validation image: predicted class")]
    items = "".join(f'<li><a href="{ctx.link(ctx.results_dir / f"{n}.csv")}">{n}.csv</a> / '
                    f'<a href="{ctx.link(ctx.results_dir / f"{n}.parquet")}">{n}.parquet</a>: {d}</li>'
                    for n, d in files)
    items += (f'<li><a href="{ctx.link(ctx.results_dir / "runs")}">runs/</a>: the record of every run (JSON), '
              f'which <code>cnnbench verify</code> re-runs</li>'
              f'<li><a href="{ctx.link(ctx.results_dir / "specs.json")}">specs.json</a>: each variant\'s resolved spec</li>'
              f'<li><a href="{ctx.link(ctx.splits_path)}">splits.json</a>: the validation indices of every fold</li>')
    return Section("data", "Data behind this report", synthetic_note(ctx) + f"<ul>{items}</ul>")
