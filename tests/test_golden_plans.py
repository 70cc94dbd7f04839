"""Golden layer tables: every registered preset's plan digest and layer arithmetic, kept under
tests/expect/models/. The digest is part of every run's identity, so a code change that alters what a
preset builds (or adds a field to the plan) silently retrains every cached run of it; here it shows up as
a reviewed diff instead. After a deliberate change: `CNNBENCH_ACCEPT=1 pytest tests/test_golden_plans.py`
rewrites the files, and the diff goes into the commit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cnnbench.describe import describe
from cnnbench.models.plan import plan_digest
from cnnbench.models.registry import get_entry, get_plan, list_models

EXPECT = Path(__file__).parent / "expect" / "models"
SHAPES = [(1, 28, 28), (3, 32, 32)]  # the default study's MNIST, and CIFAR-10
ACCEPT = os.environ.get("CNNBENCH_ACCEPT") == "1"
BUILT_IN = [name for name in list_models() if get_entry(name).source == "cnnbench"]  # not a user's plugins


def golden_text(name: str) -> str:
    parts = [f"# {name}: {get_entry(name).doc}"]
    for shape in SHAPES:
        shape_name = "x".join(map(str, shape))
        parts += [f"\n## input {shape_name}, 10 classes: plan digest {plan_digest(get_plan(name, shape))}",
                  describe(name, input_shape=shape)]
    return "\n".join(parts) + "\n"


@pytest.mark.parametrize("name", BUILT_IN)
def test_preset_plan_matches_its_golden_file(name):
    path = EXPECT / f"{name}.txt"
    text = golden_text(name)
    if ACCEPT:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: a new preset? create it with CNNBENCH_ACCEPT=1 and review it"
    assert text == path.read_text(), (
        f"{name}'s plan changed: cached runs of it will retrain. If that is deliberate, rerun with "
        f"CNNBENCH_ACCEPT=1 and commit the diff of tests/expect/models/{path.name}")


def test_no_golden_file_outlives_its_preset():
    stale = sorted(p.stem for p in EXPECT.glob("*.txt") if p.stem not in BUILT_IN)
    assert not stale, f"golden files for presets that no longer exist: {stale} (delete them, or add a deprecation)"


def test_the_digest_is_the_one_in_a_runs_identity():
    from cnnbench.config import load_study
    from tests.helpers import tiny_study

    spec = load_study(tiny_study()).variants["baseline"]
    assert spec.identity()["plan"] == plan_digest(spec.plan())
    assert plan_digest(spec.plan()) != plan_digest(get_plan(spec.arch, spec.input_shape, spec.num_classes, widths=[3]))
