"""Statistics on synthetic data with known answers: coverage, false positives and power by simulation.

The simulations draw paired differences of J resamples from the correlated-fold model that the
Nadeau-Bengio correction assumes (correlation rho = n_test / n between any two resamples), and from
models where that assumption is off. The figures they measure are the ones the README states.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from cnnbench.stats import (
    compare,
    corrected_ttest,
    holm,
    mcnemar,
    mean_ranks,
    minimum_detectable,
    pairwise_differences,
    plain_ttest,
)

SIMS = 4000
J, N_TRAIN, N_TEST = 10, 4000, 1000  # 2 x 5-fold on 5,000 images
RHO = N_TEST / (N_TRAIN + N_TEST)  # what the correction assumes: 0.2


def kfold_differences(rng, true_diff, sd, shape, rho):
    """Differences (..., J) of J resamples whose errors share correlation rho."""
    common = rng.normal(0, sd * np.sqrt(rho), size=(*shape[:-1], 1))
    return true_diff + common + rng.normal(0, sd * np.sqrt(1 - rho), size=shape)


def coverage(rho, test=corrected_ttest, true=0.01, seed=0):
    d = kfold_differences(np.random.default_rng(seed), true, 0.01, (SIMS, J), rho)
    r = test(d, N_TRAIN, N_TEST) if test is corrected_ttest else test(d)
    return float(np.mean((r.ci_low <= true) & (true <= r.ci_high))), float(np.mean(r.ci_high - r.ci_low))


def test_coverage_when_the_correlation_is_what_the_correction_assumes():
    """Shows the formula is right where its assumption holds (rho = n_test / n), and that the plain
    t-test is over-confident there."""
    corrected, width_corrected = coverage(RHO)
    plain, width_plain = coverage(RHO, plain_ttest)
    assert 0.94 <= corrected <= 0.96  # measured: 0.954
    assert plain < 0.80  # measured: 0.746
    assert width_plain < 0.6 * width_corrected


@pytest.mark.parametrize("rho, low, high", [(0.35, 0.84, 0.89), (0.5, 0.74, 0.79)])
def test_coverage_falls_when_folds_are_more_correlated_than_assumed(rho, low, high):
    """Where training sets overlap more than n_test/n says (unstable learners), the corrected CI is
    too narrow: 95% nominal covers 87.8% at rho = 0.35 and 76.6% at rho = 0.5 (README, statistics)."""
    measured, _ = coverage(rho)
    assert low <= measured <= high


def test_averaging_seeds_within_a_fold_keeps_coverage():
    """5 seeds x 5 folds: seeds of one fold share its training set. Averaging them into one resample
    (J = 5) keeps coverage; counting them as 25 resamples does not (83-87% measured)."""
    rng = np.random.default_rng(1)
    folds, seeds, true, rho = 5, 5, 0.01, 0.2
    fold_part = kfold_differences(rng, true, 0.01, (SIMS, folds), rho)[..., None]  # shared by a fold's seeds
    d = fold_part + rng.normal(0, 0.004, size=(SIMS, folds, seeds))  # init/order noise of each seed
    n_train, n_test = 800, 200
    averaged = corrected_ttest(d.mean(-1), n_train, n_test)
    as_resamples = corrected_ttest(d.reshape(SIMS, folds * seeds), n_train, n_test)
    cover = lambda r: np.mean((r.ci_low <= true) & (true <= r.ci_high))  # noqa: E731
    assert cover(averaged) >= 0.93  # measured: 0.948
    assert cover(as_resamples) < 0.90  # measured: 0.862


def null_study(rng, variants, j=J, rho=RHO, sd=0.01, sims=SIMS):
    """(sims, variants, j) accuracies with no true difference: a resample effect shared by all
    variants, plus per-variant errors correlated across resamples (rho), as overlapping folds make them."""
    resample = rng.normal(0, 0.01, size=(sims, 1, j))
    own = kfold_differences(rng, 0.0, sd, (sims, variants, j), rho)
    return 0.95 + resample + own


def test_family_wise_false_positives_of_the_verdicts_under_correlated_folds():
    """Every significance claim the report makes is a verdict of one Holm family of corrected tests
    (variants vs their references). Under the null with correlated folds the family-wise rate of any
    false claim stays at the nominal 5%; Friedman over the same folds rejects about half the time,
    which is why the ranking is description only."""
    rng = np.random.default_rng(2)
    acc = null_study(rng, 5)
    p = corrected_ttest(acc[:, 1:] - acc[:, :1], N_TRAIN, N_TEST).p  # (sims, 4) vs the baseline
    any_claim = (holm(p) < 0.05).any(-1)
    assert any_claim.mean() <= 0.07  # measured: 0.042
    friedman = np.array([sps.friedmanchisquare(*a).pvalue < 0.05 for a in acc[:500]])
    assert friedman.mean() > 0.3  # measured: 0.47 (about half)


@pytest.mark.parametrize("rho, low, high", [(0.35, 0.12, 0.17), (0.5, 0.29, 0.36)])
def test_family_wise_false_positives_when_folds_are_more_correlated_than_assumed(rho, low, high):
    """The README's warning, measured (J = 10, 4 comparisons): at rho = 0.35 the family-wise rate is 14%,
    at 0.5 it is 32%. Nothing in a study can see this: the A/A control shares no training-set effect."""
    acc = null_study(np.random.default_rng(2), 5, rho=rho)
    p = corrected_ttest(acc[:, 1:] - acc[:, :1], N_TRAIN, N_TEST).p
    assert low <= (holm(p) < 0.05).any(-1).mean() <= high


def test_aa_control_false_alarm_rate_is_nominal():
    """The A/A control: two trainings of one network on the same training sets. Their fold differences
    carry no training-set effect, so they are independent across folds; the plain paired t-test the
    report uses for it flags them at the nominal rate. The corrected test would flag them almost never
    (0.2% at J = 10), which is why it is not used there."""
    d = np.random.default_rng(3).normal(0, 0.006, size=(SIMS, J))  # per-fold retraining noise only
    assert 0.04 <= np.mean(plain_ttest(d).p < 0.05) <= 0.06  # measured: 0.050
    assert np.mean(corrected_ttest(d, N_TRAIN, N_TEST).p < 0.05) < 0.01  # measured: 0.002


def test_compare_matches_the_vectorised_test_on_null_tables():
    """The pandas path (pairing, seed averaging, Holm) makes the same claims as the simulation above."""
    rng = np.random.default_rng(4)
    acc = null_study(rng, 3, sims=30)
    for study in acc:
        rows = [{"variant": f"v{v}", "fold": f, "seed": 0, "val_acc": a, "data_n_train": N_TRAIN,
                 "data_n_val": N_TEST} for v in range(3) for f, a in enumerate(study[v])]
        out = compare(pd.DataFrame(rows), "v0").set_index("variant")
        p = corrected_ttest(study[1:] - study[:1], N_TRAIN, N_TEST).p
        assert out["p"].to_numpy() == pytest.approx(p)
        assert out["p_holm"].to_numpy() == pytest.approx(holm(p))


def test_minimum_detectable_difference_has_the_stated_power():
    """A true difference equal to the stated MDE is detected ~80% of the time."""
    rng = np.random.default_rng(5)
    sd = 0.01
    se_true = sd * np.sqrt(RHO + (1 - RHO) / J)  # sd of the mean difference under the model
    mde = minimum_detectable(se_true, J - 1)
    d = kfold_differences(rng, mde, sd, (SIMS, J), RHO)
    power = np.mean(corrected_ttest(d, N_TRAIN, N_TEST).p < 0.05)
    assert 0.77 <= power <= 0.83
    assert minimum_detectable(se_true, J - 1, alpha=0.05 / 8) > mde  # Holm's first step needs more


def test_holm_equals_statsmodels():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(7)
    for m in (1, 2, 5, 9):
        p = rng.random((20, m)) ** 3
        expected = np.array([multipletests(row, method="holm")[1] for row in p])
        assert holm(p) == pytest.approx(expected)
    with_nan = holm(np.array([0.01, np.nan, 0.04]))
    assert np.isnan(with_nan[1]) and with_nan[[0, 2]] == pytest.approx(multipletests([0.01, 0.04], method="holm")[1])


def test_corrected_ttest_formula():
    d = np.array([0.01, 0.02, 0.0, 0.015, 0.005])
    r = corrected_ttest(d, n_train=800, n_test=200)
    se = np.sqrt((1 / 5 + 200 / 800) * d.var(ddof=1))
    assert r.se == pytest.approx(se) and r.t == pytest.approx(d.mean() / se) and r.df == 4
    assert r.p == pytest.approx(2 * sps.t.sf(d.mean() / se, 4))
    plain = plain_ttest(d)
    assert plain.p == pytest.approx(sps.ttest_1samp(d, 0).pvalue)
    assert corrected_ttest(np.zeros(4), 800, 200).p == 1.0 and np.isnan(corrected_ttest(np.ones(4), 800, 200).p)


def table(effects: dict[str, float], j=10, sd=0.004, seed=0, seeds=1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    base = 0.95 + rng.normal(0, 0.005, size=(j, seeds))
    rows = []
    for v, eff in {"baseline": 0.0, **effects}.items():
        acc = base + eff + (rng.normal(0, sd, size=(j, seeds)) if v != "baseline" else 0)
        rows += [{"variant": v, "fold": f, "seed": s, "val_acc": acc[f, s], "data_n_train": 4000,
                  "data_n_val": 1000} for f in range(j) for s in range(seeds)]
    return pd.DataFrame(rows)


def test_compare_finds_known_effects_and_holm_adjusts():
    out = compare(table({"big_gain": 0.02, "big_loss": -0.03, "nothing": 0.0}), "baseline").set_index("variant")
    assert out.loc["big_gain", "verdict"] == "better" and out.loc["big_loss", "verdict"] == "worse"
    assert out.loc["nothing", "verdict"] == "no detectable difference"
    assert out.loc["big_gain", "diff"] == pytest.approx(0.02, abs=0.005)
    assert (out["p_holm"] >= out["p"]).all()
    assert (out["mde"] > 0).all() and out.loc["nothing", "mde"] > abs(out.loc["nothing", "diff"])
    assert out["pairs"].eq(10).all() and out["resamples"].eq(10).all()


def test_means_are_over_the_paired_runs_only():
    t = table({"v": 0.01})
    t = t.drop(t[(t.variant == "v") & (t.fold < 3)].index)
    row = compare(t, "baseline").iloc[0]
    base = t[(t.variant == "baseline") & (t.fold >= 3)]["val_acc"].mean()
    assert row["baseline_mean"] == pytest.approx(base)
    assert row["variant_mean"] - row["baseline_mean"] == pytest.approx(row["diff"])


def test_seeds_are_averaged_into_one_resample_per_fold():
    t = table({"v": 0.01}, j=5, seeds=4)
    row = compare(t, "baseline").iloc[0]
    assert row["pairs"] == 20 and row["resamples"] == 5 and row["df"] == 4 and row["seeds_per_resample"] == 4
    wide = t.pivot_table(index=["fold", "seed"], columns="variant", values="val_acc")
    per_fold = (wide["v"] - wide["baseline"]).groupby("fold").mean().to_numpy()
    assert row["p"] == pytest.approx(corrected_ttest(per_fold, 4000, 1000).p)
    within = (wide["v"] - wide["baseline"]).groupby("fold").var().mean()
    assert row["seed_sd"] == pytest.approx(np.sqrt(within))


def test_pairs_are_matched_on_fold_and_seed():
    t = table({"v": 0.01})
    shuffled = pd.concat([t[t.variant == "baseline"], t[t.variant == "v"].iloc[::-1]])
    assert compare(t, "baseline").iloc[0]["diff"] == pytest.approx(compare(shuffled, "baseline").iloc[0]["diff"])
    missing = shuffled.drop(shuffled[(shuffled.variant == "v") & (shuffled.fold == 0)].index)
    assert compare(missing, "baseline").iloc[0]["pairs"] == 9


def test_a_variant_can_name_its_own_reference():
    t = table({"a": 0.02, "b": 0.025})
    out = compare(t, "baseline", references={"b": "a"}).set_index("variant")
    assert out.loc["b", "reference"] == "a" and out.loc["b", "diff"] == pytest.approx(0.005, abs=0.004)
    assert out.loc["a", "reference"] == "baseline"


def test_mean_ranks_are_description_and_pairwise_differences_antisymmetric():
    t = table({"good": 0.02, "bad": -0.02, "same": 0.0})
    ranks = mean_ranks(t)
    assert list(ranks.index)[0] == "good" and list(ranks.index)[-1] == "bad"
    assert ranks.sum() == pytest.approx(10)  # 1 + 2 + 3 + 4 per resample, averaged
    assert mean_ranks(table({"only": 0.01})) is None  # needs 3 variants
    as_loss = t.assign(train_loss=t["val_acc"])  # lower is better (cnnbench.metrics): the order reverses
    reversed_ranks = mean_ranks(as_loss, "train_loss")
    assert reversed_ranks.index[0] == "bad" and (reversed_ranks + ranks).to_numpy() == pytest.approx([5] * 4)
    diffs = pairwise_differences(t, ["baseline", "good", "bad"])
    assert diffs.loc["baseline", "good"] == pytest.approx(-diffs.loc["good", "baseline"])
    assert diffs.loc["bad", "good"] == pytest.approx(0.04, abs=0.005)


def test_mcnemar_counts_and_exact_p():
    base = np.array([1, 1, 1, 0, 0, 1, 1, 1, 1, 1], bool)
    var = np.array([1, 0, 0, 1, 0, 1, 1, 1, 0, 1], bool)
    r = mcnemar(base, var)
    assert (r["only_baseline_right"], r["only_variant_right"], r["n"]) == (3, 1, 10)
    assert r["flip_rate"] == pytest.approx(0.4)
    assert r["p"] == pytest.approx(sps.binomtest(3, 4, 0.5).pvalue)
    assert mcnemar(base, base)["p"] == 1.0


def test_mcnemar_false_positive_rate_under_the_null():
    """Two models with the same error rate, errors correlated across images: exact McNemar rejects at
    most at the nominal rate (it is conservative)."""
    rng = np.random.default_rng(6)
    n, sims = 1000, 2000
    hard = rng.random((sims, n)) < 0.05  # images both tend to get wrong
    base = ~(hard & (rng.random((sims, n)) < 0.8)) & (rng.random((sims, n)) > 0.02)
    var = ~(hard & (rng.random((sims, n)) < 0.8)) & (rng.random((sims, n)) > 0.02)
    rate = np.mean([mcnemar(b, v)["p"] < 0.05 for b, v in zip(base, var)])
    assert rate <= 0.06


def test_the_same_difference_in_every_pair_is_untestable_not_better():
    """A trial: +4 of 539 validation images on all 3 folds read '+0.74 pts [+0.74, +0.74], p Holm = 1.6e-10
    -> better' from three numbers with no variance. No interval, no p, no verdict; all-zero stays p = 1."""
    step = 4 / 539
    r = corrected_ttest(np.array([step, step, step]), 1078, 539)
    assert r.mean == pytest.approx(step) and np.isnan(r.p) and np.isnan(r.ci_low) and np.isnan(r.ci_high)
    assert corrected_ttest(np.zeros(3), 1078, 539).p == 1.0
    folds = [0, 1, 2]
    runs = pd.DataFrame({"variant": ["base"] * 3 + ["v"] * 3, "fold": folds * 2, "seed": 0,
                         "val_acc": [0.90, 0.92, 0.91] + [0.90 + step, 0.92 + step, 0.91 + step],
                         "status": "ok", "data_n_train": 1078, "data_n_val": 539})
    row = compare(runs, "base").iloc[0]
    assert row["verdict"] == "no detectable difference" and np.isnan(row["p_holm"]), row.to_dict()
