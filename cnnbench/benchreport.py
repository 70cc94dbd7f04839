"""`cnnbench bench-report`: pytest-benchmark JSON -> theory vs practice, and the change between two runs.

One file: for every question of tests/bench, the MAC and parameter ratios theory predicts next to the
time ratio measured in the same run (forward+backward MACs: forward, input gradient and weight gradient
of every conv, the work the benchmark times). Two files (two machines, or two commits): every benchmark's median
before and after, flagged - not failed - when it moved by more than a threshold.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from cnnbench.errors import CnnbenchError
from cnnbench.report.tables import html_table

KEY = ["question", "device", "mode"]


def load(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """One row per benchmark (with its theory from extra_info), and where/when it ran."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CnnbenchError(f"{path}: not a pytest-benchmark JSON file ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks", []), list):
        raise CnnbenchError(f"{path}: not a pytest-benchmark JSON file (expected an object with 'benchmarks'); "
                            "produce one with `pytest tests/bench --benchmark-only --benchmark-json FILE`")
    rows = []
    for b in data.get("benchmarks", []):
        info = b.get("extra_info", {})
        if "question" not in info:
            continue  # not one of cnnbench's kernel benchmarks
        rows.append({"name": b["fullname"], **{k: info[k] for k in ("question", "device", "mode", "role", "case")},
                     "macs": info["macs_per_image"], "params": info["params"], "batch": info["batch"],
                     "size": info.get("bench_size"), "median_s": b["stats"]["median"], "iqr_s": b["stats"]["iqr"],
                     "rounds": b["stats"]["rounds"]})
    if not rows:
        raise CnnbenchError(f"{path}: no cnnbench kernel benchmarks in it; produce one with "
                            "`pytest tests/bench --benchmark-only --benchmark-json FILE`")
    machine = data.get("machine_info", {})
    meta = {"file": str(path), "cpu": machine.get("cpu", {}).get("brand_raw") or machine.get("processor", ""),
            "node": machine.get("node", ""), "commit": (data.get("commit_info") or {}).get("id", ""),
            "dirty": (data.get("commit_info") or {}).get("dirty"), "datetime": data.get("datetime", "")}
    return pd.DataFrame(rows), meta


def theory_vs_practice(df: pd.DataFrame) -> pd.DataFrame:
    """Per question, device and mode: how many times cheaper case b is than case a in theory
    (MACs, parameters) and how many times faster it was measured (a's median / b's median)."""
    a = df[df.role == "a"].set_index(KEY)
    b = df[df.role == "b"].set_index(KEY)
    both = a.merge(b, left_index=True, right_index=True, suffixes=("_a", "_b"))
    out = pd.DataFrame({
        "case_a": both["case_a"], "case_b": both["case_b"],
        "macs_ratio": both["macs_a"] / both["macs_b"].where(both["macs_b"] > 0),
        "params_ratio": both["params_a"] / both["params_b"].where(both["params_b"] > 0),
        "time_ratio": both["median_s_a"] / both["median_s_b"],
        "median_a_ms": 1e3 * both["median_s_a"], "median_b_ms": 1e3 * both["median_s_b"],
    })
    return out.reset_index()


def compare(old: pd.DataFrame, new: pd.DataFrame, threshold: float = 0.10) -> pd.DataFrame:
    """Every benchmark present in both: medians and relative change; `flagged` beyond +-threshold."""
    both = old[["name", "question", "case", "device", "mode", "median_s"]].merge(
        new[["name", "median_s"]], on="name", suffixes=("_old", "_new"))
    both["change"] = both["median_s_new"] / both["median_s_old"] - 1
    both["flagged"] = both["change"].abs() > threshold
    return both


def _ratio(x: float) -> str:
    return "inf" if pd.isna(x) else f"{x:.2f}x"


def verdict(r) -> tuple[str, str]:
    """('theory' sentence, 'measured' sentence) naming the cheaper case, e.g.
    ('1x1 + 5x5 needs 9.68x fewer MACs', '1x1 + 5x5 was 5.86x faster')."""
    if pd.isna(r.macs_ratio) or r.macs_ratio >= 1:
        cheap, other, macs, time = r.case_b, r.case_a, r.macs_ratio, r.time_ratio
    else:
        cheap, other, macs, time = r.case_a, r.case_b, 1 / r.macs_ratio, 1 / r.time_ratio
    if pd.isna(macs):
        theory = f"{cheap} needs no MACs, {other} does"
    elif abs(macs - 1) < 0.005:
        theory = "same MACs"
    else:
        theory = f"{cheap} needs {_ratio(macs)} fewer MACs than {other}"
    measured = f"{cheap} was {time:.2f}x faster" if time >= 1 else f"{cheap} was {1 / time:.2f}x slower"
    return theory, measured


def format_text(tvp: pd.DataFrame, meta: dict, changes: pd.DataFrame | None = None, threshold: float = 0.1) -> str:
    lines = [f"kernel benchmarks: {meta['file']} ({meta['cpu']}, commit {str(meta['commit'])[:10]}, {meta['datetime']})",
             "theory vs practice (medians measured in the same run):"]
    for r in tvp.itertuples():
        theory, measured = verdict(r)
        lines.append(f"  {r.question} [{r.device}, {r.mode}]: {theory}; {measured} "
                     f"({r.median_a_ms:.3f} vs {r.median_b_ms:.3f} ms)")
    if changes is not None:
        flagged = changes[changes.flagged]
        lines.append(f"change vs the other run: {len(flagged)} of {len(changes)} benchmarks moved by more than "
                     f"{threshold:.0%}")
        for r in flagged.itertuples():
            lines.append(f"  {'slower' if r.change > 0 else 'faster'} {r.change:+.0%}: {r.question} / {r.case} "
                         f"[{r.device}, {r.mode}] {1e3 * r.median_s_old:.3f} -> {1e3 * r.median_s_new:.3f} ms")
    return "\n".join(lines)


def format_html(tvp: pd.DataFrame, meta: dict, changes: pd.DataFrame | None = None, threshold: float = 0.1) -> str:
    rows = [[html.escape(r.question), r.device, r.mode, html.escape(r.case_a), html.escape(r.case_b),
             _ratio(r.macs_ratio), _ratio(r.params_ratio), _ratio(r.time_ratio), f"{r.median_a_ms:.3f}",
             f"{r.median_b_ms:.3f}", html.escape("; ".join(verdict(r)))] for r in tvp.itertuples()]
    body = html_table(["question", "device", "mode", "a", "b", "MACs a/b (theory)", "params a/b (theory)",
                       "time a/b (measured)", "a ms", "b ms", "in words"], rows, numeric={5, 6, 7, 8, 9})
    if changes is not None:
        crow = [[html.escape(r.question), html.escape(r.case), r.device, r.mode, f"{1e3 * r.median_s_old:.3f}",
                 f"{1e3 * r.median_s_new:.3f}",
                 f'<span class="{"worse" if r.change > 0 else "better"}">{r.change:+.1%}</span>' if r.flagged
                 else f"{r.change:+.1%}"] for r in changes.itertuples()]
        body += (f"<h2>Change vs the other run (flagged beyond &plusmn;{threshold:.0%})</h2>"
                 + html_table(["question", "case", "device", "mode", "before ms", "after ms", "change"], crow,
                              numeric={4, 5, 6}))
    title = f"cnnbench kernel benchmarks: {html.escape(meta['cpu'])}"
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>'
            "body{font:14px system-ui,sans-serif;margin:2rem;color:#1d2330}table{border-collapse:collapse}"
            "th,td{padding:.25rem .5rem;border-bottom:1px solid #e3e6ec;text-align:left}td.num{text-align:right}"
            ".worse{color:#c62828;font-weight:600}.better{color:#1a7f37;font-weight:600}</style></head><body>"
            f"<h1>{title}</h1><p>{html.escape(meta['file'])}, commit {html.escape(str(meta['commit'])[:10])}, "
            f"{html.escape(meta['datetime'])}. Ratios: how many times cheaper case b is than case a in theory, "
            f"and how many times faster it ran (median of a / median of b). MACs of forward+backward count "
            f"every conv's forward, input gradient and weight gradient.</p>{body}</body></html>")


def bench_report(path: str | Path, other: str | Path | None = None, threshold: float = 0.10,
                 html_out: str | Path | None = None) -> str:
    df, meta = load(path)
    changes = None
    if other is not None:
        new, new_meta = load(other)
        changes = compare(df, new, threshold)
        meta = {**new_meta, "file": f"{meta['file']} -> {new_meta['file']}"}
        df = new
    tvp = theory_vs_practice(df)
    if html_out:
        from cnnbench.io import atomic_path

        with atomic_path(html_out) as tmp:
            tmp.write_text(format_html(tvp, meta, changes, threshold), encoding="utf-8")
    return format_text(tvp, meta, changes, threshold)
