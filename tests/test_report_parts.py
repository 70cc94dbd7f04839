"""Small pieces of the report that decide what a reader sees."""

from __future__ import annotations

import pandas as pd

from cnnbench.report.sections import pareto_front


def test_pareto_front_drops_points_dominated_on_a_cost_tie():
    """baseline, batchnorm and dropout share 1,031,744 MACs in the default study: only the most accurate
    of equally cheap points is on the front."""
    cost = pd.Series({"baseline": 1_031_744, "batchnorm": 1_031_744, "dropout": 1_031_744, "stride2": 103_000,
                      "width64": 15_000_000, "no_pool": 3_980_000})
    acc = pd.Series({"baseline": 97.14, "batchnorm": 97.58, "dropout": 97.72, "stride2": 96.34,
                     "width64": 97.49, "no_pool": 96.19})
    assert pareto_front(cost, acc) == ["stride2", "dropout"]
    assert pareto_front(pd.Series({"a": 1, "b": 1}), pd.Series({"a": 0.5, "b": 0.5})) == ["a"]  # exact tie: one
