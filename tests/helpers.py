"""Shared test helpers: tiny real studies (scikit-learn digits) written as config files."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

TINY_STUDY = {
    "study": "tiny",
    "description": "three variants and an A/A control on 300 digits, 2 folds, 1 epoch",
    "data": {"name": "digits", "subset": 300},
    "protocol": {"folds": 2, "seeds": [0], "epochs": 1, "batch_size": 32, "lr": 0.05},
    "execution": {"device": "cpu", "threads": 1},
    "baseline": "baseline",
    "aa_control": True,
    "variants": {
        "baseline": {"base": "cnn", "description": "the small cnn"},
        "batchnorm": {"base": "baseline", "bn": True},
        "dropout": {"base": "baseline", "dropout": 0.5},
    },
}


def tiny_study(**changes) -> dict:
    """A copy of TINY_STUDY with top-level keys replaced (None deletes a key)."""
    study = copy.deepcopy(TINY_STUDY)
    for key, value in changes.items():
        if value is None:
            study.pop(key, None)
        else:
            study[key] = value
    return study


def write_yaml(path: Path, obj: dict) -> Path:
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    return path


def run_numbers(runs_dir: Path, variants=None) -> dict[str, dict]:
    """What a rerun, a resume or a regrouping must not change, per run file: its run seed, metrics, epochs
    (without times) and validation predictions."""
    out = {}
    for path in sorted(Path(runs_dir).rglob("*.json")):
        if variants is not None and path.parent.name not in variants:
            continue
        r = json.loads(path.read_text())
        epochs = [{k: v for k, v in e.items() if not k.endswith("_time_s")} for e in r["epochs"]]
        out[f"{path.parent.name}/{path.name}"] = {"run_seed": r["run_seed"], "metrics": r["metrics"],
                                                  "epochs": epochs, "val_pred": r["val_pred"]}
    return out
