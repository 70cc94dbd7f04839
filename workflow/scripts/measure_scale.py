"""How the workflow scales: DAG, collect and report for a 100-variant x 5-fold x 10-seed study (5,000 runs).

    python workflow/scripts/measure_scale.py [--variants 100] [--folds 5] [--seeds 10] [--runs-per-job N]
        [--keep DIR]

Everything happens in a temporary folder. The run records are FABRICATED (copies of one real run with
made-up numbers, each marked "fabricated": true) and exist only to time `collect` and the report; they
never go near a real results folder. Prints one line per measurement and the sizes of the outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]


def study(variants: int, folds: int, seeds: int, runs_per_job: int | str = "all") -> dict:
    return {"study": "scale", "description": "synthetic scale check (fabricated runs)",
            "data": {"name": "digits"}, "protocol": {"folds": folds, "seeds": list(range(seeds)), "epochs": 3},
            "execution": {"device": "cpu", "threads": 1, "runs_per_job": runs_per_job}, "baseline": "v000",
            "variants": {f"v{i:03d}": {"base": "cnn", "width": 8 + i % 24, "dropout": round(0.01 * (i // 24), 2)}
                         for i in range(variants)}}


def timed(label: str, cmd: list[str], cwd: Path) -> float:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"{label} failed:\n{out.stderr[-3000:]}")
    print(f"{label}: {seconds:.1f} s", flush=True)
    return seconds


def fabricate(template: dict, spec: dict, fold: int, seed: int, rng) -> dict:
    """A copy of a real record with another variant, fold, seed and made-up accuracies: FABRICATED."""
    r = json.loads(json.dumps(template))
    acc = float(np.clip(0.9 + 0.002 * (spec["model"]["width"] or 8) + rng.normal(0, 0.01), 0, 1))
    r.update(variant=spec["name"], fold=fold, seed=seed, spec_hash=spec["hash"], spec=spec["run_dict"],
             fabricated=True)
    r["metrics"].update(val_acc=acc, best_val_acc=acc)
    for e in r["epochs"]:
        e["val_acc"] = acc
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", type=int, default=100)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--runs-per-job", type=int, default=None,
                   help="execution.runs_per_job (default: all runs of a variant in one job; 1 as on Slurm)")
    p.add_argument("--keep", help="keep the temporary folder here (default: delete it)")
    a = p.parse_args()
    sys.path.insert(0, str(REPO))
    from cnnbench.config import load_study
    from cnnbench.data import load_cache, load_fold
    from cnnbench.runner import train_variant

    work = Path(tempfile.mkdtemp(prefix="cnnbench-scale-"))
    cfg = study(a.variants, a.folds, a.seeds, a.runs_per_job or "all")
    (work / "study.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    n_runs = a.variants * a.folds * a.seeds
    print(f"{a.variants} variants x {a.folds} folds x {a.seeds} seeds = {n_runs} runs in {work}", flush=True)
    snake = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work), "--configfile",
             str(work / "study.yaml"), "--cores", "2"]
    timed("snakemake -n (DAG of the whole study)", [*snake, "-n", "-q"], work)
    timed("data and split (real)", [*snake, "results/scale/splits.json"], work)

    results = work / "results" / "scale"
    s = load_study(work / "study.yaml")
    base = s.variants["v000"]
    template_path = train_variant(base, data_path=results / "data.npz", splits_path=results / "splits.json",
                                  runs=[(0, 0)], out_dir=work / "template", weights_path=None,
                                  resume_root=work / "template-store", log=lambda m: None)[0]
    template = json.loads(template_path.read_text())
    images = load_cache(results / "data.npz")
    val_len = {f: len(load_fold(results / "splits.json", f, images.y)[1]) for f in s.fold_ids}
    rng = np.random.default_rng(0)
    paths = []
    start = time.perf_counter()
    for name, spec in s.variants.items():
        info = {"name": name, "model": spec.model, "hash": spec.spec_hash, "run_dict": spec.run_dict()}
        for seed in s.seeds:
            for fold in s.fold_ids:
                r = fabricate(template, info, fold, seed, rng)
                r["val_pred"] = rng.integers(0, 10, val_len[fold]).tolist()
                r["data"]["n_val"] = val_len[fold]
                path = results / "runs" / name / f"fold{fold}-seed{seed}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(r))
                paths.append(str(path.relative_to(work)))
    print(f"fabricated {len(paths)} records in {time.perf_counter() - start:.1f} s (not a measurement)", flush=True)
    study_json = json.dumps({"study": "scale", "baseline": "v000", "references": s.references})
    timed(f"collect ({len(paths)} records)",
          [sys.executable, "-m", "cnnbench.cli", "collect", *paths, "--data", "results/scale/data.npz", "--splits",
           "results/scale/splits.json", "--study-json", study_json, "--out-dir", "results/scale"], work)
    (results / "models").mkdir(exist_ok=True)
    timed(f"report ({a.variants} variants, {len(paths)} runs)",
          [sys.executable, "-m", "cnnbench.cli", "report", "--results", "results/scale", "--data",
           "results/scale/data.npz", "--splits", "results/scale/splits.json", "--models", "results/scale/models",
           "--baseline", "v000", "--title", "scale", "--references", json.dumps(s.references), "--out",
           "reports/scale/index.html"], work)
    for f in sorted((results).glob("*.parquet")) + [work / "reports" / "scale" / "index.html"]:
        print(f"  {f.relative_to(work)}: {f.stat().st_size / 2**20:.1f} MiB")
    if a.keep:
        shutil.move(str(work), a.keep)
        print(f"kept in {a.keep}")
    else:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
