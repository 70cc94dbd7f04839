"""Ensembles of the k fold models of one (repeat, seed), and how much they gain over their members.

Every run predicts class probabilities on one common test set (the official test split, or a held-out
part kept out of every fold), so the k models trained on the folds of one (repeat, seed) can be combined
without touching their validation folds. The ensemble is soft voting: the k probability matrices are
averaged and each image goes to the class of highest mean probability. Its gain is ensemble accuracy minus
the mean accuracy of its own members on the same images.

What the interval covers: the trained models are held fixed and only the test images are resampled (a
paired bootstrap over images). It measures how far the gain would move had the same models been scored
on another test set of the same size from the same distribution, and nothing else: another seed or
another fold split would train other models, whose gain varies too, and that retraining variance is not
in the interval. With G ensembles per variant the spread of the per-ensemble gains is the only glimpse of
it, and with G = 1 or 2 it is too small a sample to put a number on.

Both accuracies are means over images, so the gain of a variant (mean over its ensembles) is the mean
over images of one per-image number, d_i = mean over ensembles of (ensemble right - fraction of members
right). Resampling images and recomputing both accuracies on the resampled images is therefore the same
as resampling d_i (tests/test_ensemble.py checks this against the recomputation from the probabilities),
and that is what is handed to `scipy.stats.bootstrap`: one gather per resample instead of two.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Mapping

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
# scipy's default. One interval (2 ensembles of 5 models, 10 classes, 2 shared cores): 40-90 ms at n=500,
# about 1 s at n=10,000 (drawing and gathering 9,999 x n indices is the cost)
RESAMPLES = 9999
# Percentile, not scipy's default BCa: the per-image gains are mostly 0 with a few +-1/k steps, and BCa's
# jackknife acceleration is unstable on such sparse data. Simulated coverage of a 95% interval
# (tests/test_ensemble.py's generative model): n=300, 1,000 test sets: percentile 0.946, BCa 0.938;
# n=100 with a small gain (0.013): percentile 0.924, BCa 0.889. It is also twice as fast (no jackknife).
METHOD = "percentile"
COVERS = "test-image sampling, given the trained models (not retraining: other seeds or fold splits)"
_ELEMENTS_PER_BATCH = 300_000  # resamples x images per vectorised call (2.4 MB of indices): fastest measured
ROW_SUM_TOLERANCE = 0.02  # float16 probabilities of 1,000 classes still sum to 1 within 0.002

COLUMNS = ["group", "members", "models", "n", "ensemble_acc", "single_acc", "gain", "member_acc", "ties",
           "test_set", "ensemble_correct", "single_correct"]


def ensemble_table(probs: Mapping[Hashable, np.ndarray], y, group_of: Callable[[Hashable], Hashable]) -> pd.DataFrame:
    """One row per ensemble: the runs `group_of` puts together (the k fold models of one (repeat, seed)).

    `probs[run_id]` is that run's (n, C) class probabilities on the common test images, `y` their (n,)
    labels in 0..C-1. Columns:

    - group, members (sorted run ids), models (how many), n (test images);
    - ensemble_acc: accuracy of soft voting, argmax over classes of the mean of the members' probability
      matrices (averaged probabilities, not majority voting of the members' predicted labels);
    - single_acc: mean accuracy of the members on the same images; gain = ensemble_acc - single_acc;
    - member_acc: each member's accuracy, in the order of `members`;
    - ties: images whose highest mean probability is shared by two or more classes. argmax takes the first
      maximum, i.e. the lowest class index; float16 probabilities (what runs store) make exact ties less
      rare than one would think, so they are counted rather than hidden;
    - test_set: a fingerprint of the labels, so that intervals refuse to pair ensembles of other test sets;
    - ensemble_correct (n,) bool and single_correct (n,) float (fraction of members right on each image):
      the per-image vectors `gain_interval` resamples.

    The probabilities are summed in float64 and the argmax is taken of the sum (the same classes as of the
    mean): sums of float16 or float32 values are exact there, so the ensemble of k identical models makes
    exactly that model's predictions, ties included.
    """
    y = _labels(y)
    if not probs:
        raise ValueError("no runs: probs is empty")
    classes = None
    groups: dict[Hashable, list] = {}
    for run in _ordered(probs):
        p = np.asarray(probs[run])
        classes = _check_probs(run, p, len(y), classes)
        groups.setdefault(group_of(run), []).append(run)
    if y.max(initial=0) >= classes:
        raise ValueError(f"labels out of range: y has label {int(y.max())} but the probabilities have {classes} "
                         f"classes (0..{classes - 1})")
    fingerprint = labels_fingerprint(y)
    rows = []
    for group, members in groups.items():
        total = np.zeros((len(y), classes))
        right = np.zeros(len(y))
        member_acc = []
        for run in members:
            p = np.asarray(probs[run], dtype=np.float64)
            total += p
            correct = p.argmax(1) == y
            right += correct
            member_acc.append(float(correct.mean()))
        top = total.max(1)
        ensemble_correct = total.argmax(1) == y
        single_correct = right / len(members)
        ensemble_acc, single_acc = float(ensemble_correct.mean()), float(single_correct.mean())
        rows.append({"group": group, "members": list(members), "models": len(members), "n": len(y),
                     "ensemble_acc": ensemble_acc, "single_acc": single_acc, "gain": ensemble_acc - single_acc,
                     "member_acc": member_acc, "ties": int(((total == top[:, None]).sum(1) > 1).sum()),
                     "test_set": fingerprint, "ensemble_correct": ensemble_correct, "single_correct": single_correct})
    return pd.DataFrame(rows, columns=COLUMNS)


def labels_fingerprint(y) -> str:
    """Short hash of the labels: ensembles with other fingerprints were not scored on the same images."""
    y = np.ascontiguousarray(np.asarray(y, dtype=np.int64))
    return hashlib.sha1(y.tobytes()).hexdigest()[:12]


def per_image_gain(table: pd.DataFrame) -> np.ndarray:
    """d_i, the gain of the variant on image i: mean over its ensembles of (ensemble right - fraction of
    members right). Its mean over images is the variant's gain (mean over ensembles)."""
    _check_table(table, "table")
    e = np.stack(table["ensemble_correct"].to_list()).astype(float)
    s = np.stack(table["single_correct"].to_list())
    return (e - s).mean(0)


def gain_interval(table: pd.DataFrame, confidence: float = CONFIDENCE, n_resamples: int = RESAMPLES,
                  method: str = METHOD, seed: int = 0) -> dict:
    """The variant's ensemble gain (mean over its ensembles, the rows of `ensemble_table`) and its paired
    bootstrap interval over the test images.

    The interval covers test-image sampling variance given the trained models: the same models scored on
    another test set of n images drawn from the same distribution. It does not cover retraining variance
    (other seeds, other fold splits), which the G ensembles of one variant are too few to estimate; it is
    an interval for the gain of these models, not for the gain one would get by training again.

    Returns floats and ints: gain, ci_low, ci_high, ensemble_acc, single_acc (means over ensembles),
    gain_sd_between_ensembles (NaN with one ensemble: cnnbench.io.write_json writes null), groups, models, n, confidence, method, resamples,
    and covers (the sentence above, for the report)."""
    d = per_image_gain(table)
    low, high, used = _interval(d, confidence, n_resamples, method, seed)
    gains = table["gain"].to_numpy(dtype=float)
    return {"gain": float(d.mean()), "ci_low": low, "ci_high": high,
            "ensemble_acc": float(table["ensemble_acc"].mean()), "single_acc": float(table["single_acc"].mean()),
            "gain_sd_between_ensembles": float(gains.std(ddof=1)) if len(gains) > 1 else float("nan"),
            "groups": len(table), "models": int(table["models"].sum()), "n": len(d),
            "confidence": float(confidence), "method": used, "resamples": int(n_resamples), "covers": COVERS}


def gain_difference_interval(a: pd.DataFrame, b: pd.DataFrame, confidence: float = CONFIDENCE,
                             n_resamples: int = RESAMPLES, method: str = METHOD, seed: int = 0) -> dict:
    """`b`'s gain minus `a`'s (e.g. dropout's minus the baseline's: a is the reference, as in
    cnnbench.stats), with a bootstrap interval that resamples the test images jointly for both variants.

    Pairing matters: images that are hard for one variant's ensembles are hard for the other's, and
    resampling them jointly cancels that shared part. Like `gain_interval` it covers test-image sampling
    given the trained models of both variants, not retraining.

    Returns floats and ints: diff, ci_low, ci_high, gain_a, gain_b, groups_a, groups_b, n, confidence,
    method, resamples, covers."""
    da, db = per_image_gain(a), per_image_gain(b)
    if a["test_set"].iloc[0] != b["test_set"].iloc[0] or len(da) != len(db):
        raise ValueError(f"the two tables were scored on different test sets (labels {a['test_set'].iloc[0]}, "
                         f"n={len(da)} vs {b['test_set'].iloc[0]}, n={len(db)}): their gains cannot be paired")
    d = db - da
    low, high, used = _interval(d, confidence, n_resamples, method, seed)
    return {"diff": float(d.mean()), "ci_low": low, "ci_high": high, "gain_a": float(da.mean()),
            "gain_b": float(db.mean()), "groups_a": len(a), "groups_b": len(b), "n": len(d),
            "confidence": float(confidence), "method": used, "resamples": int(n_resamples), "covers": COVERS}


def _interval(d: np.ndarray, confidence: float, n_resamples: int, method: str, seed: int) -> tuple[float, float, str]:
    """Bootstrap interval of the mean of per-image values `d` (scipy, vectorised over resamples)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be positive, got {n_resamples}")
    if len(d) < 2:
        raise ValueError(f"a bootstrap interval needs at least 2 test images, got {len(d)}")
    if np.ptp(d) == 0:  # every image gains the same (identical members): no test-image variance at all
        return float(d[0]), float(d[0]), "none (every image contributes the same)"
    batch = max(1, min(n_resamples, _ELEMENTS_PER_BATCH // len(d)))
    r = stats.bootstrap((d,), np.mean, n_resamples=n_resamples, batch=batch, vectorized=True,
                        confidence_level=confidence, method=method, rng=np.random.default_rng(seed))
    low, high = float(r.confidence_interval.low), float(r.confidence_interval.high)
    if method.lower() == "bca" and not (np.isfinite(low) and np.isfinite(high)):
        # BCa needs the point estimate strictly inside the bootstrap distribution; with a handful of
        # images that differ it may not be, and the percentile interval of the same resamples is used
        r = stats.bootstrap((d,), np.mean, n_resamples=n_resamples, batch=batch, vectorized=True,
                            confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
        low, high, method = float(r.confidence_interval.low), float(r.confidence_interval.high), "percentile"
    return low, high, method


# --- validation ------------------------------------------------------------------------------------

def _labels(y) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) == 0:
        raise ValueError(f"labels y must be a non-empty 1-D array, got shape {y.shape}")
    whole_floats = np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y))
    if not (np.issubdtype(y.dtype, np.integer) or whole_floats):
        raise ValueError(f"labels y must be integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0:
        raise ValueError(f"labels out of range: y has negative label {int(y.min())}")
    return y


def _check_probs(run, p: np.ndarray, n: int, classes: int | None) -> int:
    if p.ndim != 2:
        raise ValueError(f"run {run!r}: probabilities must be (n, classes), got shape {p.shape}")
    if p.shape[0] != n:
        raise ValueError(f"run {run!r}: probabilities for {p.shape[0]} images but y has {n} labels")
    if classes is not None and p.shape[1] != classes:
        raise ValueError(f"run {run!r}: {p.shape[1]} classes, but other runs have {classes}")
    if p.shape[1] < 2:
        raise ValueError(f"run {run!r}: need at least 2 classes, got {p.shape[1]}")
    p = p.astype(np.float64)
    if not np.all(np.isfinite(p)):
        raise ValueError(f"run {run!r}: probabilities contain NaN or infinity")
    sums = p.sum(1)
    worst = int(np.abs(sums - 1).argmax())
    if p.min() < 0 or abs(sums[worst] - 1) > ROW_SUM_TOLERANCE:
        raise ValueError(f"run {run!r}: rows must be class probabilities (non-negative, summing to 1), but "
                         f"row {worst} sums to {sums[worst]:.4g} and the smallest value is {p.min():.4g}; "
                         f"pass softmax outputs, not logits")
    return p.shape[1]


def _check_table(table: pd.DataFrame, name: str) -> None:
    missing = {"ensemble_correct", "single_correct", "test_set"} - set(table.columns)
    if missing:
        raise ValueError(f"{name} is not an ensemble_table (missing columns {sorted(missing)})")
    if table.empty:
        raise ValueError(f"{name} has no ensembles")
    if table["test_set"].nunique() > 1:
        raise ValueError(f"{name} mixes ensembles of different test sets: {sorted(table['test_set'].unique())}")


def _ordered(probs: Mapping) -> list:
    """Run ids in sorted order where they sort (fold, seed tuples), else as given."""
    try:
        return sorted(probs)
    except TypeError:
        return list(probs)
