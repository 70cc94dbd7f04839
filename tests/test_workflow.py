"""The Snakemake workflow end to end on a tiny study: results, report, incremental reruns, bad input."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import REPO, TINY_STUDY, tiny_study, write_yaml

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
    return sorted(re.findall(r"rule train:\n(?:\s+\S.*\n)*?\s+wildcards: variant=(\S+)", out.stdout + out.stderr))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("study")
    write_yaml(workdir / "study.yaml", TINY_STUDY)
    out = snakemake(workdir)
    assert out.returncode == 0, out.stdout + out.stderr
    return workdir


def test_study_produces_results_and_report(finished):
    results = finished / "results" / "tiny"
    runs = pd.read_parquet(results / "runs.parquet")
    assert sorted(zip(runs.variant, runs.fold)) == [("baseline", 0), ("baseline", 1), ("batchnorm", 0),
                                                     ("batchnorm", 1)]
    assert runs["val_acc"].between(0, 1).all() and (runs["train_img_per_s"] > 0).all()
    assert len(pd.read_csv(results / "epochs.csv")) == 4  # 4 runs x 1 epoch
    html = (finished / "reports" / "tiny" / "index.html").read_text()
    assert "batchnorm" in html and "bn: no -&gt; yes" in html and "data:image/png;base64," in html
    for rule in ("prepare_data", "split", "collect", "report", "train/baseline", "train/batchnorm"):
        assert (results / "logs" / f"{rule}.log").exists(), rule
    assert "epoch 1/1" in (results / "logs" / "train" / "baseline.log").read_text()
    assert (results / "benchmarks" / "train" / "baseline.tsv").exists()
    assert not list(results.rglob("*.tmp*"))  # atomic writes leave no temporaries
    assert planned_train_jobs(finished) == []  # nothing left to do


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
    assert {"Findings", "Summary", "Accuracy per variant", "Effects on accuracy", "Accuracy vs cost", "Learning curves",
            "Cost, speed, memory", "Per variant", "Environment and provenance"} <= set(sections)
    assert "Ranking" not in sections  # a Friedman ranking needs three variants; this study has two
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_report_numbers_come_from_the_runs(finished):
    runs = pd.read_parquet(finished / "results" / "tiny" / "runs.parquet")
    html = (finished / "reports" / "tiny" / "index.html").read_text()
    for variant, acc in runs.groupby("variant")["val_acc"].mean().items():
        assert f"{100 * acc:.2f} &plusmn;" in html, variant
    assert "Nadeau-Bengio" in html and "Grad-CAM" in html


def test_snakemake_report_collects_the_marked_outputs(finished):
    out = snakemake(finished, "--report", str(finished / "reports" / "tiny" / "snakemake.html"))
    assert out.returncode == 0, out.stderr
    assert (finished / "reports" / "tiny" / "snakemake.html").stat().st_size > 10_000


def test_adding_a_variant_trains_only_that_variant(finished):
    before = {p: p.stat().st_mtime_ns for p in (finished / "results" / "tiny" / "runs").rglob("*.json")}
    study = tiny_study(variants={**TINY_STUDY["variants"], "dropout": {"base": "baseline", "dropout": 0.5}})
    write_yaml(finished / "study.yaml", study)
    assert planned_train_jobs(finished) == ["dropout"]
    out = snakemake(finished)
    assert out.returncode == 0, out.stderr
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # finished runs untouched
    runs = pd.read_parquet(finished / "results" / "tiny" / "runs.parquet")
    assert set(runs.variant) == {"baseline", "batchnorm", "dropout"}
    assert "dropout: 0.0 -&gt; 0.5" in (finished / "reports" / "tiny" / "index.html").read_text()


def test_changing_a_variant_reruns_exactly_that_variant(finished):
    study = tiny_study(variants={**TINY_STUDY["variants"], "dropout": {"base": "baseline", "dropout": 0.5}})
    study["variants"]["batchnorm"] = {"base": "baseline", "bn": True, "width": 8}
    write_yaml(finished / "study.yaml", study)
    assert planned_train_jobs(finished) == ["batchnorm"]
    study["variants"]["batchnorm"]["description"] = "words only"  # not part of the spec hash
    study["variants"]["batchnorm"].pop("width")
    write_yaml(finished / "study.yaml", study)
    assert planned_train_jobs(finished) == []


def test_bad_config_stops_before_any_job(tmp_path):
    study = tiny_study(variants={**TINY_STUDY["variants"], "wide": {"base": "baseline", "widht": 64}})
    write_yaml(tmp_path / "study.yaml", study)
    out = snakemake(tmp_path)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "variant 'wide'" in text and "'widht'" in text and "did you mean 'width'" in text
    assert "Traceback" not in text and not (tmp_path / "results").exists()


def test_workflow_lints_clean():
    out = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
