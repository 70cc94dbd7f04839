"""The Snakemake workflow end to end on a tiny study: results, report, incremental reruns, bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.helpers import REPO, TINY_STUDY, run_numbers, tiny_study, write_yaml

pytestmark = pytest.mark.slow
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
                           "--configfile", str(workdir / "study.yaml"), "--cores", "2", *args],
                          capture_output=True, text=True, env=env)


def planned_train_jobs(workdir: Path) -> list[str]:
    out = snakemake(workdir, "-n")
    assert out.returncode == 0, out.stderr
    return sorted(re.findall(r"rule train(?:_\d+)?:\n(?:\s+\S.*\n)*?\s+wildcards: variant=(\S+)", out.stdout + out.stderr))


def plans_timing(workdir: Path) -> bool:
    out = snakemake(workdir, "-n")
    assert out.returncode == 0, out.stderr
    return bool(re.search(r"^rule time:$", out.stdout + out.stderr, re.M))


def held_out_study(**changes) -> dict:
    """The tiny study on 300 digits for the folds, as everywhere else, plus 75 held out of every fold for
    the ensembles: the `finished` study, and what the tests that change it start from."""
    return tiny_study(data={"name": "digits", "subset": 375, "holdout": 0.2}, **changes)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("study")
    write_yaml(workdir / "study.yaml", held_out_study())
    out = snakemake(workdir)
    assert out.returncode == 0, out.stdout + out.stderr
    return workdir


def test_study_produces_results_and_report(finished):
    results = finished / "results" / "tiny"
    runs = pd.read_parquet(results / "runs.parquet")
    assert sorted(zip(runs.variant, runs.fold)) == [(v, f) for v in ("aa_control", "baseline", "batchnorm", "dropout")
                                                     for f in (0, 1)]
    assert runs["val_acc"].between(0, 1).all() and (runs["train_img_per_s"] > 0).all()
    assert len(pd.read_csv(results / "epochs.csv")) == 8  # 8 runs x 1 epoch
    timing = pd.read_parquet(results / "timing.parquet")
    assert sorted(timing.variant) == ["baseline", "batchnorm", "dropout"] and (timing["train_img_per_s"] > 0).all()
    per_example = pd.read_csv(finished / "reports" / "tiny" / "per_example.csv")
    assert set(per_example.variant) == {"batchnorm", "dropout", "aa_control"} and per_example["mcnemar_p"].between(0, 1).all()
    html = (finished / "reports" / "tiny" / "index.html").read_text()
    assert "batchnorm" in html and "bn: no -&gt; yes" in html and "data:image/png;base64," in html
    for rule in ("prepare_data", "split", "collect", "report", "train/baseline", "train/batchnorm", "time"):
        assert (results / "logs" / f"{rule}.log").exists(), rule
    assert "epoch 1/1" in (results / "logs" / "train" / "baseline.log").read_text()
    assert "[3/3] dropout measured alone" in (results / "logs" / "time.log").read_text()  # progress, in study order
    assert (results / "benchmarks" / "train" / "baseline.tsv").exists()
    assert not list(results.rglob("*.tmp*"))  # atomic writes leave no temporaries
    assert planned_train_jobs(finished) == []  # nothing left to do


def test_every_metric_the_report_shows_is_in_the_table_it_names(finished):
    from cnnbench.metrics import METRICS

    results = finished / "results" / "tiny"
    tables = {name: pd.read_parquet(results / f"{name}.parquet") for name in ("runs", "timing")}
    for m in METRICS.values():
        assert m.column in tables[m.table], m.name
        assert m.spread is None or m.spread in tables["timing"], m.name


def test_report_renders_in_a_real_browser(finished, chromium, tmp_path):
    """The page loads offline with no failed requests, every image decodes, sections are there."""
    from playwright.sync_api import sync_playwright

    page_path = finished / "reports" / "tiny" / "index.html"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        failed, errors = [], []
        page.on("requestfailed", lambda r: failed.append(r.url))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_path.as_uri())
        page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
        images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])")
        page.click("table.sortable th:nth-child(8)")  # sort by accuracy
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        sections = page.evaluate("Array.from(document.querySelectorAll('section h2')).map(h => h.textContent)")
        browser.close()
    assert failed == [] and errors == []
    assert len(images) >= 20 and all(ok and width > 0 for ok, width, _ in images), images
    assert sections == ["Findings", "Noise floor: the A/A control", "Summary", "Accuracy per variant",
                        "Effects on accuracy", "Ensembles of the fold models", "Per-example differences", "Accuracy vs cost", "Learning curves",
                        "Error distributions", "Translation: equivariance and invariance", "Weight norms",
                        "Kernels that do not fire", "Ranking (descriptive)",
                        "Cost, speed, memory",
                        "Per variant",
                        "Environment and provenance", "Data behind this report"]
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_ensembles_are_scored_on_the_images_held_out_of_every_fold(finished):
    stored = np.load(finished / "results" / "tiny" / "test_probs.npz")
    y = stored["y_test"]
    assert len(y) == 75  # data.holdout: 0.2 of 375
    keys = [k for k in stored.files if k.startswith("baseline/")]
    assert len(keys) == 2  # the 2 fold models
    mean = np.mean([stored[k].astype(np.float64) for k in keys], axis=0)
    ensemble = (mean.argmax(1) == y).mean()
    single = np.mean([(stored[k].argmax(1) == y).mean() for k in keys])
    html = (finished / "reports" / "tiny" / "index.html").read_text()
    section = html[html.index("<h2>Ensembles of the fold models</h2>"):]
    assert f'<td>baseline</td><td>1 &times; 2</td><td class="num">{100 * single:.2f}</td>' \
           f'<td class="num">{100 * ensemble:.2f}</td>' in section


def test_the_summary_tables_aa_row_shows_the_noise_floor_without_a_verdict(finished):
    """A trial found the A/A row's difference and p cells empty; they show its own test, marked as such."""
    from cnnbench.report.format import interval, pts
    from cnnbench.stats import compare_pair

    html = (finished / "reports" / "tiny" / "index.html").read_text()
    summary = html[html.index("<h2>Summary</h2>"):html.index("<h2>Accuracy per variant</h2>")]
    row = summary[summary.index(">aa_control</span>"):].split("</tr>")[0]
    runs = pd.read_parquet(finished / "results" / "tiny" / "runs.parquet")
    aa = compare_pair(runs, "baseline", "aa_control", "val_acc", corrected=False).test
    assert f"{pts(aa.mean)} {interval(aa.ci_low, aa.ci_high)} (plain t)" in row
    assert "(plain t)" in row and "noise floor, no verdict" in row and "better" not in row and "worse" not in row
    assert "The aa_control row is the noise floor" in summary
    assert "Shaded: the A/A control's 95% CI (its own plain paired t-test" in html  # the forest plot's band
    assert "the aa_control, the baseline trained again, is left out" in html  # of the accuracy-vs-cost plot


def test_the_report_knows_each_variants_base_chain_and_draws_a_ladder_from_it(finished, tmp_path):
    """Runs record only what their numbers depend on; the base chains reach the report from the study (the
    provenance table, and the ablation ladder, which a chain of variants each compared with the one below
    makes)."""
    from cnnbench.report import build_report

    html = (finished / "reports" / "tiny" / "index.html").read_text()
    env = html[html.index("Environment and provenance"):]
    assert "<td>batchnorm &lt;- baseline</td>" in env and "<td>dropout &lt;- baseline</td>" in env
    assert "Ablation ladder" not in html  # a star, not a chain
    results = finished / "results" / "tiny"
    out = build_report(results_dir=results, data_path=results / "data.npz", splits_path=results / "splits.json",
                       models_dir=results / "models", baseline="baseline", out=tmp_path / "index.html", title="t",
                       references={"batchnorm": "baseline", "dropout": "batchnorm", "aa_control": "baseline"},
                       chains={"batchnorm": ["batchnorm", "baseline"], "dropout": ["dropout", "batchnorm", "baseline"]})
    ladder = out.read_text()
    assert "<h2>Ablation ladder</h2>" in ladder
    section = ladder[ladder.index("<h2>Ablation ladder</h2>"):]
    assert section.index("<td>batchnorm</td>") < section.index("<td>dropout</td>")
    # a rung may change several knobs (dropout is built on the baseline, compared with batchnorm): the
    # table says which, and the caption no longer claims one change per rung
    dropout_row = section[section.index("<td>dropout</td>"):].split("</tr>")[0]
    assert "dropout: " in dropout_row and "bn: yes -&gt; no" in dropout_row, dropout_row
    assert "adds one change" not in section and "what it changes from the rung above" in section


def test_weight_norms_section_shows_each_variants_final_norms(finished):
    layers = pd.read_parquet(finished / "results" / "tiny" / "layers.parquet")
    html = (finished / "reports" / "tiny" / "index.html").read_text()
    last = layers[layers.epoch == layers.epoch.max()]
    total = last.groupby(["variant", "fold", "seed"])["weight_norm"].apply(lambda s: np.sqrt((s ** 2).sum()))
    section = html[html.index("<h2>Weight norms</h2>"):]
    for variant, value in total.groupby("variant").mean().items():
        assert f"<td>{variant}</td><td class=\"num\">{value:.2f}</td>" in section.replace("\n", ""), variant


def test_report_numbers_come_from_the_runs(finished):
    """Δ, CI, p and verdict of every comparison, recomputed here from runs.parquet with numpy/scipy alone."""
    from scipy import stats

    runs = pd.read_parquet(finished / "results" / "tiny" / "runs.parquet")
    html = (finished / "reports" / "tiny" / "index.html").read_text()
    for variant, acc in runs.groupby("variant")["val_acc"].mean().items():
        assert f"{100 * acc:.2f} &plusmn;" in html, variant
    wide = runs.pivot_table(index=["fold", "seed"], columns="variant", values="val_acc")
    n_train, n_val = runs["data_n_train"].mean(), runs["data_n_val"].mean()
    rows = {}
    for v in ("batchnorm", "dropout", "aa_control"):
        d = (wide[v] - wide["baseline"]).groupby("fold").mean().to_numpy()
        j = len(d)
        correction = 0 if v == "aa_control" else n_val / n_train  # the A/A control: plain paired t-test
        se = np.sqrt((1 / j + correction) * d.var(ddof=1))
        t = d.mean() / se
        half = stats.t.ppf(0.975, j - 1) * se
        rows[v] = (d.mean(), d.mean() - half, d.mean() + half, 2 * stats.t.sf(abs(t), j - 1))
    p = sorted((rows[v][3], v) for v in ("batchnorm", "dropout"))  # Holm over the two design comparisons
    holm = {p[0][1]: min(1, 2 * p[0][0])}
    holm[p[1][1]] = max(holm[p[0][1]], min(1, p[1][0]))
    def shown(bound: float) -> str:  # an interval's bound as the report prints it: cut at +-100 pts
        return "< -100" if bound < -1 else "> +100" if bound > 1 else f"{100 * bound:+.2f}"

    for v in ("batchnorm", "dropout"):
        mean, low, high, _ = rows[v]
        verdict = "no detectable difference" if holm[v] >= 0.05 else ("better" if mean > 0 else "worse")
        expected = f"<b>{v}</b> ("
        line = next(li for li in html.split("<li>") if li.startswith(expected))
        assert f"<b>{100 * mean:+.2f} pts</b> [{shown(low)}, {shown(high)}]" in line, line
        assert f"p<sub>Holm</sub> = {holm[v]:.2g}" in line and verdict in line, line
    if any(abs(b) > 1.1 for v in ("batchnorm", "dropout") for b in rows[v][1:3]):  # J = 2: it is, by far
        assert "Bars past &plusmn;100 pts, where no accuracy difference can be, are cut at the frame" in html
    mean, low, high, pv = rows["aa_control"]
    assert f"differs from itself by <b>{100 * mean:+.2f} pts</b> [{shown(low)}, {shown(high)}], p = {pv:.2g}" in html
    assert "Nadeau-Bengio" in html and "Grad-CAM" in html and "Description only, not a test" in html
    assert "Friedman test over" not in html and "critical difference" not in html


def test_the_timing_job_holds_every_core(tmp_path):
    """The DAG times the variants alone: one `time` job for all of them needs all the cores the workflow
    has, so Snakemake starts no other job beside it."""
    write_yaml(tmp_path / "study.yaml", TINY_STUDY)
    for cores in ("2", "5"):
        out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
                              "--configfile", str(tmp_path / "study.yaml"), "--cores", cores, "-n"],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        jobs = re.findall(r"rule (\w+):\n(?:\s+\S.*\n)*?\s+threads: (\d+)", out.stdout + out.stderr)
        timed = [int(t) for rule, t in jobs if rule == "time"]
        assert timed == [int(cores)], jobs


def test_a_big_studys_specs_reach_the_timing_job_in_a_file(tmp_path):
    """150 variants' specs are ~170 KB of JSON: on the command line (one argument) they would pass Linux's
    128 KiB limit, so the timing job reads them from a file, in the study's order."""
    variants = {"baseline": {"base": "cnn"}, **{f"v{i:03d}": {"base": "cnn", "width": 4 + i} for i in range(149)}}
    write_yaml(tmp_path / "study.yaml", tiny_study(variants=variants, aa_control=False))
    printed = snakemake(tmp_path, "-n", "-p")
    assert printed.returncode == 0, printed.stderr
    [command] = [line for line in printed.stdout.splitlines() if "cnnbench time " in line]
    assert len(command) < 1000 and "--specs results/tiny/timing-specs.json" in command, command
    out = snakemake(tmp_path, "results/tiny/timing-specs.json")
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "results" / "tiny" / "timing-specs.json").read_text()
    assert len(text.encode()) > 128 * 1024
    assert [s["name"] for s in json.loads(text)] == list(variants)


def test_collects_lost_tables_are_made_again_with_their_report_sections(finished, tmp_path):
    """The translation probe's table and the ensembles' probabilities are declared outputs of collect: lost,
    they are made again (nothing retrained), rather than the report dropping their sections unsaid."""
    import shutil

    workdir = tmp_path / "study"
    shutil.copytree(finished, workdir, symlinks=True)
    results = workdir / "results" / "tiny"
    html = (workdir / "reports" / "tiny" / "index.html").read_text()
    assert '<section id="translation">' in html and '<section id="ensembles">' in html
    for name in ("probe.parquet", "probe.csv", "test_probs.npz"):
        (results / name).unlink()
    out = snakemake(workdir)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "rule train" not in out.stdout + out.stderr and "rule collect" in out.stdout + out.stderr
    assert all((results / name).is_file() for name in ("probe.parquet", "probe.csv", "test_probs.npz"))
    html = (workdir / "reports" / "tiny" / "index.html").read_text()
    assert '<section id="translation">' in html and '<section id="ensembles">' in html


def test_snakemake_report_collects_the_marked_outputs(finished):
    out = snakemake(finished, "--report", str(finished / "reports" / "tiny" / "snakemake.html"))
    assert out.returncode == 0, out.stderr
    assert (finished / "reports" / "tiny" / "snakemake.html").stat().st_size > 10_000


def test_runs_per_job_changes_nothing_but_the_jobs(finished, tmp_path):
    """One run per job (what profiles/slurm uses) gives byte-identical per-run numbers on the CPU."""
    write_yaml(tmp_path / "study.yaml", held_out_study(execution={"device": "cpu", "threads": 1, "runs_per_job": 1}))
    out = snakemake(tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    logs = sorted(p.name for p in (tmp_path / "results" / "tiny" / "logs" / "train").iterdir())
    assert logs == [f"{v}.g{i}.log" for v in ("aa_control", "baseline", "batchnorm", "dropout") for i in (0, 1)]
    variants = ("aa_control", "baseline", "batchnorm", "dropout")
    assert run_numbers(tmp_path / "results" / "tiny" / "runs", variants) == \
        run_numbers(finished / "results" / "tiny" / "runs", variants)
    assert (tmp_path / "reports" / "tiny" / "index.html").exists()


def test_adding_a_seed_trains_only_the_new_runs(tmp_path, finished):
    import shutil

    workdir = tmp_path / "study"
    shutil.copytree(finished, workdir, symlinks=True)
    write_yaml(workdir / "study.yaml", held_out_study(protocol={**TINY_STUDY["protocol"], "seeds": [0, 1]}))
    runs = workdir / "results" / "tiny" / "runs"
    before = {p: p.read_bytes() for p in runs.rglob("*-seed0.json")}
    out = snakemake(workdir)
    assert out.returncode == 0, out.stdout + out.stderr
    log = (workdir / "results" / "tiny" / "logs" / "train" / "baseline.log").read_text()
    assert log.count("finished earlier, reusing") == 2 and "run 3/4 (fold 0, seed 1)" in log
    assert all(p.read_bytes() == b for p, b in before.items())
    assert len(list(runs.rglob("*-seed1.json"))) == 2 * 4


def test_adding_a_variant_trains_only_that_variant(finished):
    before = {p: p.stat().st_mtime_ns for p in (finished / "results" / "tiny" / "runs").rglob("*.json")}
    study = held_out_study(variants={**TINY_STUDY["variants"], "wide": {"base": "baseline", "width": 12}})
    write_yaml(finished / "study.yaml", study)
    assert planned_train_jobs(finished) == ["wide"] and plans_timing(finished)
    out = snakemake(finished)
    assert out.returncode == 0, out.stderr
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # finished runs untouched
    # timed again together, one after another in one job, so that the speeds compare
    windows = sorted(json.loads(p.read_text())["window"] for p in (finished / "results" / "tiny" / "timing").glob("*.json"))
    assert len(windows) == 4 and all(a[1] <= b[0] for a, b in zip(windows, windows[1:]))
    assert windows[-1][1] - windows[0][0] < 120
    runs = pd.read_parquet(finished / "results" / "tiny" / "runs.parquet")
    assert set(runs.variant) == {"baseline", "batchnorm", "dropout", "wide", "aa_control"}
    assert "width: 16 -&gt; 12" in (finished / "reports" / "tiny" / "index.html").read_text()


def test_changing_a_variant_reruns_exactly_that_variant(finished):
    study = held_out_study(variants={**TINY_STUDY["variants"], "wide": {"base": "baseline", "width": 12}})
    study["variants"]["batchnorm"] = {"base": "baseline", "bn": True, "width": 10}
    write_yaml(finished / "study.yaml", study)
    assert planned_train_jobs(finished) == ["batchnorm"] and plans_timing(finished)
    study["variants"]["batchnorm"]["description"] = "words only"  # not part of the spec hash
    study["variants"]["batchnorm"].pop("width")
    write_yaml(finished / "study.yaml", study)
    assert planned_train_jobs(finished) == [] and not plans_timing(finished)
    specs = finished / "results" / "tiny" / "timing-specs.json"
    specs.unlink()  # the timing job's input, lost: nothing to re-time as long as nothing needs it
    assert not plans_timing(finished)


def test_bad_config_stops_before_any_job(tmp_path):
    study = tiny_study(variants={**TINY_STUDY["variants"], "wide": {"base": "baseline", "widht": 64}})
    write_yaml(tmp_path / "study.yaml", study)
    out = snakemake(tmp_path)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "variant 'wide'" in text and "'widht'" in text and "did you mean 'width'" in text
    assert "Traceback" not in text and not (tmp_path / "results").exists()


def test_a_local_cuda_study_without_a_visible_gpu_stops_before_any_job(tmp_path, monkeypatch):
    """It passed the checks and failed in its first training job, inside Snakemake's error block. A dry run
    still plans it (a cluster's login node has no GPU either: the check runs when the workflow starts)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU visible, on any machine
    write_yaml(tmp_path / "study.yaml", tiny_study(execution={"device": "cuda"}))
    assert snakemake(tmp_path, "-n").returncode == 0
    out = snakemake(tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 1
    assert "execution.device: 'cuda' but torch sees no GPU" in text and "use device: auto" in text
    assert "Traceback" not in text and "Error in rule" not in text and not (tmp_path / "results").exists()
    data_only = snakemake(tmp_path, "results/tiny/splits.json")  # no training or timing job: no GPU needed
    assert data_only.returncode == 0, data_only.stderr[-2000:]


def test_workflow_lints_clean():
    out = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_gpu_jobs_take_slots_and_timing_takes_a_whole_gpu(tmp_path):
    """On CUDA (planned only: no GPU needed for a dry run), a training job asks for one `gpu_slots` unit and
    the timing job for all `jobs_per_gpu` of one GPU, and the pool is GPUs x jobs_per_gpu unless given."""
    write_yaml(tmp_path / "study.yaml", tiny_study(execution={"device": "cuda", "jobs_per_gpu": 4}))
    out = snakemake(tmp_path, "-n", "--resources", "gpu_slots=8")
    assert out.returncode == 0, out.stderr
    jobs = re.findall(r"rule (\w+):\n(?:\s+\S.*\n)*?\s+resources: (.*)\n", out.stdout + out.stderr)
    slots = {rule: re.search(r"gpu_slots=(\d+)", res) for rule, res in jobs}
    assert slots["train"] and slots["train"].group(1) == "1", jobs
    assert slots["time"] and slots["time"].group(1) == "4", jobs
    printed = snakemake(tmp_path, "-n", "-p")
    assert "--device cuda --jobs-per-gpu 4" in printed.stdout + printed.stderr
