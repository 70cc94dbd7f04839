"""Run records -> tidy tables: one row per run (`runs`) and one row per run and epoch (`epochs`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd

from cnnbench.errors import CnnbenchError
from cnnbench.io import atomic_path, read_json, write_json

ID_COLUMNS = ["study", "variant", "fold", "seed", "spec_hash"]


REQUIRED = ("schema", "study", "variant", "fold", "seed", "spec_hash", "data", "metrics", "cost", "speed", "epochs",
            "val_pred", "env", "spec", "started_at", "finished_at")


def check_record(path: Path, data_sha: str | None = None, split_sha: str | None = None, *,
                 consistent: bool = True) -> dict:
    """A run record that a report can trust: strict JSON, every field, this record schema, made from the
    data cache and split that are on disk now, and (`consistent`) agreeing with itself. `cnnbench verify`
    skips the last check: it retrains the run and names every number that differs."""
    from cnnbench.runner import RECORD_SCHEMA

    r = read_json(path, "run record")
    if not isinstance(r, dict):
        raise CnnbenchError(f"{path}: not a run record (a JSON object is expected)")
    missing = [k for k in REQUIRED if k not in r]
    if missing:
        raise CnnbenchError(f"{path}: not a complete run record (missing {', '.join(missing)})")
    if r["schema"] != RECORD_SCHEMA:
        raise CnnbenchError(f"{path}: record schema {r['schema']}, this cnnbench writes {RECORD_SCHEMA}")
    epochs = r["epochs"]
    if not isinstance(epochs, list) or not epochs or not isinstance(epochs[-1], dict) \
            or not isinstance(r["metrics"], dict) or not isinstance(r["data"], dict) \
            or not isinstance(r["val_pred"], list):
        raise CnnbenchError(f"{path}: epochs, metrics, data or val_pred is not what a run record holds there")
    for key, sha in (("data_sha256", data_sha), ("split_sha256", split_sha)):
        if sha is not None and r["data"].get(key) != sha:
            raise CnnbenchError(f"{path}: trained on another {key.split('_')[0]} file ({r['data'].get(key)} != {sha})")
    if consistent:
        _check_consistent(path, r)
    return r


def _check_consistent(path: Path, r: dict) -> None:
    """The headline metrics are the last epoch's (runner.run_metrics) and there is one prediction per
    validation image: a record edited by hand, or damaged while staying valid JSON, disagrees with itself."""
    last = r["epochs"][-1]
    for key in ("val_acc", "val_loss", "train_acc", "train_loss"):
        if r["metrics"].get(key) != last.get(key):
            raise CnnbenchError(f"{path}: metrics.{key} is {r['metrics'].get(key)!r} but its last epoch's is "
                                f"{last.get(key)!r}: the record was changed after training")
    if len(r["val_pred"]) != r["data"].get("n_val"):
        raise CnnbenchError(f"{path}: {len(r['val_pred'])} validation predictions for {r['data'].get('n_val')} "
                            "validation images: the record was changed after training")


def load_records(paths: Iterable[str | Path], data_path: str | Path | None = None,
                 split_path: str | Path | None = None) -> list[dict]:
    """Every record, checked. Unusable ones are moved aside to `quarantine/` next to `runs/` and named in
    one error; the next `snakemake` reruns their training jobs, which reuse every finished run from the
    run store, so only what was lost is restored or retrained."""
    from cnnbench.data import file_hash

    paths = [Path(p) for p in paths]
    for path, what in ((data_path, "data cache"), (split_path, "split file")):
        if path and not Path(path).is_file():
            raise CnnbenchError(f"{path}: no such {what}; run the workflow's first steps (prepare_data, split)")
    data_sha = file_hash(data_path) if data_path else None
    split_sha = file_hash(split_path) if split_path else None
    records, bad = {}, []
    for p in paths:
        try:
            records[p] = check_record(p, data_sha, split_sha)
        except CnnbenchError as e:
            bad.append((p, str(e)))
    if bad:
        _quarantine(bad, lambda p: p.parents[2] / "quarantine" / p.parent.name / p.name)
        first, why = bad[0]
        raise CnnbenchError(f"{len(bad)} run record(s) unusable, e.g. {why}; moved to "
                            f"{first.parents[2] / 'quarantine'}; run snakemake again: it restores only these runs "
                            "from the run store, or retrains those whose stored copy is unusable too")
    return [records[p] for p in paths]


def _quarantine(bad: list[tuple[Path, str]], target_of: Callable[[Path], Path]) -> None:
    """Move unusable records aside (to `target_of(path)`), so that the job that made them reruns: a run
    record is restored from the run store (runner.py) or retrained, a timing record measured again."""
    import shutil

    for path, _ in bad:
        target = target_of(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            shutil.move(path, target)


def check_shared_precision(records: list[dict], references: dict[str, str]) -> None:
    """A comparison is only fair when both sides computed alike: refuse a variant whose runs resolved to
    different precisions, or one compared with a variant that ran in another (`precision: auto` resolves
    per device, so a study spread over different GPUs, or GPUs and CPUs, can mix them)."""
    used: dict[str, set] = {}
    for r in records:
        used.setdefault(r["variant"], set()).add(r.get("numerics", {}).get("precision", "fp32"))
    fix = ("set execution.precision to one value (e.g. fp32) or run every job on the same kind of device, "
           "then delete the variant's runs (results/<study>/runs/<variant>) to retrain them")
    for variant, precisions in used.items():
        if len(precisions) > 1:
            raise CnnbenchError(f"variant {variant!r}: its runs used different precisions "
                                f"({', '.join(sorted(precisions))}); {fix}")
    for variant, ref in references.items():
        if variant in used and ref in used and used[variant] != used[ref]:
            raise CnnbenchError(f"variant {variant!r} ran in {min(used[variant])} but its comparison {ref!r} ran in "
                                f"{min(used[ref])}: the variants of one comparison must share a precision; {fix}")


def runs_table(records: list[dict]) -> pd.DataFrame:
    """One row per run: ids, data, metrics, cost, speed (latency included), memory, diagnostics, env."""
    rows = []
    for r in records:
        row = {k: r[k] for k in ID_COLUMNS}
        row["status"] = r.get("status", "ok")
        row["diverged_epoch"] = (r.get("diverged") or {}).get("epoch")
        row["diverged_reason"] = (r.get("diverged") or {}).get("reason")
        row |= {f"data_{k}": v for k, v in r["data"].items()}
        for section in ("metrics", "cost", "speed", "env", "numerics"):
            row |= {k: v for k, v in r.get(section, {}).items() if not isinstance(v, (dict, list))}
        row |= {f"memory_{k}": v for k, v in r.get("memory", {}).items()}
        row["dead_fraction"] = r.get("diagnostics", {}).get("dead_fraction")
        row |= first_layer_silence(r)
        if r.get("pretrained"):
            row |= {"pretrained": r["pretrained"]["name"], "pretrained_sha256": r["pretrained"]["sha256"],
                    "pretrained_source_val_acc": r["pretrained"]["source_val_acc"]}
        row |= {"started_at": r["started_at"], "finished_at": r["finished_at"]}
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["variant", "seed", "fold"], ignore_index=True)


def first_layer_silence(record: dict) -> dict:
    """The first ReLU layer's kernels that do not fire, both ways (measure.dead_filters), as run columns."""
    layers = record.get("diagnostics", {}).get("dead_filters") or {}
    if not layers:
        return {}
    first = next(iter(layers.values()))
    return {f"first_layer_{k}": first[k] for k in ("dead", "total", "zero_maps_probe", "silent_half") if k in first}


def epochs_table(records: list[dict]) -> pd.DataFrame:
    rows = [{**{k: r[k] for k in ID_COLUMNS}, **{k: v for k, v in e.items() if not isinstance(v, dict)}}
            for r in records for e in r["epochs"]]
    return pd.DataFrame(rows).sort_values(["variant", "seed", "fold", "epoch"], ignore_index=True)


def layers_table(records: list[dict]) -> pd.DataFrame:
    """One row per run, epoch and conv/linear layer: mean gradient norm over the epoch, weight norm at its end."""
    rows = []
    for r in records:
        ids = {k: r[k] for k in ID_COLUMNS}
        for e in r["epochs"]:
            for layer, g in e.get("grad_norm", {}).items():
                rows.append({**ids, "epoch": e["epoch"], "layer": layer, "grad_norm": g,
                             "weight_norm": e["weight_norm"][layer]})
    return pd.DataFrame(rows, columns=[*ID_COLUMNS, "epoch", "layer", "grad_norm", "weight_norm"])


def dead_filters_table(records: list[dict]) -> pd.DataFrame:
    """One row per run and ReLU layer: channels that never fire on the validation set (final model), and
    the per-image view (measure.dead_filters)."""
    rows = [{**{k: r[k] for k in ID_COLUMNS}, "layer": layer, **{k: v for k, v in d.items() if not isinstance(v, list)},
             "fraction": d["dead"] / d["total"]}
            for r in records for layer, d in r.get("diagnostics", {}).get("dead_filters", {}).items()]
    return pd.DataFrame(rows, columns=[*ID_COLUMNS, "layer", "dead", "total", "fraction", "zero_maps_probe",
                                       "silent_half", "silent_mean"])


def predictions_table(records: list[dict], split_path: str | Path, labels) -> pd.DataFrame:
    """One row per run and validation image: the image's index in the data cache, its true and predicted
    class; what confusion matrices, misclassified galleries and per-example tests are made of."""
    val = read_json(split_path)["val"]
    frames = [pd.DataFrame({**{k: r[k] for k in ID_COLUMNS}, "index": val[r["fold"]], "pred": r["val_pred"]})
              for r in records]
    if not frames:
        return pd.DataFrame(columns=[*ID_COLUMNS, "index", "true", "pred", "correct"])
    df = pd.concat(frames, ignore_index=True)
    df.insert(len(ID_COLUMNS) + 1, "true", labels[df["index"].to_numpy()])
    return df.assign(correct=df["true"] == df["pred"])


TIMING_KEYS = ("variant", "train_img_per_s", "epoch_time_s", "latency_b1_ms", "env")


def read_timing(path: Path) -> dict:
    t = read_json(path, "timing record")
    missing = [k for k in TIMING_KEYS if not isinstance(t, dict) or k not in t]
    if not missing and not isinstance(t["env"], dict):
        missing = ["a mapping under env"]
    if missing:
        raise CnnbenchError(f"{path}: a timing record without {', '.join(missing)}; the file was changed or cut short")
    return t


def timing_table(paths: Iterable[str | Path]) -> pd.DataFrame:
    """One row per variant: speed measured alone (cnnbench.timing), with the device it ran on. Unusable
    records are moved aside to `quarantine/timing/` and named in one error, so the next `snakemake`
    times the study again (a corrupt file left in place was trusted by Snakemake as done)."""
    rows, bad = [], []
    for path in map(Path, paths):
        try:
            t = read_timing(path)
        except CnnbenchError as e:
            bad.append((path, str(e)))
            continue
        rows.append({**{k: v for k, v in t.items() if not isinstance(v, (dict, list))}, **t.get("numerics", {}),
                     "device_name": t["env"].get("device_name"), "threads": t["env"].get("threads")})
    if bad:  # results/<study>/timing/<variant>.json -> results/<study>/quarantine/timing/
        _quarantine(bad, lambda p: p.parents[1] / "quarantine" / "timing" / p.name)
        raise CnnbenchError(f"{len(bad)} timing record(s) unusable, e.g. {bad[0][1]}; moved to "
                            f"{bad[0][0].parents[1] / 'quarantine' / 'timing'}; run snakemake again: it times the "
                            "study's variants again (one job, so that their speeds stay comparable)")
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["variant"])


def job_overhead(runs: pd.DataFrame, benchmark_dir: str | Path) -> pd.DataFrame:
    """Per training job: wall time (Snakemake's `benchmark:` file), time spent training, evaluating and
    measuring (latency, dead filters), and the rest, the job's overhead: process start, imports (torch,
    and torch._dynamo, which torch.optim imports on first use), data loading, model building, writing."""
    rows = []
    for variant, g in runs.groupby("variant"):
        paths = [p for p in (Path(benchmark_dir) / f"{variant}.tsv", *Path(benchmark_dir).glob(f"{variant}.g*.tsv"))
                 if p.exists()]  # one file per training job of the variant (execution.runs_per_job)
        if paths:
            bench = pd.DataFrame([pd.read_csv(p, sep="\t").iloc[-1] for p in paths])
            rows.append({"variant": variant, "job_s": float(bench["s"].sum()),
                         "max_rss_mb": float(bench["max_rss"].max()),
                         "work_s": float(g["train_time_s"].sum() + g["eval_time_s"].sum()
                                         + g["measure_time_s"].sum())})
    df = pd.DataFrame(rows, columns=["variant", "job_s", "max_rss_mb", "work_s"])
    return df.assign(overhead_s=df["job_s"] - df["work_s"])


def write_test_probs(records: list[dict], images, path: Path) -> None:
    """Every run's test-image probabilities (`<variant>/fold<k>-seed<s>` keys) and the true labels, for
    the report's ensembles. Written even when the runs have none (no test split and no held-out part):
    an output the workflow declares, so that a lost file is made again rather than its section dropped."""
    import numpy as np

    from cnnbench.runner import decode_array, run_name

    # a diverged run's probabilities are NaN: left out here, and its variant out of the ensembles
    probs = {f"{r['variant']}/{run_name(r['fold'], r['seed'])}": decode_array(r["test_prob"])
             for r in records if "test_prob" in r and r.get("status", "ok") != "diverged"}
    probs = {k: p for k, p in probs.items() if np.isfinite(p).all()}
    if images.y_test is None:
        probs = {}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, y_test=np.empty(0, np.int64) if images.y_test is None else images.y_test, **probs)


def write_table(df: pd.DataFrame, path_stem: str | Path) -> list[Path]:
    """Write `<stem>.parquet` (typed, for code) and `<stem>.csv` (for people and spreadsheets)."""
    stem = Path(path_stem)
    out = []
    for suffix, write in ((".parquet", lambda p: df.to_parquet(p, index=False)),
                          (".csv", lambda p: df.to_csv(p, index=False))):
        path = stem.with_suffix(suffix)
        with atomic_path(path) as tmp:
            write(tmp)
        out.append(path)
    return out


def collect(paths: Iterable[str | Path], out_dir: str | Path, split_path: str | Path, data_path: str | Path,
            timing_paths: Iterable[str | Path] = (), study: dict | None = None) -> dict[str, pd.DataFrame]:
    """Write the runs, epochs, layers, dead_filters, predictions and timing tables, `specs.json` (each
    variant's resolved spec, in the given order) and `study.json` (baseline and comparisons)."""
    from cnnbench.data import load_cache
    from cnnbench.probe import probe_table

    records = load_records(paths, data_path, split_path)
    check_shared_precision(records, (study or {}).get("references", {}))
    labels = load_cache(data_path).y
    tables = {"runs": runs_table(records), "epochs": epochs_table(records), "layers": layers_table(records),
              "dead_filters": dead_filters_table(records),
              "predictions": predictions_table(records, split_path, labels), "timing": timing_table(timing_paths),
              "probe": probe_table(records)}
    for name, df in tables.items():
        write_table(df, Path(out_dir) / name)
    write_test_probs(records, load_cache(data_path), Path(out_dir) / "test_probs.npz")
    specs = {}
    for r in records:
        specs.setdefault(r["variant"], r["spec"])
    write_json(Path(out_dir) / "specs.json", specs)
    write_json(Path(out_dir) / "study.json", study or {})
    return tables
