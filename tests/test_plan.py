"""`cnnbench plan`: variance components from a pilot, and the cheapest design that reaches a target."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from cnnbench.cli import main
from cnnbench.plan import Variance, cheapest_design, design_mde, format_plan, plan, variance_components
from tests.helpers import REPO


def pilot(folds=200, seeds=4, fold_sd=0.006, seed_sd=0.004, effect=0.01, seed=0) -> pd.DataFrame:
    """Runs of a baseline and a variant whose per-(fold, seed) difference is fold part + seed part."""
    rng = np.random.default_rng(seed)
    fold_part = rng.normal(0, fold_sd, size=(folds, 1))
    diff = effect + fold_part + rng.normal(0, seed_sd, size=(folds, seeds))
    base = 0.95 + rng.normal(0, 0.01, size=(folds, seeds))
    rows = []
    for variant, acc in (("baseline", base), ("v", base + diff)):
        rows += [{"variant": variant, "fold": f, "seed": s, "val_acc": acc[f, s], "data_n_train": 4000,
                  "data_n_val": 1000} for f in range(folds) for s in range(seeds)]
    return pd.DataFrame(rows)


def test_variance_components_recover_fold_and_seed_parts():
    v = variance_components(pilot(), "baseline", "v")
    assert v.seeds_measured
    assert v.fold == pytest.approx(0.006 ** 2, rel=0.25) and v.seed == pytest.approx(0.004 ** 2, rel=0.1)
    one_seed = variance_components(pilot(seeds=1), "baseline", "v")
    assert not one_seed.seeds_measured and one_seed.seed == 0


def test_cheapest_design_reaches_the_target_and_nothing_cheaper_does():
    v = Variance(fold=0.006 ** 2, seed=0.004 ** 2, seeds_measured=True)
    best = cheapest_design(v, 0.01, [5, 10], 0.05)
    assert design_mde(v, best["folds"], best["repeats"], best["seeds"], 0.05) <= 0.01
    assert best["runs"] == best["folds"] * best["repeats"] * best["seeds"]
    for k in (5, 10):
        for r in range(1, 21):
            for s in range(1, 11):
                if k * r * s < best["runs"]:
                    assert design_mde(v, k, r, s, 0.05) > 0.01
    # more repeats cannot beat the correction's floor: sqrt(1/(k-1)) sigma with k folds
    assert cheapest_design(v, 0.001, [5], 0.05) is None


def test_plan_command_reads_a_finished_study(tmp_path, capsys):
    pilot(folds=10, seeds=2).to_parquet(tmp_path / "runs.parquet")
    (tmp_path / "study.json").write_text(json.dumps({"study": "p", "baseline": "baseline", "references": {}}))
    df = plan(tmp_path, [0.005, 0.02])
    assert list(df["target"]) == [0.005, 0.02] and (df["variant"] == "v").all()
    small, large = df.iloc[0], df.iloc[1]
    assert large["runs"] >= 5 and (pd.isna(small["runs"]) or small["runs"] >= large["runs"])
    assert main(["plan", str(tmp_path), "--delta", "2"]) == 0
    out = capsys.readouterr().out
    assert "v vs baseline" in out and "runs" in out
    assert main(["plan", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    # a config given where the results folder goes (a trial's first guess) says which folder to give
    assert main(["plan", str(REPO / "config" / "config.yaml")]) == 2
    err = capsys.readouterr().err
    assert "reads the results folder of a finished study" in err and "cnnbench plan results/default" in err


def test_the_plan_prints_whole_numbers_and_says_when_no_design_reaches_a_target(tmp_path, capsys):
    """A target no design reaches leaves None in a column of designs; pandas makes that column float with
    NaN, which printed as 'nan folds x nan repeats' and '5.0 folds' before."""
    pilot(folds=10, seeds=2).to_parquet(tmp_path / "runs.parquet")
    (tmp_path / "study.json").write_text(json.dumps({"study": "p", "baseline": "baseline", "references": {}}))
    df = plan(tmp_path, [0.00001, 0.05])
    assert pd.isna(df.iloc[0]["runs"]) and pd.notna(df.iloc[1]["runs"])
    text = format_plan(df)
    assert "nan" not in text and ".0 folds" not in text and ".0 runs" not in text
    assert "not within 20 repeats x 10 seeds:" in text  # two seeds a fold: more seeds were searched too
    assert "not within" in text and re.search(r"\d+ folds x \d+ repeats x \d+ seeds = \d+ runs", text)
    assert "at 5 folds" in text and "--folds 10 20" in text  # where to go from there: beyond the pilot's 5
    wider = format_plan(plan(tmp_path, [0.00001], folds_options=[10, 20]))  # the advice goes past what was asked
    assert "at 5, 10, 20 folds" in wider and "--folds 40 80" in wider
    assert "--folds" not in format_plan(df.iloc[1:])  # every target reached: no advice


def test_a_tiny_pilot_says_so_and_never_prints_more_than_100_points(tmp_path, capsys):
    """A 2-fold pilot printed "detectable now 2236.00 pts" (a helper's trial), and --delta 200 was planned."""
    pilot(folds=2, seeds=1, fold_sd=0.5).to_parquet(tmp_path / "runs.parquet")
    (tmp_path / "study.json").write_text(json.dumps({"study": "p", "baseline": "baseline", "references": {}}))
    df = plan(tmp_path, [0.01])
    assert df.iloc[0]["mde_now"] > 1  # what the t quantile at 1 degree of freedom gives
    text = format_plan(df)
    assert ">100 pts (J=2" in text and "a pilot of 2 paired resamples" in text
    assert "not within 20 repeats x 1 seed:" in text  # one seed measured: only one-seed designs were searched
    assert not re.search(r"\d{3,}\.\d\d pts", text)
    with pytest.raises(SystemExit) as exit_:
        main(["plan", str(tmp_path), "--delta", "200"])
    assert exit_.value.code == 2 and "at most 100" in capsys.readouterr().err


def test_a_pilot_without_spread_prints_n_a_not_more_than_100(tmp_path):
    runs = pilot(folds=5, seeds=1)
    runs.loc[runs.variant == "v", "val_acc"] = runs.loc[runs.variant == "baseline", "val_acc"].to_numpy() + 0.01
    runs.to_parquet(tmp_path / "runs.parquet")
    (tmp_path / "study.json").write_text(json.dumps({"study": "p", "baseline": "baseline", "references": {}}))
    df = plan(tmp_path, [0.01])
    assert pd.isna(df.iloc[0]["mde_now"])  # identical differences: standard error 0
    assert "   n/a pts" in format_plan(df) and ">100" not in format_plan(df)
