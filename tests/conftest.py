"""Fixtures that need set-up beyond Python: a real headless browser for the report test."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.helpers import tiny_study


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of Debian's chromium; installed with apt-get when missing (CI machines start without it).
    Skips, with the reason, only where it cannot be installed."""
    path = shutil.which("chromium")
    if path is None and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        steps = [["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, env=env, timeout=900)
            if done.returncode != 0:
                pytest.skip(f"chromium is not installed and `{' '.join(step)}` failed: {done.stderr.strip()[-300:]}")
        path = shutil.which("chromium")
    if path is None:
        pytest.skip("chromium is not installed and cannot be installed here (needs apt-get as root)")
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
                  folds=[1], seeds=[0], out_dir=root / "runs" / "batchnorm", weights_path=None,
                  resume_root=root / ".resume", log=lambda m: None)
    return root / "runs" / "batchnorm" / "fold1-seed0.json"
