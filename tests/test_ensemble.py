"""Ensembles of fold models: exact answers on hand-made probabilities, and the bootstrap intervals'
coverage and false positives by simulation.

The simulations build a finite population of test images from a generative model (an image difficulty
and class noise every model shares, plus each model's own noise, which averaging removes) and score
fixed "trained models" on it. The population gain is then exact (computed on the whole population), and
test sets of n images are drawn from it with replacement, which is what the interval claims to cover:
test-image sampling given the models.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from cnnbench.ensemble import (
    ensemble_table,
    gain_difference_interval,
    gain_interval,
    labels_fingerprint,
    per_image_gain,
)
from cnnbench.io import strict

C, GROUPS, K = 10, 2, 5  # 10 classes, 2 ensembles (e.g. 2 seeds) of 5 fold models per variant
SIMS, N_TEST, SIM_RESAMPLES = 300, 300, 999  # 999 resamples in the simulations: 10x faster than 9,999


def population(rng, n, variants=1, own=0.5, mu=3.0):
    """Labels (n,) and float32 probabilities (variants, GROUPS, K, n, C). The true class gets a margin
    `mu` minus the image's difficulty; all models share the image's class noise (they confuse the same
    classes) and add their own noise of sd `own` (one per variant, or one for all), which is what the
    ensemble averages away. own=0.5: single accuracy 0.794, ensemble 0.828, gain 0.034 (a third of the
    images have a non-zero per-image gain); own=0.3: 0.822, 0.834, gain 0.012 (a fifth)."""
    y = rng.integers(0, C, n)
    own = np.broadcast_to(np.asarray(own, dtype=float), (variants,)).reshape(-1, 1, 1, 1, 1)
    logits = rng.normal(0, 1, (n, C)) + own * rng.normal(0, 1, (variants, GROUPS, K, n, C))
    logits[..., np.arange(n), y] += mu - rng.normal(0, 1, n)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return y, (p / p.sum(-1, keepdims=True)).astype(np.float32)


def table(p, y, idx=slice(None)):
    """ensemble_table of one variant's (GROUPS, K, n, C) probabilities on the images `idx`; run ids are
    (seed, fold) and an ensemble is one seed's folds."""
    runs = {(g, m): p[g, m][idx] for g in range(p.shape[0]) for m in range(p.shape[1])}
    return ensemble_table(runs, y[idx], lambda run: run[0])


# --- exact answers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_ensemble_of_identical_models_is_the_model(dtype):
    """Averaging k copies of one model changes no prediction, not even a tie: gain exactly 0, and an
    interval of [0, 0] (the test images add no variance when every image gains the same)."""
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(C) * 0.3, size=400)
    p[:20] = [0.375, 0.375] + [0.03125] * (C - 2)  # 20 exact ties for the top, between classes 0 and 1
    p = p.astype(dtype)
    y = rng.integers(0, C, 400)
    t = ensemble_table({(fold, 0): p for fold in range(5)}, y, lambda run: run[1])
    single = float(np.mean(p.astype(np.float64).argmax(1) == y))
    row = t.iloc[0]
    assert len(t) == 1 and row["models"] == 5
    assert row["ensemble_acc"] == single and row["single_acc"] == single and row["gain"] == 0.0
    assert row["member_acc"] == [single] * 5
    assert np.array_equal(row["ensemble_correct"], p.astype(np.float64).argmax(1) == y)
    assert row["ties"] >= 20
    r = gain_interval(t)
    assert (r["gain"], r["ci_low"], r["ci_high"]) == (0.0, 0.0, 0.0)


# class-1 probabilities of 3 models on 4 images (class 0 gets the rest); binary fractions, exact in float16
HAND = np.array([[0.75, 0.375, 0.5, 0.25],    # model a
                 [0.75, 0.375, 0.25, 0.75],   # model b
                 [0.25, 1.0, 0.75, 0.75]])    # model c
HAND_Y = np.array([1, 1, 0, 0])


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_hand_computed_soft_vote_with_a_tie(dtype):
    """Mean class-1 probability: 0.583, 0.583, 0.5, 0.583 -> ensemble predicts 1, 1, 0, 1.
    Image 1 is where soft voting differs from majority voting (a and b lean weakly to 0, c is sure of 1:
    the majority says 0, the mean says 1). Image 2 is an exact tie (mean 0.5 each): argmax takes the first
    maximum, class 0, which is right; model a alone also ties there and also predicts 0.
    Members: a predicts 1,0,0,0 (right on 0,2,3: 0.75), b 1,0,0,1 (0.5), c 0,1,1,1 (0.25); mean 0.5.
    Ensemble right on images 0,1,2: 0.75; gain 0.25."""
    probs = {name: np.stack([1 - p1, p1], axis=1).astype(dtype) for name, p1 in zip("abc", HAND)}
    t = ensemble_table(probs, HAND_Y, lambda run: "all")
    row = t.iloc[0]
    assert row["members"] == ["a", "b", "c"] and row["n"] == 4
    assert row["ensemble_correct"].tolist() == [True, True, True, False]
    assert row["member_acc"] == [0.75, 0.5, 0.25]
    assert row["single_correct"] == pytest.approx([2 / 3, 1 / 3, 2 / 3, 1 / 3])
    assert row["ensemble_acc"] == 0.75 and row["single_acc"] == pytest.approx(0.5)
    assert row["gain"] == pytest.approx(0.25)
    assert row["ties"] == 1


def test_groups_are_formed_by_group_of_and_reported_in_order():
    rng = np.random.default_rng(1)
    y, p = population(rng, 200)
    runs = {(fold, seed): p[0, seed, fold] for seed in (1, 0) for fold in range(K)}  # inserted out of order
    t = ensemble_table(runs, y, lambda run: f"seed{run[1]}")
    assert t["group"].tolist() == ["seed0", "seed1"]
    assert t.loc[0, "members"] == [(f, 0) for f in range(K)]
    assert t["models"].tolist() == [K, K]
    member = [float(np.mean(p[0, 1, f].argmax(1) == y)) for f in range(K)]
    assert t.loc[1, "member_acc"] == pytest.approx(member)
    assert t.loc[1, "single_acc"] == pytest.approx(np.mean(member))
    assert t.loc[1, "ensemble_acc"] == np.mean(p[0, 1].astype(np.float64).mean(0).argmax(1) == y)
    assert t["gain"].to_numpy() == pytest.approx((t["ensemble_acc"] - t["single_acc"]).to_numpy())
    assert per_image_gain(t).mean() == pytest.approx(t["gain"].mean())


def test_intervals_equal_the_paired_bootstrap_that_recomputes_everything():
    """The shortcut (resampling the per-image gain) is the paired bootstrap the docstring describes:
    scipy resampling image indices, with the ensembles and their members rescored from the probabilities
    of the resampled images, gives the same interval with the same random numbers."""
    rng = np.random.default_rng(2)
    y, p = population(rng, 80, variants=2)
    a, b = table(p[0], y), table(p[1], y)

    def recomputed(idx, *, diff):
        idx = idx.astype(int)
        gains = [table(p[v], y, idx)["gain"].mean() for v in (0, 1)]
        return gains[1] - gains[0] if diff else gains[0]

    for diff in (False, True):
        expected = sps.bootstrap((np.arange(len(y)),), lambda i, diff=diff: recomputed(i, diff=diff),
                                 vectorized=False, n_resamples=199, method="percentile",
                                 rng=np.random.default_rng(5))
        got = (gain_difference_interval(a, b, n_resamples=199, seed=5) if diff
               else gain_interval(a, n_resamples=199, seed=5))
        assert (got["ci_low"], got["ci_high"]) == pytest.approx(tuple(expected.confidence_interval))
        assert got["ci_low"] < got["diff" if diff else "gain"] < got["ci_high"]


def test_results_are_plain_json():
    rng = np.random.default_rng(3)
    y, p = population(rng, 300, variants=2)
    a, b = table(p[0], y), table(p[1], y)
    for r in (gain_interval(a), gain_difference_interval(a, b), gain_interval(a.iloc[:1])):
        assert json.loads(json.dumps(strict(r), allow_nan=False)) == pytest.approx(strict(r))
        assert all(type(v) in (float, int, str) for v in r.values())
    assert strict(gain_interval(a.iloc[:1]))["gain_sd_between_ensembles"] is None  # one ensemble: no spread
    r = gain_interval(a)
    assert (r["groups"], r["models"], r["n"], r["resamples"]) == (2, 10, 300, 9999)
    assert r["gain"] == pytest.approx(r["ensemble_acc"] - r["single_acc"])
    assert "not retraining" in r["covers"]


def test_one_call_is_well_under_a_second():
    """n=500, 2 ensembles of 5 models, 10 classes, 9,999 resamples: 40-90 ms measured on 2 shared cores
    (n=10,000: 0.7-1.5 s)."""
    rng = np.random.default_rng(4)
    y, p = population(rng, 500, variants=2)
    p = p.astype(np.float16)  # what runs store
    start = time.perf_counter()
    a, b = table(p[0], y), table(p[1], y)
    gain_interval(a)
    gain_difference_interval(a, b)
    assert time.perf_counter() - start < 1.0


# --- coverage and false positives ----------------------------------------------------------------------

@pytest.mark.parametrize("own, low, high", [(0.5, 0.92, 0.98), (0.3, 0.92, 0.98)])
def test_gain_interval_covers_the_population_gain(own, low, high):
    """300 test sets of n=300 from a population of 20,000 images; the same 2 x 5 models throughout.
    Measured coverage of the 95% interval: 0.963 with own=0.5 (gain 0.034), 0.967 with own=0.3 (gain
    0.012, where four images in five gain exactly 0). Over 1,000 test sets (other seeds): 0.946 and 0.946."""
    rng = np.random.default_rng(10)
    y, p = population(rng, 20_000, own=own)
    true = table(p[0], y)["gain"].mean()
    hits = []
    for s in range(SIMS):
        r = gain_interval(table(p[0], y, rng.integers(0, len(y), N_TEST)), n_resamples=SIM_RESAMPLES, seed=s)
        hits.append(r["ci_low"] <= true <= r["ci_high"])
    assert low <= np.mean(hits) <= high


def test_difference_interval_false_positives_when_two_variants_gain_the_same():
    """Two variants whose models share the images' difficulty and class noise (so their gains are
    correlated across images, which pairing exploits) and have the same population gain exactly: every
    image appears twice in the population, once with the variants swapped. 300 test sets of n=300: the
    95% interval excludes the true difference 0 in 4.7% of them (measured; 4.3% over 1,000 other test
    sets). It must not be much above 5%, nor so wide that it never does (which an unpaired interval,
    resampling the two variants' images independently, would come close to)."""
    rng = np.random.default_rng(11)
    y, p = population(rng, 10_000, variants=2)
    y = np.concatenate([y, y])
    a, b = np.concatenate([p[0], p[1]], axis=2), np.concatenate([p[1], p[0]], axis=2)
    assert table(a, y)["gain"].mean() == pytest.approx(table(b, y)["gain"].mean(), abs=1e-12)
    false = []
    for s in range(SIMS):
        idx = rng.integers(0, len(y), N_TEST)
        r = gain_difference_interval(table(a, y, idx), table(b, y, idx), n_resamples=SIM_RESAMPLES, seed=s)
        false.append(not r["ci_low"] <= 0 <= r["ci_high"])
    assert 0.02 <= np.mean(false) <= 0.07


def test_difference_interval_covers_a_real_difference():
    """Variant b's models are noisier (own=0.7 vs 0.5), so averaging gains more: true difference 0.030.
    Measured coverage over 300 test sets of n=300: 0.950."""
    y, p = population(np.random.default_rng(12), 20_000, variants=2, own=[0.5, 0.7])
    rng = np.random.default_rng(13)
    true = table(p[1], y)["gain"].mean() - table(p[0], y)["gain"].mean()
    assert true > 0.02
    hits = []
    for s in range(SIMS):
        idx = rng.integers(0, len(y), N_TEST)
        r = gain_difference_interval(table(p[0], y, idx), table(p[1], y, idx), n_resamples=SIM_RESAMPLES, seed=s)
        hits.append(r["ci_low"] <= true <= r["ci_high"])
    assert 0.92 <= np.mean(hits) <= 0.98


# --- input validation ------------------------------------------------------------------------------------

def _probs(n=4, c=2, runs=2):
    return {r: np.full((n, c), 1 / c) for r in range(runs)}


@pytest.mark.parametrize("probs, y, message", [
    ({}, [0, 1], "probs is empty"),
    ({**_probs(), 1: np.full((5, 2), 0.5)}, [0, 1, 0, 1], r"run 1: probabilities for 5 images but y has 4"),
    ({**_probs(), 1: np.full((4, 3), 1 / 3)}, [0, 1, 0, 1], r"run 1: 3 classes, but other runs have 2"),
    ({0: np.full(4, 0.5)}, [0, 1, 0, 1], r"run 0: probabilities must be \(n, classes\)"),
    (_probs(), [0, 1, 2, 1], r"labels out of range: y has label 2 but the probabilities have 2 classes"),
    (_probs(), [0, -1, 0, 1], r"labels out of range: y has negative label -1"),
    (_probs(), [0, 0.5, 0, 1], r"labels y must be integer class indices"),
    (_probs(), [[0, 1, 0, 1]], r"labels y must be a non-empty 1-D array"),
    ({0: np.array([[2.0, -1.0]] * 4)}, [0, 1, 0, 1], r"run 0: rows must be class probabilities.*not logits"),
    ({0: np.array([[0.5, np.nan]] * 4)}, [0, 1, 0, 1], r"run 0: probabilities contain NaN"),
])
def test_bad_inputs_are_named(probs, y, message):
    with pytest.raises(ValueError, match=message):
        ensemble_table(probs, y, lambda run: 0)


def test_intervals_refuse_what_cannot_be_paired():
    rng = np.random.default_rng(6)
    y, p = population(rng, 100, variants=2)
    a = table(p[0], y)
    other = table(p[1], y[::-1].copy())
    with pytest.raises(ValueError, match="different test sets"):
        gain_difference_interval(a, other)
    with pytest.raises(ValueError, match="mixes ensembles of different test sets"):
        gain_interval(pd.concat([a, other], ignore_index=True))
    with pytest.raises(ValueError, match="has no ensembles"):
        gain_interval(a.iloc[:0])
    with pytest.raises(ValueError, match="not an ensemble_table"):
        gain_interval(a.drop(columns="ensemble_correct"))
    with pytest.raises(ValueError, match="confidence must be in"):
        gain_interval(a, confidence=95)
    assert labels_fingerprint(y) == a.loc[0, "test_set"] != other.loc[0, "test_set"]
