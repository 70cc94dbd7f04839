"""`cnnbench verify <run.json>`: re-run a run from its own record and compare the numbers.

On the CPU (same thread count) every loss and accuracy, the record's final metrics, and every validation
prediction must match exactly; that is the reproducibility promise. On a GPU, a run recorded with
`execution.deterministic: true` must match exactly too when re-run on the same GPU model; otherwise the
numbers must agree within a tolerance and at most a small fraction of the validation predictions may
differ, counted and reported. The data cache and split it used are checked by hash first, and the spec hash must be the
recorded one, so a mismatch means the code, the seed or the environment changed, not the inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnbench.config import VariantSpec
from cnnbench.data import file_hash, load_cache, load_fold
from cnnbench.errors import CnnbenchError
from cnnbench.runner import run_metrics
from cnnbench.seeds import run_seed

COMPARED = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")
METRICS = ("val_acc", "val_loss", "train_acc", "train_loss", "best_val_acc", "best_epoch", "test_acc", "test_loss")
# Off the CPU, kernels are not bit-reproducible, so a few near-tied logits may flip. The bound is a stated
# choice (5 of 1000 validation images), not a measured GPU-vs-CPU figure; the count is always reported.
MAX_PRED_DIFF = 0.005


@dataclass
class Verdict:
    match: bool
    lines: list[str]

    def __str__(self) -> str:
        return "\n".join(self.lines)


def verify(record_path: str | Path, data: str | Path | None = None, splits: str | Path | None = None,
           device: str | None = None) -> Verdict:
    import torch

    from cnnbench.results import check_record
    from cnnbench.runtime import resolve_device, set_determinism
    from cnnbench.train import fit

    record_path = Path(record_path)
    record = check_record(record_path, consistent=False)
    if data is None or splits is None:
        parents = record_path.resolve().parents  # results/<study>/runs/<variant>/<run>.json
        if len(parents) < 3 or parents[1].name != "runs":
            raise CnnbenchError(f"{record_path}: not inside results/<study>/runs/<variant>/, so the data cache and "
                                "split it used are unknown; pass --data and --splits")
        study_dir = parents[2]
        data = data or study_dir / "data.npz"
        splits = splits or study_dir / "splits.json"
    data, splits = Path(data), Path(splits)
    for path, key in ((data, "data_sha256"), (splits, "split_sha256")):
        if not path.exists():
            raise CnnbenchError(f"{path}: not found; pass --data/--splits with the files this run used, or run the "
                                "study's workflow again (snakemake --cores all --configfile <its config>): it remakes "
                                "them from the config alone and retrains nothing")
        if key in record["data"] and file_hash(path) != record["data"][key]:
            raise CnnbenchError(f"{path}: not the file this run used (sha256 {file_hash(path)} != "
                                f"{record['data'][key]}); pass the original with --data/--splits")
    spec = VariantSpec.from_dict(record["spec"])
    seed = record_seed(record)
    lines = [f"re-running {record['study']}/{record['variant']} fold {record['fold']} seed {record['seed']} "
             f"(run seed {seed})"]
    mismatches = []
    if spec.spec_hash != record["spec_hash"]:
        mismatches.append(f"spec hash now {spec.spec_hash}, recorded {record['spec_hash']}: this code builds a "
                          "different network or protocol from the same knobs")
    env = record["env"]
    if not device and env["device"] == "cuda" and not torch.cuda.is_available():
        raise CnnbenchError(f"{record_path}: this run was recorded on CUDA ({env.get('device_name') or 'a GPU'}) and "
                            "torch sees no CUDA device here; verify it on a GPU, or pass --device cpu to compare "
                            "with a tolerance")
    dev = resolve_device(device or env["device"])
    set_determinism(dev, env.get("threads", 1), spec.numerics.get("deterministic", False))
    images = load_cache(data)
    train_idx, val_idx = load_fold(splits, record["fold"], images.y)
    pretrained = None
    if spec.train.get("pretrained"):  # the weights it started from, checked against the record's hash
        from cnnbench.runner import load_pretrained

        weights = Path(data).resolve().parent / "pretrained" / f"{spec.train['pretrained']}.pt"
        if not weights.exists():
            raise CnnbenchError(f"{weights}: the pretrained weights this run started from are missing; rerun the "
                                "workflow (its pretrain job writes them)")
        pretrained, source = load_pretrained(spec, weights)
        if record.get("pretrained", {}).get("sha256") not in (None, source["sha256"]):
            mismatches.append(f"pretrained weights: sha256 now {source['sha256']}, recorded "
                              f"{record['pretrained']['sha256']}")
    result = fit(spec, images, train_idx, val_idx, seed=seed, device=dev, pretrained=pretrained)
    exact, under = exact_match_expected(env, record.get("numerics", {}), dev)
    lines.append(f"compared under: {under}")
    tol = 0.0 if exact else 1e-4
    mismatches += _compare_epochs(record["epochs"], result.epochs, tol)
    mismatches += _compare_metrics(record["metrics"], run_metrics(result), tol)
    differ = _count_differing(np.asarray(record["val_pred"]), result.val_pred)
    allowed = 0 if exact else math.floor(MAX_PRED_DIFF * len(result.val_pred))
    if differ > allowed:
        mismatches.append(f"validation predictions: {differ} of {len(result.val_pred)} differ (allowed {allowed})")
    if not exact:
        lines.append(f"recorded on {env['device']}, re-run on {dev.type}: compared with tolerance {tol}, and at "
                     f"most {MAX_PRED_DIFF:.1%} of validation predictions ({allowed}) may differ "
                     "(bit-identical results are promised on the CPU, and on the same GPU model with "
                     "execution.deterministic: true)")
    if mismatches:
        lines += ["MISMATCH", *mismatches[:10]]
        if len(mismatches) > 10:
            lines.append(f"... and {len(mismatches) - 10} more")
    else:
        numbers = (f"{len(result.epochs)} epochs x {len(COMPARED)} numbers, "
                   f"{sum(k in record['metrics'] for k in METRICS)} metrics")
        lines.append(f"MATCH: {numbers} and {len(result.val_pred)} validation predictions identical" if exact else
                     f"MATCH: {numbers} within tolerance {tol}; {differ} of {len(result.val_pred)} validation "
                     f"predictions differ (at most {allowed}, {MAX_PRED_DIFF:.1%}, allowed)")
    from cnnbench.env import environment

    now = environment(dev)
    changed = versions_changed(env, now)
    if changed:
        lines.append(f"recorded with other versions: {changed}")
    if env.get("git_commit") and env.get("git_dirty") is not None:
        if now["git_commit"] != env["git_commit"] or now["git_dirty"] or env["git_dirty"]:
            lines.append(f"code: recorded at {env['git_commit'][:10]}{' (dirty)' if env['git_dirty'] else ''}, "
                         f"now {str(now['git_commit'])[:10]}{' (dirty)' if now['git_dirty'] else ''}")
    return Verdict(not mismatches, lines)


def exact_match_expected(env: dict, numerics: dict, dev) -> tuple[bool, str]:
    """Whether the re-run must reproduce the record bit for bit, and the settings it is compared under."""
    deterministic = bool(numerics.get("deterministic"))
    how = (f"precision {numerics.get('precision', 'fp32')}, compile {numerics.get('compile', 'off')}, "
           f"deterministic {'on' if deterministic else 'off'}")
    if dev.type == "cpu":
        return env["device"] == "cpu", f"CPU, {env.get('threads', 1)} thread(s), {how}; recorded on {env['device']}"
    import torch

    now = torch.cuda.get_device_name(dev)
    same_gpu = env["device"] == "cuda" and env.get("device_name") == now
    return same_gpu and deterministic, f"GPU {now}, {how}; recorded on {env.get('device_name') or env['device']}"


VERSIONED = ("torch", "torchvision", "numpy", "python", "cnnbench", "cpu", "cuda", "cudnn")


def versions_changed(env: dict, now: dict) -> str:
    """The library versions (and CPU model, CUDA, cuDNN) that differ between the record and this re-run's
    environment `now`: a match across them is worth knowing, and a mismatch often comes from them. A
    key this run does not have (CUDA on the CPU) is not a difference."""
    return "; ".join(f"{k} {env[k]} then, {now[k]} now" for k in VERSIONED
                     if env.get(k) is not None and now.get(k) is not None and env[k] != now[k])


def record_seed(record: dict) -> int:
    """The seed the run trained with: recorded as `run_seed`, or derived as the runner derives it."""
    if "run_seed" in record:
        return record["run_seed"]
    return run_seed(record["seed"], record["fold"], record.get("seed_offset", 0))


def _count_differing(old: np.ndarray, new: np.ndarray) -> int:
    """Validation predictions that differ; all of them when the counts differ."""
    if old.shape != new.shape:
        return max(len(old), len(new))
    return int(np.count_nonzero(old != new))


def _compare_epochs(old_epochs: list[dict], new_epochs: list[dict], tol: float) -> list[str]:
    out = [f"epoch {old['epoch']} {key}: recorded {old[key]!r}, now {new[key]!r}"
           for old, new in zip(old_epochs, new_epochs) for key in COMPARED if not _close(old[key], new[key], tol)]
    if len(old_epochs) != len(new_epochs):
        out.append(f"epochs: recorded {len(old_epochs)}, now {len(new_epochs)}")
    return out


def _compare_metrics(old: dict, new: dict, tol: float) -> list[str]:
    """Every compared metric in the record or the re-run must be in both and agree."""
    out = []
    for key in METRICS:
        if key not in old and key not in new:
            continue
        if key not in old or key not in new:
            out.append(f"metrics {key}: {'missing from the record' if key not in old else 'not produced now'}")
        elif not _close(old[key], new[key], tol):
            out.append(f"metrics {key}: recorded {old[key]!r}, now {new[key]!r}")
    return out


def _close(a: float, b: float, tol: float) -> bool:
    if a == b or (math.isnan(a) and math.isnan(b)):  # a diverged run (NaN loss) reproduces as NaN
        return True
    return tol > 0.0 and math.isclose(a, b, rel_tol=tol, abs_tol=tol)
