"""One workflow job: train several runs of one variant in one process, one result file per run.

Process start-up (imports, data load) is paid once per job instead of once per run. Each finished run
is first stored in a run store keyed by the spec hash and split (`.resume`), and kept there: Snakemake
deletes a job's outputs before it reruns it, so an interrupted job, a job whose runs were regrouped
(`runs_per_job`) or a job that gained a seed reuses every finished run instead of retraining it.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from cnnbench.config import VariantSpec
from cnnbench.data import file_hash, load_cache, load_fold
from cnnbench.errors import CnnbenchError
from cnnbench.io import atomic_path, read_json, write_json
from cnnbench.numtext import significant
from cnnbench.seeds import run_seed

RECORD_SCHEMA = 5  # bump when a record gains or changes fields: the workflow then retrains (a param)
# 4: run_seed, seed_offset, init_digest, status/diverged, strict JSON; memory.train_mb; latency moved to
#    the timing job
# 5: numerics (resolved precision, compile and its time, deterministic); env.gpu_slot on CUDA; test_prob;
#    per-image silent kernels in diagnostics.dead_filters; the translation probe


def run_name(fold: int, seed: int) -> str:
    return f"fold{fold}-seed{seed}"


def parse_run(name: str) -> tuple[int, int]:
    """'fold3-seed0' -> (3, 0)."""
    match = re.fullmatch(r"fold(\d+)-seed(\d+)", name)
    if not match:
        raise CnnbenchError(f"--runs: {name!r} is not a run name such as fold0-seed0")
    return int(match.group(1)), int(match.group(2))


class Progress:
    """One line per epoch: which run, which epoch, losses, speed and the job's time left."""

    def __init__(self, spec: VariantSpec, n_runs: int, log: Callable[[str], None]):
        self.spec, self.n_runs, self.log = spec, n_runs, log
        self.total_epochs = n_runs * spec.train["epochs"]
        self.done_epochs, self.seconds, self.run = 0, 0.0, (0, 0, 0)

    def start_run(self, index: int, fold: int, seed: int) -> None:
        self.run = (index, fold, seed)

    def skip_run(self) -> None:
        self.total_epochs -= self.spec.train["epochs"]

    def epoch(self, row: dict) -> None:
        self.done_epochs += 1
        self.seconds += row["train_time_s"] + row["eval_time_s"]
        left = self.seconds / self.done_epochs * (self.total_epochs - self.done_epochs)
        i, fold, seed = self.run
        self.log(f"[{self.spec.study}/{self.spec.name}] run {i + 1}/{self.n_runs} (fold {fold}, seed {seed}) "
                 f"epoch {row['epoch']}/{self.spec.train['epochs']}  "
                 f"train loss {row['train_loss']:.3f} acc {row['train_acc']:.1%}  "
                 f"val loss {row['val_loss']:.3f} acc {row['val_acc']:.1%}  "
                 f"{significant(row['train_time_s'])}s/epoch  job left ~{_duration(left)}")


def train_variant(spec: VariantSpec, *, data_path: str | Path, splits_path: str | Path,
                  runs: list[tuple[int, int]], out_dir: str | Path, weights_path: str | Path | None,
                  resume_root: str | Path, threads: int = 1, device: str = "auto", jobs_per_gpu: int = 1,
                  pretrained_path: str | Path | None = None, log: Callable[[str], None] | None = None) -> list[Path]:
    """Train `runs` [(fold, seed), ...] of one variant; the first one's weights go to `weights_path`."""

    from cnnbench.env import environment
    from cnnbench.measure import cost
    from cnnbench.runtime import start_job
    from cnnbench.train import fit, labels_per_class, warm_up

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    dev, gpu_slot = start_job(device, threads, jobs_per_gpu, deterministic=spec.numerics.get("deterministic", False),
                              log=log)
    images = load_cache(data_path)
    split_sha, data_sha = file_hash(splits_path), file_hash(data_path)
    resume = Path(resume_root) / spec.name / f"{spec.spec_hash}-{split_sha}"
    progress = Progress(spec, len(runs), log)
    env = {**environment(dev), **({"gpu_slot": gpu_slot} if gpu_slot else {})}
    job_cost = cost(spec)  # the same for every run of the variant
    warm_up(spec, dev)  # one-time process costs stay out of the first run's memory and time
    pretrained, source = load_pretrained(spec, pretrained_path)

    def train(fold: int, seed: int, on_epoch=None):
        train_idx, val_idx = load_fold(splits_path, fold, images.y)
        train_idx = labels_per_class(train_idx, images.y, spec.train.get("labels_per_class"))  # what it trains on
        result = fit(spec, images, train_idx, val_idx, seed=run_seed(seed, fold, spec.seed_offset), device=dev,
                     on_epoch=on_epoch, pretrained=pretrained)
        return result, train_idx, val_idx

    written = []
    for index, (fold, seed) in enumerate(runs):
        name = run_name(fold, seed)
        stored = resume / f"{name}.json"
        if reusable(stored):
            log(f"[{spec.study}/{spec.name}] {name}: finished earlier, reusing {stored}")
            progress.skip_run()
        else:
            progress.start_run(index, fold, seed)
            started = datetime.now(timezone.utc)
            result, train_idx, val_idx = train(fold, seed, progress.epoch)
            record = make_record(spec, fold, seed, result, train_idx, val_idx, job_cost,
                                 {"split_sha256": split_sha, "data_sha256": data_sha, "name": images.name},
                                 env, started)
            if source:
                record["pretrained"] = source
            if index == 0 and weights_path is not None:
                _save_weights(resume / f"{name}.pt", result.model, spec, fold, seed)
            write_json(stored, record)
        out = Path(out_dir) / f"{name}.json"
        write_json(out, read_json(stored))
        written.append(out)
    if weights_path is not None:
        first = resume / f"{run_name(*runs[0])}.pt"
        if not first.exists():  # its record was reused from a job that did not keep weights: train it again
            _save_weights(first, train(*runs[0])[0].model, spec, *runs[0])
        with atomic_path(weights_path) as tmp:
            shutil.copyfile(first, tmp)
    return written


def make_record(spec: VariantSpec, fold: int, seed: int, result, train_idx: np.ndarray, val_idx: np.ndarray,
                cost: dict, data: dict, env: dict, started: datetime) -> dict:
    """One run's record: what was trained (spec, seed, fold, data), what came out, where, and how fast."""
    dead, after_s = result.after["dead_filters"], result.after_s
    return {
        "schema": RECORD_SCHEMA,
        "study": spec.study, "variant": spec.name, "fold": fold, "seed": seed,
        "seed_offset": spec.seed_offset, "run_seed": run_seed(seed, fold, spec.seed_offset),
        "init_digest": result.init_digest, "spec_hash": spec.spec_hash,
        "status": "diverged" if result.diverged else "ok", "diverged": result.diverged,
        "data": {**data, "n_train": int(len(train_idx)), "n_val": int(len(val_idx))},
        "metrics": run_metrics(result),
        "cost": cost,
        # measured while other jobs of the workflow may share the machine: see cnnbench.timing for the
        # figures measured alone, which the report compares
        "speed": {"under_load": True, "train_img_per_s": result.train_img_per_s,
                  "epoch_time_s": result.train_time_s / len(result.epochs),
                  "train_time_s": result.train_time_s,
                  "eval_time_s": sum(e["eval_time_s"] for e in result.epochs) + after_s.get("official_test", 0.0),
                  "measure_time_s": sum(s for name, s in after_s.items() if name != "official_test"),
                  "images_seen": result.images_seen, "fit_wall_s": result.wall_s},
        "memory": result.memory,
        "numerics": result.numerics,
        "diagnostics": {"dead_filters": dead,
                        "dead_fraction": (sum(d["dead"] for d in dead.values()) /
                                          max(1, sum(d["total"] for d in dead.values()))) if dead else None},
        "epochs": result.epochs,
        "val_pred": result.val_pred.tolist(),  # in the order of the fold's validation indices
        "probe": result.after.get("translation_probe"),  # translation probe: accuracy on shifted images, equivariance per stage
        # class probabilities on the test images (official split or held-out part): ensembles average them
        **({"test_prob": encode_array(result.test_prob)} if result.test_prob is not None else {}),
        "env": env,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "spec": spec.run_dict(),
    }


def load_pretrained(spec: VariantSpec, path: str | Path | None) -> tuple[dict | None, dict | None]:
    """The state dict a `pretrained:` variant starts from, and its provenance for every run record (the
    file's hash, the source network's spec hash, how well it did on its own task)."""
    if not spec.train.get("pretrained"):
        return None, None
    if path is None:
        raise CnnbenchError(f"variant {spec.name!r} starts from pretrained weights {spec.train['pretrained']!r}: "
                            "pass --pretrained (the workflow's pretrain job writes them)")
    import torch

    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved.get("spec_hash") != spec.pretrain["spec_hash"]:
        raise CnnbenchError(f"{path}: pretrained for spec {saved.get('spec_hash')}, this variant needs "
                            f"{spec.pretrain['spec_hash']}; rerun the pretrain job")
    return saved["state_dict"], {"name": spec.train["pretrained"], "sha256": file_hash(path),
                                 "spec_hash": saved["spec_hash"], "source_val_acc": saved["val_acc"],
                                 "source_data": saved["data"]}


def pretrain(spec: VariantSpec, *, out: str | Path, threads: int = 1, device: str = "auto",
             source: dict | None = None, jobs_per_gpu: int = 1, log: Callable[[str], None] | None = None) -> dict:
    """Train a `pretrain:` entry's network once on its source data: 90% to train, a stratified 10% to
    report how well it learned its own task; the weights (all layers) go to `out` with that figure.
    `source` is the entry's whole data section (root, path); spec.data, its identity, lacks where the
    images are stored."""
    import torch
    from sklearn.model_selection import train_test_split

    from cnnbench.config import data_identity
    from cnnbench.data import load_source
    from cnnbench.runtime import start_job
    from cnnbench.train import fit

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if source is None:
        source = spec.data  # enough for data sets that need no root or path
    elif data_identity(source) != spec.data:
        raise CnnbenchError(f"pretrain {spec.name}: --source {data_identity(source)} is not the data the spec was "
                            f"made for ({spec.data}); re-run the workflow so that both come from the same config")
    dev, _ = start_job(device, threads, jobs_per_gpu, deterministic=spec.numerics.get("deterministic", False), log=log)
    images = load_source(source, spec.split["split_seed"])
    train_idx, val_idx = train_test_split(np.arange(len(images.y)), test_size=0.1, stratify=images.y,
                                          random_state=spec.split["split_seed"])
    train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
    log(f"[{spec.study}/{spec.name}] pretraining on {len(train_idx)} images of {spec.data}")
    result = fit(spec, images, train_idx, val_idx, seed=run_seed(0, 0, spec.seed_offset), device=dev,
                 on_epoch=lambda row: log(f"[{spec.study}/{spec.name}] epoch {row['epoch']}/{spec.train['epochs']} "
                                          f"val acc {row['val_acc']:.1%}"))
    meta = {"spec_hash": spec.spec_hash, "val_acc": result.epochs[-1]["val_acc"], "data": spec.data,
            "n_train": int(len(train_idx))}
    with atomic_path(out) as tmp:
        torch.save({**meta, "spec": spec.run_dict(),
                    "state_dict": {k: v.cpu() for k, v in result.model.state_dict().items()}}, tmp)
    return meta


def encode_array(a: np.ndarray) -> dict:
    """A float16 array inside a JSON record, compactly (500 x 10 probabilities: 13 kB)."""
    import base64

    a = np.ascontiguousarray(a, dtype=np.float16)
    return {"dtype": "float16", "shape": list(a.shape), "base64": base64.b64encode(a.tobytes()).decode("ascii")}


def decode_array(d: dict) -> np.ndarray:
    import base64

    return np.frombuffer(base64.b64decode(d["base64"]), dtype=d["dtype"]).reshape(d["shape"])


def reusable(stored: Path) -> bool:
    """A finished run in the run store that can be reused: present and a complete record (a store damaged
    by hand is retrained rather than trusted)."""
    if not stored.exists():
        return False
    from cnnbench.results import check_record

    try:
        check_record(stored)  # what collect will demand of it (a copy edited by hand is retrained)
    except CnnbenchError:
        return False
    return True


def run_metrics(result) -> dict:
    """A run's headline numbers: the final epoch's, the best validation epoch, and the test images (the
    official split or the held-out part). Reproducible numbers only: the test pass's time goes to
    `speed.eval_time_s`, so that a rerun's metrics equal the first run's."""
    last = result.epochs[-1]
    best = max(result.epochs, key=lambda e: e["val_acc"])
    return {"val_acc": last["val_acc"], "val_loss": last["val_loss"], "train_acc": last["train_acc"],
            "train_loss": last["train_loss"], "best_val_acc": best["val_acc"], "best_epoch": best["epoch"],
            **(result.test or {})}


def _save_weights(path: Path, model, spec: VariantSpec, fold: int, seed: int) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save({"spec": spec.run_dict(), "fold": fold, "seed": seed,
                    "state_dict": {k: v.cpu() for k, v in model.state_dict().items()}}, tmp)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
