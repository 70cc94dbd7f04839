"""Paired comparisons of variants, their power, and per-example tests.

Runs of two variants on the same fold and seed are paired. Seeds of one (repeat, fold) share its
training set, so they are averaged into one resample first: J = repeats x folds resamples, not
J x seeds (counting seeds as extra resamples made the 95% CI cover only 83-87% of the time with 5 seeds
x 5 folds). k-fold training sets overlap, so the J differences are correlated and a plain paired t-test
is over-confident. The Nadeau-Bengio corrected resampled t-test (Nadeau & Bengio 2003; Bouckaert &
Frank 2004) inflates the variance of the mean difference from sigma^2/J to (1/J + n_test/n_train)
sigma^2. p-values are Holm-adjusted within a family of comparisons (statsmodels).

Demsar's Friedman/Nemenyi ranking assumes independent data sets; over correlated folds it rejected a
true null in about half of the simulations at a nominal 5% (47-49%, tests/test_stats.py). Ranks are
therefore description only; the significance claims are the verdicts of one Holm family.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats

PAIR_KEYS = ["fold", "seed"]  # a run's pairing key; the resample is the fold (repeat x fold id)


def usable(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs that count in the statistics: diverged runs (status 'diverged') are left out, visibly (the
    report lists them), never averaged in."""
    return runs[runs["status"] != "diverged"] if "status" in runs else runs
POWER = 0.80


@dataclass(frozen=True)
class TTest:
    """Floats for one comparison; arrays of the leading shape when given (..., J) differences."""

    mean: float  # mean paired difference
    ci_low: float
    ci_high: float
    t: float
    p: float
    df: int
    se: float


def corrected_ttest(diffs: np.ndarray, n_train: float, n_test: float, alpha: float = 0.05) -> TTest:
    """Nadeau-Bengio corrected resampled t-test of paired differences over J train/test resamples (the
    last axis: simulations pass many comparisons at once)."""
    d = np.asarray(diffs, dtype=float)
    return _ttest(d, 1.0 / d.shape[-1] + n_test / n_train, alpha)


def plain_ttest(diffs: np.ndarray, alpha: float = 0.05) -> TTest:
    """The ordinary paired t-test, which treats the resamples as independent (too narrow for k-fold)."""
    d = np.asarray(diffs, dtype=float)
    return _ttest(d, 1.0 / d.shape[-1], alpha)


def _ttest(d: np.ndarray, factor: float, alpha: float) -> TTest:
    j = d.shape[-1]
    if j < 2:
        nan = np.full(d.shape[:-1], np.nan)
        return _scalar(TTest(d.mean(-1) if j else nan, nan, nan, nan, nan, 0, nan))
    mean = d.mean(-1)
    se = np.sqrt(factor * d.var(-1, ddof=1))
    df = j - 1
    # The same nonzero difference in every pair (accuracy moves in steps of 1/n, so with J = 3 it happens:
    # +4 of 539 images on all 3 folds) has no variance to test against: it was p = 0 and 'better' from
    # three numbers. It is untestable, as J < 2 is: no interval, no p, no verdict (NaN: left out of Holm's
    # family like J < 2). All-zero differences stay p = 1.
    untestable = (se == 0) & (mean != 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, mean / se, np.where(untestable, np.nan, 0.0))
    p = 2 * stats.t.sf(np.abs(t), df)
    half = np.where(untestable, np.nan, stats.t.ppf(1 - alpha / 2, df) * se)
    return _scalar(TTest(mean, mean - half, mean + half, t, p, df, se))


def _scalar(t: TTest) -> TTest:
    """Plain floats for a single comparison."""
    if np.ndim(t.mean) == 0:
        return TTest(*(float(v) for v in (t.mean, t.ci_low, t.ci_high, t.t, t.p)), int(t.df), float(t.se))
    return t


def minimum_detectable(se: float, df: int, alpha: float = 0.05, power: float = POWER) -> float:
    """Smallest |true difference| that a two-sided t-test with this standard error and df detects with
    probability `power` (noncentral t), at level `alpha`."""
    if not (np.isfinite(se) and df >= 1) or se == 0:
        return float("nan")
    crit = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(delta: float) -> float:
        nc = delta / se
        wrong_side = stats.nct.cdf(-crit, df, nc)  # ~0, and NaN in scipy's far tail
        return stats.nct.sf(crit, df, nc) + np.nan_to_num(wrong_side) - power

    high = se * (crit + 5)
    while shortfall(high) < 0:  # few df: heavy tails need a much larger effect
        high *= 2
        if high > 1e6 * se:
            return float("inf")
    return float(optimize.brentq(shortfall, 0.0, high))


# --- pairing ---------------------------------------------------------------------------------------

def resample_differences(runs: pd.DataFrame, a: str, b: str, metric: str) -> pd.DataFrame:
    """Per resample (fold id): mean over the shared seeds of `b - a`, the two means, the number of seeds,
    the training and validation sizes. Only runs both variants have on the same (fold, seed) count;
    diverged runs do not."""
    runs = usable(runs)
    left = runs.loc[runs.variant == a, [*PAIR_KEYS, metric, "data_n_train", "data_n_val"]]
    right = runs.loc[runs.variant == b, [*PAIR_KEYS, metric]]
    pairs = left.merge(right, on=PAIR_KEYS, suffixes=("_a", "_b")).dropna(subset=[f"{metric}_a", f"{metric}_b"])
    pairs["diff"] = pairs[f"{metric}_b"] - pairs[f"{metric}_a"]
    return pairs.groupby("fold").agg(diff=("diff", "mean"), a=(f"{metric}_a", "mean"), b=(f"{metric}_b", "mean"),
                                     seeds=("seed", "size"), diff_var=("diff", "var"),
                                     n_train=("data_n_train", "mean"), n_val=("data_n_val", "mean"))


@dataclass(frozen=True)
class Comparison:
    a: str  # the reference (baseline)
    b: str  # the variant; differences are b - a
    runs: int  # paired runs
    resamples: int  # J: folds x repeats with at least one paired seed
    seeds: float  # mean paired seeds per resample
    a_mean: float  # over the paired runs only, so that b_mean - a_mean = diff
    b_mean: float
    test: TTest
    seed_sd: float  # sd of the difference between seeds of one resample (nan with one seed)


def compare_pair(runs: pd.DataFrame, a: str, b: str, metric: str, alpha: float = 0.05,
                 corrected: bool = True) -> Comparison | None:
    """`b - a` over the resamples; `corrected=False` for two trainings of the same network (the A/A
    control), whose fold differences share no training-set effect and are independent."""
    r = resample_differences(runs, a, b, metric)
    if r.empty:
        return None
    d = r["diff"].to_numpy()
    test = corrected_ttest(d, r["n_train"].mean(), r["n_val"].mean(), alpha) if corrected else plain_ttest(d, alpha)
    within = r["diff_var"].dropna()
    seed_sd = float(np.sqrt(np.average(within, weights=r.loc[within.index, "seeds"] - 1))) if len(within) else np.nan
    return Comparison(a, b, int(r["seeds"].sum()), len(r), float(r["seeds"].mean()), float(r["a"].mean()),
                      float(r["b"].mean()), test, seed_sd)


COLUMNS = ["variant", "reference", "pairs", "resamples", "seeds_per_resample", "baseline_mean", "variant_mean",
           "diff", "ci_low", "ci_high", "t", "df", "p", "se", "seed_sd"]


def _row(c: Comparison) -> dict:
    t = c.test
    return {"variant": c.b, "reference": c.a, "pairs": c.runs, "resamples": c.resamples,
            "seeds_per_resample": c.seeds, "baseline_mean": c.a_mean, "variant_mean": c.b_mean, "diff": t.mean,
            "ci_low": t.ci_low, "ci_high": t.ci_high, "t": t.t, "df": t.df, "p": t.p, "se": t.se,
            "seed_sd": c.seed_sd}


def holm(p) -> np.ndarray:
    """Holm-adjusted p-values over the last axis; NaN stays NaN and is not counted in the family.

    Written out (and tested equal to statsmodels' `multipletests(method="holm")`) because that function
    runs `gc.collect()` on every call: 26 ms here, 100 s for a simulation of 4,000 families."""
    p = np.asarray(p, dtype=float)
    valid = np.isfinite(p)
    m = valid.sum(-1, keepdims=True)
    order = np.argsort(np.where(valid, p, np.inf), axis=-1, kind="stable")
    ranked = np.take_along_axis(p, order, -1)
    steps = np.clip((m - np.arange(p.shape[-1])) * ranked, None, 1.0)
    adjusted = np.maximum.accumulate(np.nan_to_num(steps, nan=-np.inf), axis=-1)
    out = np.empty_like(p)
    np.put_along_axis(out, order, adjusted, -1)
    return np.where(valid, out, np.nan)


def _finish(out: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Holm over the family, verdicts, and the minimum detectable difference of each comparison at the
    level Holm's first step uses (alpha / m): a lone real effect among m comparisons must reach it."""
    out["p_holm"] = holm(out["p"].to_numpy())
    out["verdict"] = [verdict(d, p, alpha) for d, p in zip(out["diff"], out["p_holm"])]
    m = max(1, int(out["p"].notna().sum()))
    out["mde"] = [minimum_detectable(se, int(df), alpha / m) for se, df in zip(out["se"], out["df"])]
    return out


def compare(runs: pd.DataFrame, baseline: str, metric: str = "val_acc", alpha: float = 0.05,
            variants: list[str] | None = None, references: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per variant other than the baseline: paired mean difference of `metric` (variant minus
    its reference: `references[variant]`, else the baseline) over J resamples, its corrected 95% CI and
    p-value, the Holm-adjusted p-value over all these comparisons (one family: every claim the report
    makes), a verdict, and the minimum difference detectable with 80% power."""
    variants = variants if variants is not None else [v for v in runs.variant.unique() if v != baseline]
    references = references or {}
    rows = [_row(c) for v in variants if v != baseline
            and (c := compare_pair(runs, references.get(v, baseline), v, metric, alpha))]
    return _finish(pd.DataFrame(rows, columns=COLUMNS), alpha)


def pairwise_differences(runs: pd.DataFrame, variants: list[str], metric: str = "val_acc") -> pd.DataFrame:
    """Mean paired difference (column minus row) for every pair: a description, not a test."""
    out = pd.DataFrame(np.nan, index=variants, columns=variants)
    for a, b in itertools.product(variants, repeat=2):
        if a != b:
            r = resample_differences(runs, a, b, metric)
            out.loc[a, b] = r["diff"].mean() if len(r) else np.nan
    return out


def verdict(diff: float, p_adjusted: float, alpha: float = 0.05) -> str:
    if not np.isfinite(p_adjusted) or p_adjusted >= alpha:
        return "no detectable difference"
    return "better" if diff > 0 else "worse"


def mean_ranks(runs: pd.DataFrame, metric: str = "val_acc") -> pd.Series | None:
    """Mean rank of each variant over the resamples every variant has (1 = best, in the direction
    cnnbench.metrics says is better): description only."""
    from cnnbench.metrics import METRICS

    m = METRICS[metric]
    per_resample = usable(runs).groupby(["fold", "variant"])[m.column].mean().unstack("variant").dropna()
    if per_resample.shape[1] < 3 or per_resample.empty:
        return None
    ranks = (-per_resample if m.higher_is_better else per_resample).rank(axis=1, method="average")
    return ranks.mean().sort_values()


# --- per-example -----------------------------------------------------------------------------------

def mcnemar(base_correct: np.ndarray, variant_correct: np.ndarray) -> dict:
    """Exact McNemar test on one validation fold: are the two trained models' error rates on these
    images different? Counts only the discordant images (one right, the other wrong)."""
    base_correct, variant_correct = np.asarray(base_correct, bool), np.asarray(variant_correct, bool)
    only_base = int((base_correct & ~variant_correct).sum())
    only_variant = int((~base_correct & variant_correct).sum())
    flips = only_base + only_variant
    p = float(stats.binomtest(only_base, flips, 0.5).pvalue) if flips else 1.0
    return {"n": int(len(base_correct)), "only_baseline_right": only_base, "only_variant_right": only_variant,
            "flip_rate": flips / max(1, len(base_correct)), "p": p}
