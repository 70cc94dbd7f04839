"""Statistics on synthetic tables with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from cnnbench.stats import compare, corrected_ttest, friedman, noise_floor, plain_ttest


def simulate_kfold_differences(rng, true_diff, sd, j, rho):
    """Paired differences of J resamples whose errors share correlation rho = n_test / n: the structure
    the Nadeau-Bengio correction assumes for overlapping training sets."""
    common = rng.normal(0, sd * np.sqrt(rho))
    return true_diff + common + rng.normal(0, sd * np.sqrt(1 - rho), size=j)


def test_corrected_ci_covers_the_true_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    j, n_train, n_test = 10, 4000, 1000  # 2 x 5-fold on 5,000 images
    rho = n_test / (n_train + n_test)
    true = 0.01
    hits_corrected = hits_plain = 0
    width_corrected, width_plain = [], []
    sims = 4000
    for _ in range(sims):
        d = simulate_kfold_differences(rng, true, 0.01, j, rho)
        c, p = corrected_ttest(d, n_train, n_test), plain_ttest(d)
        hits_corrected += c.ci_low <= true <= c.ci_high
        hits_plain += p.ci_low <= true <= p.ci_high
        width_corrected.append(c.ci_high - c.ci_low)
        width_plain.append(p.ci_high - p.ci_low)
    assert 0.93 <= hits_corrected / sims <= 0.97
    assert hits_plain / sims < 0.85  # the plain t-test is over-confident here
    assert np.mean(width_plain) < 0.6 * np.mean(width_corrected)


def test_corrected_ttest_formula():
    d = np.array([0.01, 0.02, 0.0, 0.015, 0.005])
    r = corrected_ttest(d, n_train=800, n_test=200)
    se = np.sqrt((1 / 5 + 200 / 800) * d.var(ddof=1))
    assert r.se == pytest.approx(se) and r.t == pytest.approx(d.mean() / se) and r.df == 4
    assert r.p == pytest.approx(2 * sps.t.sf(d.mean() / se, 4))
    plain = plain_ttest(d)
    assert plain.p == pytest.approx(sps.ttest_1samp(d, 0).pvalue)


def table(effects: dict[str, float], j=10, sd=0.004, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    base = 0.95 + rng.normal(0, 0.005, size=j)
    rows = []
    for v, eff in {"baseline": 0.0, **effects}.items():
        acc = base + eff + (rng.normal(0, sd, size=j) if v != "baseline" else 0)
        rows += [{"variant": v, "fold": f % 5, "seed": f // 5, "val_acc": a, "data_n_train": 4000,
                  "data_n_val": 1000} for f, a in enumerate(acc)]
    return pd.DataFrame(rows)


def test_compare_finds_known_effects_and_holm_adjusts():
    out = compare(table({"big_gain": 0.02, "big_loss": -0.03, "nothing": 0.0}), "baseline").set_index("variant")
    assert out.loc["big_gain", "verdict"] == "better" and out.loc["big_loss", "verdict"] == "worse"
    assert out.loc["nothing", "verdict"] == "no detectable difference"
    assert out.loc["big_gain", "diff"] == pytest.approx(0.02, abs=0.005)
    assert (out["p_holm"] >= out["p"]).all() and out.loc["nothing", "below_noise"]
    assert not out.loc["big_loss", "below_noise"]
    assert out["pairs"].eq(10).all()


def test_pairs_are_matched_on_fold_and_seed():
    t = table({"v": 0.01})
    shuffled = pd.concat([t[t.variant == "baseline"], t[t.variant == "v"].iloc[::-1]])
    assert compare(t, "baseline").iloc[0]["diff"] == pytest.approx(compare(shuffled, "baseline").iloc[0]["diff"])
    missing = shuffled.drop(shuffled[(shuffled.variant == "v") & (shuffled.fold == 0)].index)
    assert compare(missing, "baseline").iloc[0]["pairs"] == 8


def test_noise_floor_is_the_binomial_half_width():
    assert noise_floor(0.97, 1000) == pytest.approx(0.0107, abs=5e-4)
    assert noise_floor(0.97, 4000) < noise_floor(0.97, 1000)


def test_friedman_ranks_variants():
    r = friedman(table({"good": 0.02, "bad": -0.02, "same": 0.0}))
    assert list(r.mean_ranks.index)[0] == "good" and list(r.mean_ranks.index)[-1] == "bad"
    assert r.p < 0.01 and r.blocks == 10 and r.critical_difference > 0
    assert friedman(table({"only": 0.01})) is None  # needs 3 variants
