"""Paired comparisons of variants with a baseline, and a ranking across all variants.

Runs of two variants on the same fold and seed are paired. k-fold training sets overlap, so the
differences of the J resamples are correlated and a plain paired t-test is over-confident. The
Nadeau-Bengio corrected resampled t-test (Nadeau & Bengio 2003; Bouckaert & Frank 2004) inflates the
variance of the mean difference from sigma^2/J to (1/J + n_test/n_train) sigma^2. p-values are
Holm-adjusted across the study's variants (statsmodels); the ranking uses scipy's Friedman test and
the Nemenyi critical difference (Demsar 2006).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

PAIR_KEYS = ["fold", "seed"]


@dataclass(frozen=True)
class TTest:
    mean: float  # mean paired difference
    ci_low: float
    ci_high: float
    t: float
    p: float
    df: int
    se: float


def corrected_ttest(diffs: np.ndarray, n_train: float, n_test: float, alpha: float = 0.05) -> TTest:
    """Nadeau-Bengio corrected resampled t-test of paired differences over J train/test resamples."""
    return _ttest(np.asarray(diffs, dtype=float), 1.0 / len(diffs) + n_test / n_train, alpha)


def plain_ttest(diffs: np.ndarray, alpha: float = 0.05) -> TTest:
    """The ordinary paired t-test, which treats the resamples as independent (too narrow for k-fold)."""
    return _ttest(np.asarray(diffs, dtype=float), 1.0 / len(diffs), alpha)


def _ttest(d: np.ndarray, factor: float, alpha: float) -> TTest:
    j = len(d)
    mean = float(d.mean())
    if j < 2:
        return TTest(mean, float("nan"), float("nan"), float("nan"), float("nan"), 0, float("nan"))
    se = float(np.sqrt(factor * d.var(ddof=1)))
    df = j - 1
    if se == 0:  # identical differences in every pair
        p = 1.0 if mean == 0 else 0.0
        return TTest(mean, mean, mean, float("inf") if mean else 0.0, p, df, se)
    t = mean / se
    half = float(stats.t.ppf(1 - alpha / 2, df)) * se
    return TTest(mean, mean - half, mean + half, t, float(2 * stats.t.sf(abs(t), df)), df, se)


def noise_floor(accuracy: float, n: int, alpha: float = 0.05) -> float:
    """Half-width of the (Wilson) binomial CI of one fold's accuracy: differences smaller than this
    are within what measuring on n validation images can resolve."""
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(round(accuracy * n), n, alpha=alpha, method="wilson")
    return float((high - low) / 2)


def paired(runs: pd.DataFrame, baseline: str, variant: str, metric: str) -> pd.DataFrame:
    """Baseline and variant values of `metric` on the runs both have (same fold and seed)."""
    a = runs.loc[runs.variant == baseline, [*PAIR_KEYS, metric, "data_n_train", "data_n_val"]]
    b = runs.loc[runs.variant == variant, [*PAIR_KEYS, metric]]
    return a.merge(b, on=PAIR_KEYS, suffixes=("_base", "_variant"))


def compare(runs: pd.DataFrame, baseline: str, metric: str = "val_acc", alpha: float = 0.05) -> pd.DataFrame:
    """One row per non-baseline variant: paired mean difference of `metric` (variant - baseline), its
    corrected 95% CI and p-value, the Holm-adjusted p-value, a verdict, and the noise-floor flag."""
    from statsmodels.stats.multitest import multipletests

    base_mean = runs.loc[runs.variant == baseline, metric].mean()
    rows = []
    for variant in [v for v in runs.variant.unique() if v != baseline]:
        pairs = paired(runs, baseline, variant, metric)
        if pairs.empty:
            continue
        d = pairs[f"{metric}_variant"] - pairs[f"{metric}_base"]
        n_train, n_val = pairs["data_n_train"].mean(), pairs["data_n_val"].mean()
        test = corrected_ttest(d.to_numpy(), n_train, n_val, alpha)
        rows.append({"variant": variant, "pairs": len(d), "baseline_mean": base_mean,
                     "variant_mean": pairs[f"{metric}_variant"].mean(), "diff": test.mean,
                     "ci_low": test.ci_low, "ci_high": test.ci_high, "t": test.t, "df": test.df, "p": test.p,
                     "noise_floor": noise_floor(base_mean, int(round(n_val))) if metric.endswith("acc") else np.nan})
    out = pd.DataFrame(rows, columns=["variant", "pairs", "baseline_mean", "variant_mean", "diff", "ci_low",
                                      "ci_high", "t", "df", "p", "noise_floor"])
    valid = out["p"].notna()
    out["p_holm"] = np.nan
    if valid.any():
        out.loc[valid, "p_holm"] = multipletests(out.loc[valid, "p"], alpha=alpha, method="holm")[1]
    out["verdict"] = [verdict(d, p, alpha) for d, p in zip(out["diff"], out["p_holm"])]
    out["below_noise"] = out["diff"].abs() < out["noise_floor"]
    return out


def verdict(diff: float, p_adjusted: float, alpha: float = 0.05) -> str:
    if not np.isfinite(p_adjusted) or p_adjusted >= alpha:
        return "no detectable difference"
    return "better" if diff > 0 else "worse"


@dataclass(frozen=True)
class Ranking:
    mean_ranks: pd.Series  # variant -> mean rank over blocks (1 = best)
    statistic: float
    p: float
    blocks: int
    critical_difference: float  # Nemenyi, alpha = 0.05


def friedman(runs: pd.DataFrame, metric: str = "val_acc", higher_is_better: bool = True) -> Ranking | None:
    """Friedman test over blocks (fold, seed) that every variant has; None with fewer than 3 variants."""
    wide = runs.pivot_table(index=PAIR_KEYS, columns="variant", values=metric).dropna()
    k, n = wide.shape[1], wide.shape[0]
    if k < 3 or n < 2:
        return None
    ranks = (-wide if higher_is_better else wide).rank(axis=1, method="average")
    statistic, p = stats.friedmanchisquare(*[wide[c] for c in wide.columns])
    q = stats.studentized_range.ppf(0.95, k, np.inf) / np.sqrt(2)
    cd = float(q * np.sqrt(k * (k + 1) / (6 * n)))
    return Ranking(ranks.mean().sort_values(), float(statistic), float(p), n, cd)
