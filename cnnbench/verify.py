"""`cnnbench verify <run.json>`: re-run a run from its own record and compare the numbers.

On the CPU (same thread count) every loss and accuracy must match exactly; that is the reproducibility
promise. The data cache and split it used are checked by hash first, so a mismatch means the code,
the seed or the environment changed, not the inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnbench.config import VariantSpec
from cnnbench.data import file_hash, load_cache, load_fold
from cnnbench.errors import CnnbenchError
from cnnbench.io import read_json

COMPARED = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")


@dataclass
class Verdict:
    match: bool
    lines: list[str]

    def __str__(self) -> str:
        return "\n".join(self.lines)


def verify(record_path: str | Path, data: str | Path | None = None, splits: str | Path | None = None,
           device: str | None = None) -> Verdict:

    from cnnbench.train import fit, resolve_device, set_determinism

    record_path = Path(record_path)
    record = read_json(record_path)
    study_dir = record_path.resolve().parents[2]  # results/<study>/runs/<variant>/<run>.json
    data = Path(data or study_dir / "data.npz")
    splits = Path(splits or study_dir / "splits.json")
    for path, key in ((data, "data_sha256"), (splits, "split_sha256")):
        if not path.exists():
            raise CnnbenchError(f"{path}: not found; pass --data/--splits with the files this run used")
        if key in record["data"] and file_hash(path) != record["data"][key]:
            raise CnnbenchError(f"{path}: not the file this run used (sha256 {file_hash(path)} != "
                                f"{record['data'][key]}); pass the original with --data/--splits")
    spec = VariantSpec.from_dict(record["spec"])
    lines = [f"re-running {record['study']}/{record['variant']} fold {record['fold']} seed {record['seed']}"]
    if spec.spec_hash != record["spec_hash"]:
        lines.append(f"spec hash now {spec.spec_hash}, recorded {record['spec_hash']}: this code builds a different "
                     "network or protocol from the same knobs")
    env = record["env"]
    dev = resolve_device(device or env["device"])
    set_determinism(dev, env.get("threads", 1))
    images = load_cache(data)
    train_idx, val_idx = load_fold(splits, record["fold"], images.y)
    result = fit(spec, images, train_idx, val_idx, seed=record["seed"], device=dev)
    exact = dev.type == "cpu" and env["device"] == "cpu"
    tol = 0.0 if exact else 1e-4
    mismatches = []
    for old, new in zip(record["epochs"], result.epochs):
        for key in COMPARED:
            if not _close(old[key], new[key], tol):
                mismatches.append(f"epoch {old['epoch']} {key}: recorded {old[key]!r}, now {new[key]!r}")
    if len(record["epochs"]) != len(result.epochs):
        mismatches.append(f"epochs: recorded {len(record['epochs'])}, now {len(result.epochs)}")
    if not np.array_equal(np.asarray(record["val_pred"]), result.val_pred) and exact:
        mismatches.append("validation predictions differ")
    if not exact:
        lines.append(f"recorded on {env['device']}, re-run on {dev.type}: compared with tolerance {tol} "
                     "(bit-identical results are promised on the CPU only)")
    if mismatches:
        lines += ["MISMATCH", *mismatches[:10]]
        if len(mismatches) > 10:
            lines.append(f"... and {len(mismatches) - 10} more")
    else:
        lines.append(f"MATCH: {len(result.epochs)} epochs x {len(COMPARED)} numbers and "
                     f"{len(result.val_pred)} validation predictions " + ("identical" if exact else "within tolerance"))
    if env.get("git_commit") and env.get("git_dirty") is not None:
        from cnnbench.env import git_state

        now = git_state()
        if now["git_commit"] != env["git_commit"] or now["git_dirty"] or env["git_dirty"]:
            lines.append(f"code: recorded at {env['git_commit'][:10]}{' (dirty)' if env['git_dirty'] else ''}, "
                         f"now {str(now['git_commit'])[:10]}{' (dirty)' if now['git_dirty'] else ''}")
    return Verdict(not mismatches, lines)


def _close(a: float, b: float, tol: float) -> bool:
    if tol == 0.0:
        return a == b or (math.isnan(a) and math.isnan(b))
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)
