"""`cnnbench bench-report` on real pytest-benchmark output from a short run of the kernel suite."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest

from cnnbench.benchreport import bench_report, compare, load, theory_vs_practice
from cnnbench.errors import CnnbenchError
from tests.helpers import REPO


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results" / "bench" / "run.json"  # a folder not there yet, as
    # on a fresh clone (README: --benchmark-json results/bench/mine.json); pytest-benchmark crashed on it
    done = subprocess.run([sys.executable, "-m", "pytest", "tests/bench", "--benchmark-only", "-q", "-p", "no:cacheprovider",
                           "-k", "bottleneck or downsample", "--benchmark-min-rounds=3", "--benchmark-max-time=0.05",
                           f"--benchmark-json={out}"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:]
    return out


def test_theory_vs_practice_from_a_real_run(bench_json):
    df, meta = load(bench_json)
    assert set(df["question"].str.split(":").str[0]) == {"5x5 conv 192->32 vs 1x1 reduction to 16 then 5x5 (28x28, GoogLeNet's example)",
                                                         "2x downsampling"}
    assert meta["cpu"] and len(df) == 8
    tvp = theory_vs_practice(df)
    fwd = tvp[(tvp["mode"] == "forward") & tvp["question"].str.startswith("5x5")].iloc[0]
    assert fwd.macs_ratio == pytest.approx(120_422_400 / 12_443_648) and fwd.time_ratio > 1
    # forward+backward: forward, input gradient and weight gradient of every conv (the timed input needs a
    # gradient), so 3x the forward; leaving out the input gradient made this 6.90x
    step = df[(df["mode"] == "forward+backward") & df["question"].str.startswith("5x5")].set_index("role")["macs"]
    assert step.to_dict() == {"a": 3 * 120_422_400, "b": 3 * 12_443_648}
    text = bench_report(bench_json)
    assert text.count("1x1 + 5x5 needs 9.68x fewer MACs than 5x5") == 2 and "max pool needs no MACs" in text


def test_two_runs_flag_medians_that_moved(bench_json, tmp_path):
    data = json.loads(bench_json.read_text())
    slower = copy.deepcopy(data)
    slower["benchmarks"][0]["stats"]["median"] *= 1.5
    slower["benchmarks"][1]["stats"]["median"] *= 1.05
    other = tmp_path / "other.json"
    other.write_text(json.dumps(slower))
    changes = compare(load(bench_json)[0], load(other)[0], threshold=0.10)
    assert changes["flagged"].tolist() == [True] + [False] * (len(changes) - 1)
    assert changes["change"].iloc[0] == pytest.approx(0.5)
    text = bench_report(bench_json, other, html_out=tmp_path / "b.html")
    assert "1 of 8 benchmarks moved by more than 10%" in text and "slower +50%" in text
    page = (tmp_path / "b.html").read_text()
    assert "theory" in page and "+50.0%" in page


def test_other_json_is_refused(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"benchmarks": [{"fullname": "a", "stats": {}, "extra_info": {}}]}))
    with pytest.raises(CnnbenchError, match="no cnnbench kernel benchmarks"):
        load(bad)
    (tmp_path / "y.json").write_text("not json")
    with pytest.raises(CnnbenchError, match="not a pytest-benchmark JSON"):
        load(tmp_path / "y.json")
