"""`cnnbench` command line: the thin entry point that workflow rules and users call.

Imports are deferred to each command so that light commands (describe, list-models) start fast and
training jobs pay only for what they use. A `CnnbenchError` is printed as one line, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from cnnbench.errors import CnnbenchError


def _cmd_prepare_data(a: argparse.Namespace) -> None:
    from cnnbench.data import load_source, save_cache
    from cnnbench.env import check_torchvision

    check_torchvision()  # the report needs it: a broken torch/torchvision pair stops here, before training
    images = load_source(a.data_json, a.split_seed)
    save_cache(images, a.out)
    test = f", test {len(images.y_test)}" if images.has_test else ""
    print(f"{images.name}: {len(images.y)} images {images.shape}{test} -> {a.out}", file=sys.stderr)


def _args_prepare_data(sub) -> None:
    s = sub.add_parser("prepare-data", help="[step] load a data set once and cache it as .npz")
    s.add_argument("--data-json", required=True, type=_json_object, help="the study's data section, as JSON")
    s.add_argument("--split-seed", type=int, default=0, help="seed of the stratified subset, if any")
    s.add_argument("--out", required=True)
    s.set_defaults(func=_cmd_prepare_data)


def _cmd_split(a: argparse.Namespace) -> None:
    from cnnbench.data import load_cache, make_splits, save_splits

    y = load_cache(a.data).y
    save_splits(a.out, make_splits(y, a.folds, a.repeats, a.split_seed), y, a.folds, a.repeats, a.split_seed)
    print(f"{a.repeats} x {a.folds}-fold stratified split of {len(y)} images -> {a.out}", file=sys.stderr)


def _args_split(sub) -> None:
    s = sub.add_parser("split", help="[step] write the stratified k-fold split every run reads")
    s.add_argument("--data", required=True)
    s.add_argument("--folds", type=_fold_count, required=True)
    s.add_argument("--repeats", type=_positive, default=1)
    s.add_argument("--split-seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.set_defaults(func=_cmd_split)


def _cmd_train(a: argparse.Namespace) -> None:
    from cnnbench.runner import train_variant

    spec = _spec(a.spec)
    from cnnbench.runner import parse_run

    train_variant(spec, data_path=a.data, splits_path=a.splits, runs=[parse_run(r) for r in a.runs],
                  out_dir=a.out_dir, weights_path=a.weights, resume_root=a.resume_root, threads=a.threads,
                  device=a.device, jobs_per_gpu=a.jobs_per_gpu, pretrained_path=a.pretrained)


def _args_train(sub) -> None:
    s = sub.add_parser("train", help="[step] train the runs of one variant (one result file per run)")
    s.add_argument("--spec", required=True, type=_json_object, help="resolved variant spec as JSON (from the workflow)")
    s.add_argument("--data", required=True)
    s.add_argument("--splits", required=True)
    s.add_argument("--runs", nargs="+", required=True, help="run names: fold<k>-seed<s> ...")
    s.add_argument("--out-dir", required=True)
    s.add_argument("--weights", help="where to save the first run's weights")
    s.add_argument("--resume-root", required=True, help="store of finished runs of interrupted jobs")
    _execution_args(s)
    s.add_argument("--pretrained", help="weights a pretrained: variant starts from (the pretrain job's output)")
    s.set_defaults(func=_cmd_train)


def _cmd_pretrain(a: argparse.Namespace) -> None:
    from cnnbench.runner import pretrain

    meta = pretrain(_spec(a.spec), out=a.out, threads=a.threads, device=a.device, source=a.source,
                    jobs_per_gpu=a.jobs_per_gpu)
    print(f"pretrained -> {a.out}: {meta['val_acc']:.1%} on its own held-out 10%", file=sys.stderr)


def _args_pretrain(sub) -> None:
    s = sub.add_parser("pretrain", help="[step] train a pretrain: entry's network once on its source data")
    s.add_argument("--spec", required=True, type=_json_object, help="the source network's spec as JSON (from the workflow)")
    s.add_argument("--source", type=_json_object,
                   help="the entry's data section as JSON, root/path included (default: the spec's data identity)")
    s.add_argument("--out", required=True)
    _execution_args(s)
    s.set_defaults(func=_cmd_pretrain)


def _cmd_time(a: argparse.Namespace) -> None:
    from pathlib import Path

    from cnnbench.config import AA_CONTROL
    from cnnbench.io import read_json, write_json
    from cnnbench.timing import time_study

    specs = read_json(a.specs, "specs file")
    specs = list(specs.values()) if isinstance(specs, dict) else specs  # collect's specs.json: name -> spec
    if not isinstance(specs, list) or not specs or not all(isinstance(d, dict) for d in specs):
        raise CnnbenchError(f"--specs {a.specs}: a JSON list of resolved variant specs is expected (the workflow "
                            "writes results/<study>/timing-specs.json), or collect's results/<study>/specs.json")
    specs = [_spec(d, f"--specs {a.specs}: spec {i + 1}") for i, d in enumerate(specs)]
    names = [s.name for s in specs]
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise CnnbenchError(f"--specs {a.specs}: variant(s) {', '.join(twice)} given twice; each variant's record "
                            "is <out-dir>/<variant>.json, so give each once")
    specs = [s for s in specs if s.name != AA_CONTROL] or specs  # collect's specs.json: the baseline's network
    out_dir = Path(a.out_dir)
    try:  # before any measurement, not after the first variant's
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CnnbenchError(f"--out-dir {out_dir}: cannot make this folder ({e.strerror}); give a folder") from None
    time_study(specs, data_path=a.data, splits_path=a.splits, device=a.device, threads=a.threads,
               jobs_per_gpu=a.jobs_per_gpu, on_record=lambda t: write_json(out_dir / f"{t['variant']}.json", t))
    print(f"[{specs[0].study}] {len(specs)} variant(s) timed alone -> {out_dir}/<variant>.json", file=sys.stderr)


def _args_time(sub) -> None:
    s = sub.add_parser("time", help="[step] measure the variants' speed alone, one after another (training img/s, "
                                    "s/epoch, latency, training memory)")
    s.add_argument("--specs", required=True,
                   help="JSON file: the resolved specs of the variants to time, in order (from the workflow), or a "
                        "study's specs.json")
    s.add_argument("--data", required=True)
    s.add_argument("--splits", required=True)
    _execution_args(s, threads="torch threads (as the training jobs use)",
                    jobs_per_gpu="slots per GPU; timing takes all of one GPU")
    s.add_argument("--out-dir", required=True, help="one <variant>.json timing record per variant goes here")
    s.set_defaults(func=_cmd_time)


def _cmd_collect(a: argparse.Namespace) -> None:
    from cnnbench.results import collect

    tables = collect(a.runs, a.out_dir, a.splits, a.data, a.timings, a.study_json)
    print(f"{len(tables['runs'])} runs -> {a.out_dir}/runs.parquet, epochs.parquet (+ .csv)", file=sys.stderr)


def _args_collect(sub) -> None:
    s = sub.add_parser("collect", help="[step] gather run files into runs/epochs tables")
    s.add_argument("runs", nargs="+")
    s.add_argument("--timings", nargs="*", default=[], help="timing files of `cnnbench time`")
    s.add_argument("--study-json", default="{}", type=_json_object, help="JSON: study name, baseline, references (for `plan`)")
    s.add_argument("--data", required=True, help="the data cache (true classes of the predictions)")
    s.add_argument("--splits", required=True, help="the split the runs used (maps predictions to images)")
    s.add_argument("--out-dir", required=True)
    s.set_defaults(func=_cmd_collect)


def _cmd_report(a: argparse.Namespace) -> None:
    from cnnbench.report import build_report

    build_report(results_dir=a.results, data_path=a.data, splits_path=a.splits, models_dir=a.models,
                 baseline=a.baseline, out=a.out, title=a.title, description=a.description,
                 variant_descriptions=a.variant_descriptions, references=a.references, chains=a.chains)
    print(f"report -> {a.out}", file=sys.stderr)


def _args_report(sub) -> None:
    s = sub.add_parser("report", help="[step] render the study's self-contained HTML report")
    s.add_argument("--results", required=True, help="results/<study> folder with runs.parquet")
    s.add_argument("--data", required=True)
    s.add_argument("--splits", required=True)
    s.add_argument("--models", required=True, help="folder of <variant>.pt weights")
    s.add_argument("--baseline", required=True)
    s.add_argument("--title", required=True)
    s.add_argument("--description", default="")
    s.add_argument("--variant-descriptions", default="{}", type=_json_object, help="JSON: variant -> description")
    s.add_argument("--references", default="{}", type=_json_object, help="JSON: variant -> the variant it is compared with")
    s.add_argument("--chains", default="{}", type=_json_object, help="JSON: variant -> its base chain (itself, its base, ...)")
    s.add_argument("--out", required=True)
    s.set_defaults(func=_cmd_report)


def _cmd_describe(a: argparse.Namespace) -> None:
    from cnnbench.describe import describe

    print(describe(a.name, config=a.config, input_shape=a.input, num_classes=a.classes))


def _args_describe(sub) -> None:
    s = sub.add_parser("describe", help="layer table (shapes, params, MACs, receptive field) of a variant or model")
    s.add_argument("name", help="a variant of --config, or a registered model")
    s.add_argument("--config", help="study config (default: config/config.yaml when it exists)")
    s.add_argument("--input", type=_ints, help="input shape C,H,W or CxHxW (default: the study's, or 1x28x28 for a model)")
    s.add_argument("--classes", type=_positive, help="number of classes (default: the study's, or 10 for a model)")
    s.set_defaults(func=_cmd_describe)


def _cmd_list_models(a: argparse.Namespace) -> None:
    from cnnbench.models.registry import get_entry, list_models

    for name in list_models():
        entry = get_entry(name)
        print(f"{name:11s} {entry.doc}" + ("" if entry.source == "cnnbench" else f"  [{entry.source}]"))
    print("also usable as a base: torchvision:<model>, timm:<model> (if timm is installed), and "
          "package.module:function (your own nn.Module)")


def _args_list_models(sub) -> None:
    s = sub.add_parser("list-models", help="registered models usable as a variant's base")
    s.set_defaults(func=_cmd_list_models)


def _cmd_loop_bench(a: argparse.Namespace) -> None:
    from cnnbench.loopbench import format_result, loop_bench

    r = loop_bench(a.config, a.variant, a.steps, a.repeats, a.threads, a.device, a.precision, a.compile)
    print(format_result(r))
    if a.json:
        from cnnbench.io import write_json

        write_json(a.json, r)


def _args_loop_bench(sub) -> None:
    s = sub.add_parser("loop-bench", help="img/s of the project's training loop vs a DataLoader loop and a tuned loop")
    s.add_argument("--config", default="config/config.yaml")
    s.add_argument("--variant", help="variant to train (default: the study's baseline)")
    s.add_argument("--steps", type=_positive, default=150, help="timed optimiser steps per measurement")
    s.add_argument("--repeats", type=_positive, default=3, help="alternating measurements of each loop")
    s.add_argument("--threads", type=_positive, default=1, help="torch threads (the workflow's default is 1)")
    s.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    s.add_argument("--precision", default="auto", choices=["auto", "fp32", "tf32", "bf16", "fp16"],
                   help="of the tuned and project loops (auto: bf16 on a GPU that has it, else fp32)")
    s.add_argument("--compile", default=None, type=_compile_mode,
                   help="off | on | max-autotune, for the tuned and project loops (default: on for CUDA, off on the CPU)")
    s.add_argument("--json", help="also write the result to this JSON file")
    s.set_defaults(func=_cmd_loop_bench)


def _cmd_gpu_sweep(a: argparse.Namespace) -> None:
    from cnnbench.gpucheck import no_gpu_reason
    from cnnbench.gpusweep import format_sweep, sweep

    device = a.device
    if device == "auto":
        device = "cpu" if no_gpu_reason() else "cuda"
    elif device == "cuda" and (why := no_gpu_reason()):
        raise CnnbenchError(f"gpu-sweep: no CUDA GPU here ({why}); run it on the GPU node, or pass --device cpu "
                            "to try the mechanics on the CPU")
    r = sweep(a.config, a.variant, a.jobs, device, a.seconds, a.threads,
              log=lambda m: print(m, file=sys.stderr, flush=True), repeats=a.repeats)
    print(format_sweep(r))
    if a.json:
        from cnnbench.io import write_json

        write_json(a.json, r)


def _args_gpu_sweep(sub) -> None:
    s = sub.add_parser("gpu-sweep", help="aggregate img/s of 1, 2, 4, 8 (16) training jobs sharing one GPU")
    s.add_argument("--config", default="config/config.yaml")
    s.add_argument("--variant", help="variant to train (default: the study's baseline)")
    s.add_argument("--jobs", type=_positive, nargs="+", help="concurrent job counts (default: 1 2 4 8, and 16 on a "
                                                            "node with 16 cores or more)")
    s.add_argument("--device", default="cuda", choices=["auto", "cpu", "cuda"],
                   help="cuda (default: what the sweep is for), cpu (its mechanics only), auto (cuda if present)")
    s.add_argument("--seconds", type=_positive_number, default=10.0, help="timed seconds per measurement")
    s.add_argument("--repeats", type=_positive, default=2,
                   help="times each count is measured, there and back (1 2 4 8 8 4 2 1): its spread (default 2)")
    s.add_argument("--threads", type=_positive, default=1, help="torch threads per job")
    s.add_argument("--json", help="also write the result to this JSON file")
    s.set_defaults(func=_cmd_gpu_sweep)


def _cmd_gpu_check(a: argparse.Namespace) -> int:
    from cnnbench.gpucheck import STEP_NAMES, format_summary, gpu_check

    for flag, names in (("--skip", a.skip), ("--only", a.only)):
        unknown = [s for s in names if s not in STEP_NAMES]
        if unknown:
            raise CnnbenchError(f"gpu-check {flag}: no step {unknown[0]!r}; the steps: {', '.join(STEP_NAMES)}")
    if a.skip and a.only:
        raise CnnbenchError("gpu-check: give --skip or --only, not both")
    code, summary = gpu_check(a.out, a.budget, work=a.work, time_studies=tuple(a.time_study),
                              study_limit_s=a.study_limit, total_s=a.total, jobs_per_gpu=a.jobs_per_gpu,
                              skip=tuple(a.skip), only=tuple(a.only))
    print(format_summary(summary))
    return code


def _args_gpu_check(sub) -> None:
    s = sub.add_parser("gpu-check", help="check the GPU path on this machine's GPU (<= 8 min, offline)")
    s.add_argument("--out", default="gpu-check/summary.json",
                   help="summary JSON; beside it only small files: JUnit XML, benchmark JSON, reports, logs.tar.gz")
    s.add_argument("--budget", type=_positive_number, default=480, help="seconds for all steps together (default 480)")
    s.add_argument("--work", help="folder for the steps' work (study folders, logs); default: a temporary one")
    s.add_argument("--time-study", action="append", default=[], metavar="CONFIG",
                   help="after the checks, run this study end to end from an empty folder at the sweep's best "
                        "jobs_per_gpu and record its wall time (repeatable; e.g. config/config.yaml)")
    s.add_argument("--study-limit", type=_positive_number, default=300, help="seconds allowed each --time-study (default 300)")
    s.add_argument("--total", type=_positive_number, help="seconds for everything, timed studies included: a study gets "
                                               "what is left (e.g. 560 inside a 10-minute session)")
    s.add_argument("--jobs-per-gpu", type=_positive, help="jobs_per_gpu for --time-study (default: the sweep's best)")
    s.add_argument("--skip", action="append", default=[], metavar="STEP",
                   help="leave out a step (repeatable; quote names with spaces, e.g. --skip 'kernel suite')")
    s.add_argument("--only", action="append", default=[], metavar="STEP",
                   help="run only this step (repeatable): a check split over several calls, e.g. --only "
                        "'concurrency sweep' --time-study config/config.yaml")
    s.set_defaults(func=_cmd_gpu_check)


def _cmd_ablate(a: argparse.Namespace) -> None:
    from cnnbench.ablate import ablate

    if Path(a.out).exists() and not a.force and Path(a.out).resolve() != Path(a.config).resolve():
        raise CnnbenchError(f"ablate --out: {a.out} exists; choose a new file, or add --force to replace it")
    added = ablate(a.config, a.variant, [k.strip() for k in a.remove.split(",") if k.strip()], a.out)
    here = Path("Snakefile").is_file()  # the command below runs from the checkout
    print(f"wrote {a.out}: {len(added)} leave-one-out variant(s) of {a.variant}: {', '.join(added)}\n"
          f"run them with{'' if here else ' (from the cnnbench checkout)'}: snakemake --cores all --configfile "
          f"{a.out if here else Path(a.out).resolve()}\n"
          f"(the new comparisons join the report's one Holm family, so the existing comparisons' adjusted p values, "
          f"and a verdict near the line, can change)")


def _args_ablate(sub) -> None:
    s = sub.add_parser("ablate", help="write leave-one-out variants of a full model into a study config")
    s.add_argument("variant", help="the full model: a variant with the choices on")
    s.add_argument("--remove", required=True, help="comma-separated knobs to switch off one at a time, e.g. bn,dropout,shortcut")
    s.add_argument("--config", default="config/config.yaml")
    s.add_argument("--out", required=True, help="the new study config (the input config plus the new variants)")
    s.add_argument("--force", action="store_true", help="replace --out if it exists")
    s.set_defaults(func=_cmd_ablate)


def _cmd_verify(a: argparse.Namespace) -> int:
    from cnnbench.verify import verify

    verdict = verify(a.record, a.data, a.splits, a.device)
    print(verdict)
    return 0 if verdict.match else 1


def _args_verify(sub) -> None:
    s = sub.add_parser("verify", help="re-run a run from its record; exact match expected on the CPU")
    s.add_argument("record", help="results/<study>/runs/<variant>/fold<k>-seed<s>.json")
    s.add_argument("--data", help="data cache the run used (default: next to the record's study folder)")
    s.add_argument("--splits", help="split file the run used (default: next to the record's study folder)")
    s.add_argument("--device", choices=["cpu", "cuda"], help="default: the device the run used")
    s.set_defaults(func=_cmd_verify)


def _cmd_plan(a: argparse.Namespace) -> None:
    from cnnbench.plan import format_plan, plan

    print(format_plan(plan(a.results, [d / 100 for d in a.delta], a.folds)))


def _args_plan(sub) -> None:
    s = sub.add_parser("plan", help="folds x repeats x seeds needed to detect a difference, from a finished study")
    s.add_argument("results", help="results/<study> of a finished (pilot) study")
    s.add_argument("--delta", type=_accuracy_points, nargs="+", default=[0.5, 1.0, 2.0],
                   help="differences to detect, in accuracy points (default: 0.5 1 2)")
    s.add_argument("--folds", type=_fold_count, nargs="*", default=[],
                   help="fold counts to consider besides the pilot's (optimistic: see cnnbench/plan.py)")
    s.set_defaults(func=_cmd_plan)


def _cmd_bench_report(a: argparse.Namespace) -> None:
    from cnnbench.benchreport import bench_report

    print(bench_report(a.json, a.other, a.threshold, a.html))


def _args_bench_report(sub) -> None:
    s = sub.add_parser("bench-report", help="theory vs practice table from pytest-benchmark JSON (two: the change)")
    s.add_argument("json", help="pytest tests/bench --benchmark-only --benchmark-json FILE")
    s.add_argument("other", nargs="?", help="a second run (another machine or commit) to compare with")
    s.add_argument("--threshold", type=_fraction, default=0.10, help="flag medians that moved more than this (0.10 = 10%%)")
    s.add_argument("--html", help="also write an HTML page here")
    s.set_defaults(func=_cmd_bench_report)


def _ints(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.lower().replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape such as 1x28x28") from None
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give channels x height x width, each at least 1 (e.g. 3x32x32)")
    return shape


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("a JSON object {...} is expected")
    return value


def _spec(d: dict, where: str = "--spec"):
    from cnnbench.config import VariantSpec

    try:
        return VariantSpec.from_dict(d)
    except (TypeError, KeyError) as e:
        raise CnnbenchError(f"{where}: not a resolved variant spec ({e}); the workflow passes it, see "
                            "results/<study>/specs.json for one") from None


def _compile_mode(text: str) -> bool | str:
    modes = {"off": False, "false": False, "on": True, "true": True, "max-autotune": "max-autotune"}
    if text.lower() not in modes:
        raise argparse.ArgumentTypeError(f"{text!r}: use off, on or max-autotune")
    return modes[text.lower()]


def _execution_args(s: argparse.ArgumentParser, threads: str = "torch threads",
                    jobs_per_gpu: str = "jobs that share one GPU (a slot each)") -> None:
    """Where and how a workflow job computes (the config's `execution` section, as the rules pass it)."""
    s.add_argument("--threads", type=_positive, default=1, help=threads)
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--jobs-per-gpu", type=_positive, default=1, help=jobs_per_gpu)


def _finite(text: str) -> float:
    """A finite number: 'nan' and 'inf' pass float() and then quietly mean nothing."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r}: give a finite number")
    return value


def _positive_number(text: str) -> float:
    """A time, a difference: above 0 (a plan for a -1 point difference has no answer)."""
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number above 0")
    return value


def _accuracy_points(text: str) -> float:
    """A difference in accuracy points: above 0 and at most 100."""
    value = _positive_number(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"{text!r}: a difference in accuracy points is at most 100 (1 = one point)")
    return value


def _fraction(text: str) -> float:
    """A threshold of at least 0 (0 flags every change)."""
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of at least 0, e.g. 0.10 for 10%")
    return value


def _fold_count(text: str) -> int:
    value = _positive(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"{value}: cross-validation needs at least 2 folds")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cnnbench", description=__doc__.splitlines()[0],
        epilog="Commands marked [step] are the workflow's own steps, called by the Snakefile's rules: run a "
               "study with `snakemake --cores all [--configfile config/X.yaml]` rather than calling them one by one.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_args_prepare_data, _args_split, _args_train, _args_pretrain, _args_time, _args_collect, _args_report, _args_describe, _args_loop_bench, _args_gpu_sweep, _args_gpu_check, _args_ablate, _args_verify, _args_plan, _args_bench_report, _args_list_models):
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = args.func(args)
    except CnnbenchError as e:
        print(f"cnnbench {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C, or Snakemake stopping its jobs: one line, not a traceback
        print(f"cnnbench {args.command}: interrupted; what it had not finished is redone on the next run",
              file=sys.stderr)
        return 130
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
