"""Shared fixtures: a real headless browser for the report test, and a real run record."""

from __future__ import annotations

import os
import shutil

import pytest

from cnnbench.numerics import CUBLAS_WORKSPACE
from tests.helpers import tiny_study

# torch reads this once, at the process's first cuBLAS call: the CUDA tests' deterministic runs come after
# ordinary ones in the same process, so it is set before any test runs (no effect on the CPU)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of Debian's chromium, which .ci/run installs; skips, with the command, where it is missing."""
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("chromium is not installed; install it with: apt-get update && apt-get install -y chromium")
    return path


@pytest.fixture(scope="session")
def recorded(tmp_path_factory):
    """A real run record of the tiny study (batchnorm, fold 1), laid out as the workflow lays it out."""
    from cnnbench.config import load_study
    from cnnbench.data import load_source, make_splits, save_cache, save_splits
    from cnnbench.runner import train_variant

    root = tmp_path_factory.mktemp("results") / "tiny"
    study = load_study(tiny_study(protocol={"folds": 2, "epochs": 2, "batch_size": 32}))
    images = load_source(study.data, 0)
    save_cache(images, root / "data.npz")
    save_splits(root / "splits.json", make_splits(images.y, 2, 1, 0), images.y, 2, 1, 0)
    train_variant(study.variants["batchnorm"], data_path=root / "data.npz", splits_path=root / "splits.json",
                  runs=[(1, 0)], out_dir=root / "runs" / "batchnorm", weights_path=None,
                  resume_root=root / ".resume", log=lambda m: None)
    return root / "runs" / "batchnorm" / "fold1-seed0.json"
