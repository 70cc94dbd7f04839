"""workflow/scripts/build_wheelhouse.py: the pure logic of the offline wheelhouse (no network).

The generated install.sh is run for real, against a stand-in project in a temporary wheelhouse, with
pip's --no-index: its range check must stop a node that does not fit, and let pip run on one that does.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile

import pytest

from tests.helpers import REPO

SCRIPT = REPO / "workflow" / "scripts" / "build_wheelhouse.py"
HERE_PY = "{}.{}".format(*sys.version_info[:2])


@pytest.fixture(scope="module")
def wh():
    spec = importlib.util.spec_from_file_location("build_wheelhouse", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_wheelhouse"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pyproject(wh):
    return wh.load_pyproject(REPO / "pyproject.toml")


def names(reqs):
    return [r.key for r in reqs]


# ----------------------------------------------------------------------------------------- requirements

def test_parse_requirement_forms(wh):
    r = wh.parse_requirement("grad-cam>=1.5       # class-activation maps in the report")
    assert (r.name, r.extras, r.spec, r.marker) == ("grad-cam", (), ">=1.5", "")
    r = wh.parse_requirement("Snakemake[reports, messaging] >= 9.0, <10 ; python_version >= '3.11'")
    assert (r.key, r.extras, r.spec, r.marker) == ("snakemake", ("reports", "messaging"), ">=9.0,<10",
                                                   "python_version >= '3.11'")
    assert str(r) == "Snakemake[reports,messaging]>=9.0,<10"
    assert wh.parse_requirement("pyyaml").spec == ""
    with pytest.raises(wh.BuildError, match="only 'name"):
        wh.parse_requirement("cnnbench @ https://example.org/cnnbench.whl")


@pytest.mark.parametrize("raw, want", [("scikit_learn", "scikit-learn"), ("Scikit.Learn", "scikit-learn"),
                                       ("PyYAML", "pyyaml"), ("pytest_benchmark", "pytest-benchmark"),
                                       ("typing__extensions", "typing-extensions")])
def test_canonical_names(wh, raw, want):
    assert wh.canon(raw) == want


def test_project_requirements_from_the_real_pyproject(wh, pyproject):
    base = wh.project_requirements(pyproject, [], "3.12")
    assert {"torch", "torchvision", "snakemake", "mlxtend", "grad-cam", "jsonschema"} <= set(names(base))
    assert "pytest" not in names(base)
    torch = next(r for r in base if r.key == "torch")
    assert torch.spec == ">=2.4"

    test = wh.project_requirements(pyproject, ["test"], "3.12")
    assert {"pytest", "pytest-benchmark", "ptflops"} <= set(names(test))
    assert set(names(base)) < set(names(test))

    # slurm and test both list the plugin: one requirement, its range once
    both = wh.project_requirements(pyproject, ["test", "slurm"], "3.12")
    plugin = [r for r in both if r.key == "snakemake-executor-plugin-slurm"]
    assert len(plugin) == 1 and plugin[0].spec == ">=1.0"
    assert len(names(both)) == len(set(names(both)))


def test_unknown_extra_is_refused_naming_the_real_ones(wh, pyproject):
    with pytest.raises(wh.BuildError, match=r"unknown extra\(s\) gpu.*slurm, test"):
        wh.project_requirements(pyproject, ["gpu"], "3.12")


def test_markers_are_evaluated_for_the_target_python(wh):
    pyproject = {"project": {"name": "p", "dependencies": ["tomli>=2; python_version < '3.11'", "numpy",
                                                           "pywin32; sys_platform == 'win32'"],
                             "optional-dependencies": {"Extra_One": ["pytest>=8", "numpy<3"]}}}
    assert names(wh.project_requirements(pyproject, [], "3.10")) == ["tomli", "numpy"]
    assert names(wh.project_requirements(pyproject, [], "3.12")) == ["numpy"]
    merged = wh.project_requirements(pyproject, ["extra-one"], "3.12")  # extra names are normalised too
    assert [(r.key, r.spec) for r in merged] == [("numpy", "<3"), ("pytest", ">=8")]


# ------------------------------------------------------------------------------------ what the node has

def test_parse_have_normalises_and_splits(wh):
    have = wh.parse_have(["torch", "scikit_learn==1.6.1", "PyYAML,pytest_benchmark", " numpy == 2.0.2 "])
    assert have == {"torch": None, "scikit-learn": "1.6.1", "pyyaml": None, "pytest-benchmark": None,
                    "numpy": "2.0.2"}
    with pytest.raises(wh.BuildError):
        wh.parse_have(["torch>=2"])


def test_repeated_have_flags_add_up_and_torch_is_always_the_nodes(wh):
    """`--have numpy --have opencv-python-headless` once kept only the last name, and a list without torch
    carried torch, torchvision and the CUDA wheels (3.1 GB instead of ~20 MB)."""
    args = wh.make_parser().parse_args(["--have", "numpy", "--have", "opencv-python-headless", "tqdm==4.67.1"])
    assert args.have == ["numpy", "opencv-python-headless", "tqdm==4.67.1"]
    have = wh.node_packages(args.have, None)
    assert {"numpy", "opencv-python-headless", "torch", "torchvision", "pillow", "sympy"} <= set(have)
    assert have["tqdm"] == "4.67.1" and "pandas" not in have  # a given list replaces the default one
    assert set(wh.DEFAULT_HAVE) <= set(wh.node_packages(None, None))
    assert wh.node_packages(["torch==2.11.0"], None)["torch"] == "2.11.0"
    frozen = wh.node_packages(None, "torch==2.11.0\nnumpy==2.1.0\n")
    assert frozen["torch"] == "2.11.0" and frozen["torchvision"] is None and "pandas" not in frozen


def test_parse_freeze(wh):
    text = "\n".join(["# comment", "PyYAML==6.0.1", "scikit_learn==1.6.1  # pinned", "-e git+https://x/y#egg=z",
                      "torch @ file:///wheels/torch-2.11.0-cp312.whl", "torchvision==0.26.0+cu130",
                      "--index-url https://example.org", "", "weird===1.0"])
    assert wh.parse_freeze(text) == {"pyyaml": "6.0.1", "scikit-learn": "1.6.1", "torch": None,
                                     "torchvision": "0.26.0+cu130", "weird": "1.0"}


def test_implied_requirements_of_the_node_packages(wh):
    have = wh.with_implied({"torchvision": "0.26.0", "jinja2": None})
    assert have["torchvision"] == "0.26.0"  # a given version is kept
    assert {"torch", "pillow", "numpy", "sympy", "mpmath", "markupsafe"} <= set(have)
    assert have["pillow"] is None
    assert "pandas" not in have
    assert wh.with_implied({}) == {}


def test_split_direct_leaves_what_the_node_has(wh, pyproject):
    reqs = wh.project_requirements(pyproject, ["test"], "3.12")
    have = wh.parse_freeze("torch==2.11.0+cu130\ntorchvision==0.26.0\nscikit_learn==1.6.1\nPyYAML==6.0.2\n"
                           "jsonschema==4.0.0\npytest==8.3.0\n")
    left, carried, notes = wh.split_direct(reqs, have)
    assert set(names(left)) == {"torch", "torchvision", "scikit-learn", "pyyaml", "pytest"}
    assert {"snakemake", "mlxtend", "grad-cam", "jsonschema", "numpy", "ptflops"} <= set(names(carried))
    assert notes == ["node's jsonschema 4.0.0 is outside jsonschema>=4.18: carried"]
    # unknown versions are left to the node, and checked there by install.sh
    left, carried, _ = wh.split_direct(reqs, {"numpy": None})
    assert names(left) == ["numpy"] and "numpy" not in names(carried)


@pytest.mark.parametrize("pkg, version", [("torch", "2.3.1"), ("torchvision", "0.18.0")])
def test_a_too_old_node_torch_stops_the_build(wh, pyproject, pkg, version):
    reqs = wh.project_requirements(pyproject, [], "3.12")
    with pytest.raises(wh.BuildError, match=f"node's {pkg} {version} does not satisfy"):
        wh.split_direct(reqs, {pkg: version})


# --------------------------------------------------------------------------------------------- wheels

def test_select_downloads_skips_the_node_and_the_wheelhouse(wh, tmp_path):
    def item(name, version, url):
        return {"metadata": {"name": name, "version": version}, "download_info": {"url": url}}
    report = {"install": [
        item("cnnbench", "0.1.0", (tmp_path / "cnnbench-0.1.0-py3-none-any.whl").as_uri()),
        item("PyYAML", "6.0.4+node", (tmp_path / "node" / "pyyaml-6.0.4+node-py3-none-any.whl").as_uri()),
        item("scikit_learn", "1.9.1+node", "file:///elsewhere/scikit_learn-1.9.1+node-py3-none-any.whl"),
        item("snakemake", "9.27.1", "https://files.example.org/snakemake-9.27.1-py3-none-any.whl"),
        item("joblib", "1.6.0", "file:///opt/pypi/files/joblib-1.6.0-py3-none-any.whl"),
    ]}
    have = {"pyyaml": "6.0.4", "scikit-learn": "1.9.1"}
    assert wh.select_downloads(report, have, tmp_path) == [("snakemake", "9.27.1"), ("joblib", "1.6.0")]
    assert wh.node_packages_used(report, have) == ["pyyaml", "scikit-learn"]
    sdists = {"install": [item("grad-cam", "1.5.7", "https://x/grad-cam-1.5.7.tar.gz"),
                          item("mlxtend", "0.25.0", "https://x/mlxtend-0.25.0-py3-none-any.whl"),
                          item("torch", "2.11.0", "https://x/torch-2.11.0.tar.gz")]}
    assert wh.source_only(sdists, {"torch": "2.11.0"}) == ["grad-cam==1.5.7"]


def test_pip_output_parsers(wh):
    err = ("ERROR: Could not find a version that satisfies the requirement grad-cam>=1.5 (from versions: 1.0.0)\n"
           "ERROR: No matching distribution found for grad-cam>=1.5\n")
    assert wh.parse_no_match(err) == "grad-cam>=1.5"
    assert wh.parse_no_match("ERROR: ResolutionImpossible") is None
    out = "WARNING: pip index is experimental\nPyYAML (6.0.4)\nAvailable versions: 6.0.4, 6.0.3\n"
    assert wh.parse_index_versions(out) == {"pyyaml": "6.0.4"}


def test_platform_tags(wh):
    tags = wh.platform_tags("2.28")
    assert {"manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert "manylinux_2_29_x86_64" not in tags
    old = wh.platform_tags("2.17")
    assert "manylinux_2_18_x86_64" not in old and "manylinux2014_x86_64" in old
    assert wh.describe_platforms(tags) == "manylinux x86_64 (glibc <= 2.28)"
    assert wh.target_args("3.12", ["manylinux2014_x86_64"]) == [
        "--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:", "--platform",
        "manylinux2014_x86_64"]
    with pytest.raises(wh.BuildError):
        wh.platform_tags("3.1")


def test_stub_wheel_is_a_wheel_pip_installs_offline(wh, tmp_path):
    assert wh.stub_version("2.11.0") == "2.11.0+node" and wh.stub_version("2.11.0+cu130") == "2.11.0+cu130"
    whl = wh.make_stub_wheel(tmp_path, "scikit-learn", "1.9.1+node")
    assert whl.name == "scikit_learn-1.9.1+node-py3-none-any.whl"
    with zipfile.ZipFile(whl) as zf:
        meta = zf.read("scikit_learn-1.9.1+node.dist-info/METADATA").decode()
    assert "Name: scikit-learn\nVersion: 1.9.1+node\n" in meta and "Requires-Dist" not in meta
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", tmp_path,
                          "--target", tmp_path / "site", "--no-compile", "scikit-learn==1.9.1"],
                         capture_output=True, text=True, env=_offline_env(), check=False)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "site" / "scikit_learn-1.9.1+node.dist-info" / "RECORD").is_file()


# ------------------------------------------------------------------------------------------ install.sh

def _offline_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra}


def test_install_sh_text(wh):
    Req = wh.Req
    text = wh.render_install_sh("cnnbench", "0.1.0", ["test", "slurm"], "3.12",
                                [Req("torch", (), ">=2.4", ""), Req("TorchVision", (), ">=0.19", "")],
                                platforms=wh.platform_tags("2.28"), wheels=["a.whl"], node_used=["torch"])
    assert text.startswith("#!/bin/sh\n")
    assert ('"$PY" -m pip install --no-index --find-links "$HERE" "$@" \'cnnbench[test,slurm]==0.1.0\''
            in text)
    assert '[["torch", ">=2.4"], ["torchvision", ">=0.19"]]' in text
    assert "want = (3, 12)" in text and "manylinux x86_64 (glibc <= 2.28)" in text
    assert text.index("\"$PY\" -c '") < text.index("pip install")  # the check runs first
    with pytest.raises(wh.BuildError):
        wh.render_install_sh("p", "1", [], "3.12", [Req("x", (), "=='1'", "")])


def _house(wh, tmp_path, checks, python_version=HERE_PY, requires=()):
    """A wheelhouse of a stand-in project 'standin' (depending on `requires`, which the node has), with a
    real install.sh."""
    house = tmp_path / "house"
    house.mkdir()
    wh.make_stub_wheel(house, "standin", "1.0", requires=requires)
    (house / "install.sh").write_text(wh.render_install_sh("standin", "1.0", [], python_version,
                                                           [wh.parse_requirement(c) for c in checks]))
    return house


def _install(house, tmp_path, *args):
    return subprocess.run(["sh", str(house / "install.sh"), "--no-compile", *args], capture_output=True, text=True,
                          env=_offline_env(PYTHON=sys.executable, TARGET=str(tmp_path / "site")), check=False)


def test_a_folder_install_keeps_the_nodes_packages_and_says_how_to_use_it(wh, tmp_path):
    """pip's --target ignores what is installed, so resolving would look for the node's torch in the
    wheelhouse; TARGET= installs every wheel without resolving (the set was resolved when it was built)."""
    house = _house(wh, tmp_path, ["pytest>=1"], requires=["pytest>=1", "PyYAML"])
    res = _install(house, tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "site" / "standin-1.0.dist-info").is_dir()
    assert not list((tmp_path / "site").glob("pytest*"))  # the node's own, not reinstalled
    assert f"export PYTHONPATH={tmp_path / 'site'}" in res.stdout and f"PATH={tmp_path / 'site'}/bin:" in res.stdout
    resolving = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", house,
                                "--target", tmp_path / "t2", "standin"], capture_output=True, text=True,
                               env=_offline_env(), check=False)
    assert resolving.returncode != 0 and "pytest" in resolving.stderr  # what TARGET= avoids


def test_pips_own_target_option_is_refused_with_the_way_that_works(wh, tmp_path):
    house = _house(wh, tmp_path, [])
    res = _install(house, tmp_path, "--target", str(tmp_path / "elsewhere"))
    assert res.returncode == 2 and "TARGET=DIR sh install.sh" in res.stderr
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "site").exists()


def test_install_sh_installs_with_no_index_when_the_node_fits(wh, tmp_path):
    import pytest as installed
    house = _house(wh, tmp_path, [f"pytest>={installed.__version__}", "PyYAML>=5"])
    res = _install(house, tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "site" / "standin-1.0.dist-info").is_dir()


def test_install_sh_refuses_a_node_outside_the_ranges_in_one_line(wh, tmp_path):
    import pytest as installed
    house = _house(wh, tmp_path, ["pytest<1", "no-such-package-xyz>=2.4", "pyyaml>=5"])
    res = _install(house, tmp_path)
    assert res.returncode == 1
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert f"pytest {installed.__version__} is installed, cnnbench needs pytest<1" in err
    assert "no-such-package-xyz is not installed (cnnbench needs no-such-package-xyz>=2.4)" in err
    assert "pyyaml" not in err
    assert not (tmp_path / "site").exists()  # pip never ran


def test_install_sh_refuses_another_python(wh, tmp_path):
    other = "3.99"
    house = _house(wh, tmp_path, [], python_version=other)
    res = _install(house, tmp_path)
    assert res.returncode == 1
    assert f"these wheels are for Python 3.99, but {sys.executable} is Python {HERE_PY}" in res.stderr


def test_cli_refuses_an_unknown_extra_before_any_download(wh, tmp_path, capsys):
    assert wh.main(["--extras", "tests", "--out", str(tmp_path / "w")]) == 2
    assert "unknown extra(s) tests" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
