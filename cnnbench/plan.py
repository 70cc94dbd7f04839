"""`cnnbench plan results/<study>`: how many runs a study needs to detect a given difference.

From a finished (pilot) study, per comparison: the variance of the per-fold difference splits into a
fold part and a seed part (seeds of one fold share its training set), and the corrected test's standard
error for k folds, r repeats and s seeds is

    se^2 = (1 / (r k) + 1 / (k - 1)) (sigma_fold^2 + sigma_seed^2 / s)

(Nadeau-Bengio: n_test / n_train = 1 / (k - 1)). More repeats shrink only the first term: with k folds
the error never falls below sqrt(1 / (k - 1)) sigma, so past that point only more seeds (when seed noise
is part of sigma) or more data help. The minimum detectable difference (80% power) is taken at Holm's
strictest level alpha / m, as in the report.

Two limits, stated in the output too: the variances are the pilot's estimates, so a design planned for
80% reaches less on average (simulated: ~74% from a 10-resample pilot, ~68% from a 5-resample one);
and other fold counts (`--folds`) keep sigma fixed, although a fold's difference includes validation
noise that grows with k (n_val = n / k), so they overstate what more folds buy. By default only the
pilot's k is planned.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cnnbench.config import AA_CONTROL
from cnnbench.errors import CnnbenchError
from cnnbench.io import read_json
from cnnbench.stats import compare, minimum_detectable, resample_differences

MAX_REPEATS, MAX_SEEDS = 20, 10


@dataclass(frozen=True)
class Variance:
    fold: float  # variance of a fold's difference beyond seed noise
    seed: float  # variance between seeds of one fold (0 when the pilot had one seed: not measured)
    seeds_measured: bool


def variance_components(runs: pd.DataFrame, a: str, b: str, metric: str = "val_acc") -> Variance:
    r = resample_differences(runs, a, b, metric)
    seeds = r["seeds"].mean()
    within = r["diff_var"].dropna()
    seed_var = float(np.average(within, weights=r.loc[within.index, "seeds"] - 1)) if len(within) else 0.0
    fold_var = max(float(r["diff"].var(ddof=1)) - seed_var / seeds, 0.0)
    return Variance(fold_var, seed_var, bool(len(within)))


def design_mde(v: Variance, folds: int, repeats: int, seeds: int, alpha: float) -> float:
    se = np.sqrt((1 / (repeats * folds) + 1 / (folds - 1)) * (v.fold + v.seed / seeds))
    return minimum_detectable(float(se), repeats * folds - 1, alpha)


def cheapest_design(v: Variance, delta: float, folds_options: list[int], alpha: float) -> dict | None:
    """Fewest runs per variant (folds x repeats x seeds) whose MDE is at most `delta`."""
    best = None
    for k, r, s in itertools.product(folds_options, range(1, MAX_REPEATS + 1), range(1, MAX_SEEDS + 1)):
        if s > 1 and not v.seeds_measured:
            continue  # the pilot cannot tell what extra seeds buy
        runs = k * r * s
        if best is not None and runs >= best["runs"]:
            continue
        if design_mde(v, k, r, s, alpha) <= delta:
            best = {"folds": k, "repeats": r, "seeds": s, "runs": runs}
    return best


def plan(results_dir: str | Path, deltas: list[float], folds_options: list[int] | None = None,
         alpha: float = 0.05) -> pd.DataFrame:
    """One row per comparison and target difference (in accuracy, a fraction)."""
    results_dir = Path(results_dir)
    if results_dir.is_file():
        raise CnnbenchError(f"{results_dir}: a file, but cnnbench plan reads the results folder of a finished study "
                            f"(results/<study>: its runs.parquet and study.json){_results_of(results_dir)}")
    runs_path, study_path = results_dir / "runs.parquet", results_dir / "study.json"
    for path in (runs_path, study_path):
        if not path.exists():
            raise CnnbenchError(f"{path}: not found; run the study first (snakemake --cores all)")
    runs = pd.read_parquet(runs_path)
    study = read_json(study_path)
    baseline, references = study["baseline"], study.get("references", {})
    variants = [v for v in runs.variant.unique() if v not in (baseline, AA_CONTROL)]
    cmp = compare(runs, baseline, variants=variants, references=references).set_index("variant")
    k_pilot = int(round(1 + runs["data_n_train"].mean() / runs["data_n_val"].mean()))
    folds_options = sorted(set(folds_options or []) | {k_pilot})
    m = max(1, len(cmp))
    rows = []
    for v, c in cmp.iterrows():
        comp = variance_components(runs, c["reference"], v)
        for delta in deltas:
            best = cheapest_design(comp, delta, folds_options, alpha / m)
            rows.append({"variant": v, "reference": c["reference"], "diff": c["diff"], "mde_now": c["mde"],
                         "resamples_now": int(c["resamples"]), "target": delta,
                         **(best or {"folds": None, "repeats": None, "seeds": None, "runs": None}),
                         "seed_variance_measured": comp.seeds_measured,
                         "folds_considered": ",".join(map(str, folds_options))})  # for the advice on more folds
    return pd.DataFrame(rows)


def _results_of(config: Path) -> str:
    """Where a config's results go, when the file is one (a user's natural first guess at plan's argument)."""
    try:
        from cnnbench.config import read_config

        name = read_config(config).get("study")
    except Exception:  # not a readable config either: the folder hint stands alone
        return ""
    return f"; for this config: cnnbench plan results/{name}" if isinstance(name, str) else ""


def format_plan(df: pd.DataFrame) -> str:
    if df.empty:
        return "no comparisons to plan (the study has only its baseline)"
    lines = ["comparison                        Δ now    detectable now   target   cheapest design (runs per variant)"]
    for r in df.itertuples():
        name = f"{r.variant} vs {r.reference}"
        # a column mixing designs and None is float with NaN in pandas: whole numbers, and NaN is "none"
        seeds = f"{MAX_SEEDS} seeds" if r.seed_variance_measured else "1 seed"  # what was searched
        design = (f"{int(r.folds)} folds x {int(r.repeats)} repeats x {int(r.seeds)} seeds = {int(r.runs)} runs"
                  if pd.notna(r.runs) else
                  f"not within {MAX_REPEATS} repeats x {seeds}: below the correction's floor for these folds")
        now = ("   n/a" if pd.isna(r.mde_now)  # no spread in the pilot's differences (se 0): nothing to scale
               else f"{100 * r.mde_now:6.2f}" if r.mde_now <= 1 else "  >100")  # more than accuracy can differ by
        lines.append(f"{name:32s} {100 * r.diff:+6.2f}   {now} pts (J={r.resamples_now:<3d})  "
                     f"{100 * r.target:5.2f}    {design}")
    if (df["resamples_now"] < 5).any():
        lines.append(f"(a pilot of {int(df['resamples_now'].min())} paired resamples leaves its variance estimate so "
                     "few degrees of freedom that the corrected t test can detect little yet; a pilot with at least "
                     "5 folds x repeats plans far better)")
    if df["runs"].isna().any():
        considered = [int(k) for k in str(df["folds_considered"].iloc[0]).split(",")]
        top = max(considered)
        lines.append(f"(where no design reaches the target at {', '.join(map(str, considered))} folds, more folds "
                     f"lower the correction's floor: add fold counts to consider, e.g. --folds {2 * top} {4 * top}; "
                     "optimistic, see README, statistics)")
    if not df["seed_variance_measured"].all():
        lines.append("(one seed per fold in the pilot: its seed-to-seed variance is unknown, so only designs with "
                     "one seed are proposed)")
    lines.append("Differences in accuracy points; detectable = 80% power at Holm's strictest level over the "
                 "study's comparisons, with the pilot's variances taken as true: a design planned from a "
                 "10-resample pilot reaches ~74% power on average (simulated), so add a margin. Fold counts "
                 "other than the pilot's are optimistic (README, statistics).")
    return "\n".join(lines)
