#!/usr/bin/env python3
"""Build a wheelhouse for installing cnnbench on a GPU node that has no internet.

    python workflow/scripts/build_wheelhouse.py [--python-version 3.12] [--out wheelhouse/]
        [--extras test,slurm] [--have NAME[==VERSION] ...] [--have-freeze node-freeze.txt]
        [--platform TAG ...] [--glibc 2.28]

On a machine WITH internet this writes into --out the cnnbench wheel, every wheel that the node lacks
(for CPython --python-version on manylinux x86_64) and an `install.sh`. Copy the folder to the node and
run `sh install.sh` there (PYTHON=/path/to/python picks the interpreter, default python3; any further
arguments go to pip, e.g. --user). install.sh first checks, with `python -c`, that the node's Python is
the one the wheels were built for and that the packages left to the node (torch, torchvision, ...)
satisfy cnnbench's declared ranges, failing with one line that names the versions; then it runs
`python -m pip install --no-index --find-links <wheelhouse> cnnbench[extras]==<version>`.

What the node has: --have (default: the typical PyTorch GPU image, DEFAULT_HAVE below; NAME==VERSION
pins a version), or --have-freeze FILE with the output of `python -m pip freeze` on the node (exact;
--have entries given as well are added to it). torch and torchvision are never carried, whatever the
list or freeze says: the node's own CUDA build is reused (with what they require, IMPLIED), and the
build stops if a known node version is outside cnnbench's range.

How the dependencies are found (pip's own resolver, no hand-written one):
 1. `pip wheel --no-deps` builds the cnnbench wheel from a temporary copy of the project (the checkout
    is not touched).
 2. Every package the node has becomes a tiny stand-in wheel (name, version, no files, no dependencies)
    in a private folder, pinned by a constraints file (`name==version+node`). The version is the node's
    where known, else the newest release with a wheel for the target (`pip index versions`: upper caps
    such as snakemake's jinja2<4 are common, so a made-up high version would not do). So pip never looks
    at the real torch, numpy, ... (no multi-GB CUDA wheels, no minutes of metadata), and the
    dependencies that only the node's packages need are never asked for: a working node has them. Names
    given with --have also bring what they hard-require (IMPLIED: torchvision -> pillow, ...).
 3. `pip install --dry-run --ignore-installed --report` resolves cnnbench[extras] against the index
    plus the stand-ins, twice, with a Python X interpreter where one is found (pip evaluates markers
    such as `python_version < "3.12"` with the interpreter that runs it, whatever --python-version says):
    pass A with source distributions allowed, to learn which needed releases exist only as source
    (grad-cam, connection_pool: each is built with `pip wheel --no-deps --no-binary NAME` and kept if it
    is pure Python, py3-none-any); pass B, the real one, wheels only, for the node: `--target ...
    --python-version X --platform ... --implementation cp --only-binary=:all:`.
 4. `pip download --no-deps --only-binary=:all: --python-version ... --platform ... --implementation cp`
    fetches exactly the resolved `name==version` of every package that is not a stand-in and not built.
 5. Check: the same resolution again with `--no-index`, pip's configuration switched off, and only the
    wheelhouse and the stand-ins to draw on, which proves that the node needs nothing else.
pip's configured constraints (PIP_CONSTRAINT, pip.conf's constraint) are replaced by the stand-ins'
for these pip calls: they describe this machine, not the node. Index settings are kept.
Not chosen: `pip download` of everything with the node's packages as constraints (pip download has no
notion of "already installed": it would fetch torch and its CUDA wheels, GBs); `--no-deps` per package
plus recursion over METADATA's Requires-Dist (a second, weaker resolver: ranges, markers, extras and
backtracking are pip's job).

The wheelhouse never replaces a package of the node: carried packages are resolved to fit the node's
versions, which can mean an older release (snakemake 9.15 rather than 9.27 when the node's packaging is
26.x, since 9.27 wants packaging<26); the summary prints the versions chosen.

Limits: a --have package given without a version is assumed at its newest release; if the node's is
older than what a carried package requires, install.sh's pip stops with pip's message naming it. Pass
the node's versions (--have numpy==1.26.4, or --have-freeze) to resolve exactly.
"""

from __future__ import annotations

import argparse
import base64
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

REPO = Path(__file__).resolve().parents[2]

DEFAULT_HAVE = ("torch", "torchvision", "numpy", "pandas", "scipy", "statsmodels", "seaborn", "matplotlib",
                "scikit-learn", "pyarrow", "jinja2", "pyyaml", "pytest", "pytest-benchmark")
# What those packages themselves require (stable, hard requirements): a node with torchvision has pillow.
# Added to names given with --have, and to torch's and torchvision's even with --have-freeze (the node's
# own torch is assumed: an empty freeze still carries none of it), so that nothing the node must already
# have is carried.
IMPLIED = {"torch": ("filelock", "typing-extensions", "sympy", "networkx", "jinja2", "fsspec"),
           "torchvision": ("numpy", "torch", "pillow"), "sympy": ("mpmath",),
           "pandas": ("numpy", "python-dateutil", "tzdata"), "python-dateutil": ("six",),
           "matplotlib": ("contourpy", "cycler", "fonttools", "kiwisolver", "numpy", "packaging", "pillow",
                          "pyparsing", "python-dateutil"),
           "scikit-learn": ("numpy", "scipy", "joblib", "threadpoolctl"), "scipy": ("numpy",),
           "statsmodels": ("numpy", "scipy", "pandas", "patsy", "packaging"),
           "seaborn": ("numpy", "pandas", "matplotlib"), "jinja2": ("markupsafe",),
           "pytest": ("iniconfig", "packaging", "pluggy", "pygments"), "pytest-benchmark": ("pytest",)}
NODE_ONLY = ("torch", "torchvision")  # never carried: the node's CUDA build is the point
ARCH = "x86_64"


class BuildError(Exception):
    """A problem the user must fix; main() prints it as one line and exits 2."""


def canon(name: str) -> str:
    """PEP 503 normalised name: scikit_learn, Scikit.Learn -> scikit-learn; PyYAML -> pyyaml."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _packaging():
    """(Requirement-free) packaging pieces: Marker, SpecifierSet, Version; from packaging or pip's copy."""
    try:
        from packaging.markers import Marker
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version
    except ImportError:
        try:
            from pip._vendor.packaging.markers import Marker
            from pip._vendor.packaging.specifiers import SpecifierSet
            from pip._vendor.packaging.version import Version
        except ImportError:  # pragma: no cover - every interpreter with pip has it
            return None
    return Marker, SpecifierSet, Version


# ----------------------------------------------------------------------------------------- requirements

@dataclass(frozen=True)
class Req:
    name: str          # as written
    extras: tuple      # ("reports",) for snakemake[reports]
    spec: str          # ">=2.4" ("" for any)
    marker: str        # 'python_version < "3.11"' ("" for none)

    @property
    def key(self) -> str:
        return canon(self.name)

    def __str__(self) -> str:
        extras = f"[{','.join(self.extras)}]" if self.extras else ""
        return f"{self.name}{extras}{self.spec}"


_REQ = re.compile(r"^\s*(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*"
                  r"(?:\[(?P<extras>[^\]]*)\])?\s*(?P<spec>[^;]*?)\s*(?:;\s*(?P<marker>.*?))?\s*$")


def parse_requirement(text: str) -> Req:
    """'grad-cam>=1.5  # comment' -> Req('grad-cam', (), '>=1.5', ''). Direct URLs are refused."""
    text = text.split("#", 1)[0].strip()
    m = _REQ.match(text)
    if not m or "@" in (m.group("spec") or ""):
        raise BuildError(f"cannot use requirement {text!r} (only 'name[extras] specifier ; marker')")
    spec = re.sub(r"\s+", "", (m.group("spec") or "").strip("()"))
    extras = tuple(e.strip() for e in (m.group("extras") or "").split(",") if e.strip())
    return Req(m.group("name"), extras, spec, (m.group("marker") or "").strip())


def target_environment(python_version: str) -> dict:
    """Marker environment of CPython `python_version` on Linux x86_64 (the node)."""
    return {"python_version": python_version, "python_full_version": python_version + ".0",
            "implementation_name": "cpython", "implementation_version": python_version + ".0",
            "platform_python_implementation": "CPython", "platform_system": "Linux", "sys_platform": "linux",
            "platform_machine": ARCH, "os_name": "posix", "platform_release": "", "platform_version": ""}


def marker_applies(req: Req, python_version: str) -> bool:
    if not req.marker:
        return True
    pk = _packaging()
    if pk is None:  # pragma: no cover
        return True
    return pk[0](req.marker).evaluate({**target_environment(python_version), "extra": ""})


def load_pyproject(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            from pip._vendor import tomli as tomllib
    with open(path, "rb") as fh:
        return tomllib.load(fh)


def project_requirements(pyproject: dict, extras, python_version: str) -> list:
    """cnnbench's requirements for `extras` on the target Python, one Req per name (specifiers merged)."""
    project = pyproject["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if canon(e) not in {canon(k) for k in optional}]
    if unknown:
        raise BuildError(f"unknown extra(s) {', '.join(unknown)}; {project['name']} has: "
                         f"{', '.join(sorted(optional)) or 'none'}")
    texts = list(project.get("dependencies", []))
    for extra in extras:
        texts += next(v for k, v in optional.items() if canon(k) == canon(extra))
    merged: dict = {}
    for req in (parse_requirement(t) for t in texts):
        if not marker_applies(req, python_version):
            continue
        old = merged.get(req.key)
        if old is None:
            merged[req.key] = req
        else:
            parts = [p for s in (old.spec, req.spec) for p in s.split(",") if p]
            spec = ",".join(dict.fromkeys(parts))
            merged[req.key] = Req(old.name, tuple(sorted(set(old.extras) | set(req.extras))), spec, "")
    return list(merged.values())


# ------------------------------------------------------------------------------------ what the node has

def parse_have(items) -> dict:
    """['torch', 'scikit_learn==1.6.1', 'a,b'] -> {'torch': None, 'scikit-learn': '1.6.1', 'a': None, 'b': None}."""
    have: dict = {}
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            name, _, version = part.partition("==")
            name = name.strip()
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name.strip()):
                raise BuildError(f"--have wants NAME or NAME==VERSION, not {part!r}")
            have[canon(name)] = version.strip().lstrip("=") or None
    return have


def with_implied(have: dict) -> dict:
    """`have` plus, transitively, what IMPLIED says its packages require (version unknown: None)."""
    out = dict(have)
    todo = list(have)
    while todo:
        for dep in IMPLIED.get(todo.pop(), ()):
            if dep not in out:
                out[dep] = None
                todo.append(dep)
    return out


def node_packages(have_args: list[str] | None, freeze_text: str | None) -> dict:
    """What the node has: the freeze (exact) plus --have (or DEFAULT_HAVE when neither is given), with what
    --have's packages imply. torch and torchvision are always among them, so a --have list that forgets
    them never carries GBs of CUDA wheels the node's own build should provide."""
    have = parse_freeze(freeze_text) if freeze_text is not None else {}
    given = have_args if have_args is not None else ([] if freeze_text is not None else DEFAULT_HAVE)
    for name, version in with_implied(parse_have([*NODE_ONLY, *given])).items():
        if version is not None or name not in have:  # a version given beats an unknown one, never the reverse
            have[name] = version
    return have


def parse_freeze(text: str) -> dict:
    """`pip freeze` output -> {canonical name: version or None}; skips comments, -e and option lines."""
    have: dict = {}
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line.startswith("#"):
            continue
        if not line or line.startswith("-"):
            continue
        if " @ " in line:  # name @ file:///... (installed from a URL or a local build)
            have[canon(line.split(" @ ", 1)[0].strip())] = None
            continue
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*===?\s*(\S+)$", line)
        if m:
            have[canon(m.group(1))] = m.group(2)
        elif re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", line):
            have[canon(line)] = None
    return have


def split_direct(reqs, have: dict):
    """Split cnnbench's own requirements into (left to the node, carried, notes).

    A requirement is left to the node when the node has the package in a version that satisfies it (or
    in an unknown version); a known version outside the range is carried instead, except torch and
    torchvision, which raise BuildError (a newer PyTorch image is needed, not a wheel)."""
    pk = _packaging()
    left, carried, notes = [], [], []
    for req in reqs:
        if req.key not in have:
            carried.append(req)
            continue
        version = have[req.key]
        if version and req.spec and pk and not pk[1](req.spec).contains(version, prereleases=True):
            if req.key in NODE_ONLY:
                raise BuildError(f"the node's {req.key} {version} does not satisfy cnnbench's {req}; "
                                 "use a newer PyTorch image on the node")
            notes.append(f"node's {req.key} {version} is outside {req}: carried")
            carried.append(req)
        else:
            left.append(req)
    return left, carried, notes


# --------------------------------------------------------------------------------------------- wheels

def wheel_name(name: str, version: str, tag: str = "py3-none-any") -> str:
    return f"{re.sub(r'[-_.]+', '_', name)}-{version}-{tag}.whl"


def make_stub_wheel(directory: Path, name: str, version: str, requires=()) -> Path:
    """A valid, empty wheel `name==version`: stands for a package the node has (no dependencies), or, with
    `requires`, for a project that depends on others (the tests' stand-in for cnnbench)."""
    dist = f"{re.sub(r'[-_.]+', '_', name)}-{version}.dist-info"
    files = {f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                 + "".join(f"Requires-Dist: {r}\n" for r in requires)
                                 + "Summary: stand-in for a package the GPU node already has\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: build_wheelhouse\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n"}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join(record + [f"{dist}/RECORD,,"]) + "\n"
    out = Path(directory) / wheel_name(name, version)
    with zipfile.ZipFile(out, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return out


def stub_version(version: str) -> str:
    """The stand-in's version: the node's, with a local label so that no index release can match the pin."""
    return version if "+" in version else version + "+node"


def parse_index_versions(text: str) -> dict:
    """`pip index versions NAME` output -> {canonical name: newest version}."""
    return {canon(m.group(1)): m.group(2) for m in re.finditer(r"^(\S+) \((\S+)\)\s*$", text, flags=re.MULTILINE)}


def newest_versions(py: str, names, targs, env) -> dict:
    """Newest release of each name with a wheel for the target (else any release), from the index."""
    def one(name):
        for extra in (targs, []):
            res = run([py, "-m", "pip", "index", "versions", *extra, name], env=env, quiet=True)
            version = parse_index_versions(res.stdout).get(canon(name))
            if res.returncode == 0 and version:
                return version
        raise BuildError(f"the index has no release of {name} (from --have); give the node's version "
                         f"as --have {name}==VERSION")

    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(4) as pool:  # each is a small web request; pip's start-up is the cost
        return dict(zip((canon(n) for n in names), pool.map(one, names)))


def platform_tags(glibc: str = "2.28", arch: str = ARCH) -> list:
    """The manylinux tags a node with glibc `glibc` accepts (pip matches --platform tags exactly)."""
    major, minor = (int(x) for x in glibc.split("."))
    if major != 2 or minor < 5:
        raise BuildError(f"--glibc wants 2.N with N >= 5, not {glibc}")
    tags = [f"manylinux{alias}_{arch}" for alias, level in (("1", 5), ("2010", 12), ("2014", 17)) if minor >= level]
    return tags + [f"manylinux_2_{n}_{arch}" for n in range(minor, 4, -1)]


def describe_platforms(platforms) -> str:
    """'manylinux x86_64 (glibc <= 2.28)' for the default tags, else the tags themselves."""
    levels = [int(m.group(1)) for t in platforms for m in [re.fullmatch(r"manylinux_2_(\d+)_" + ARCH, t)] if m]
    if levels and all(t.startswith("manylinux") and t.endswith(ARCH) for t in platforms):
        return f"manylinux {ARCH} (glibc <= 2.{max(levels)})"
    return ", ".join(platforms)


def target_args(python_version: str, platforms) -> list:
    args = ["--python-version", python_version, "--implementation", "cp", "--only-binary=:all:"]
    for tag in platforms:
        args += ["--platform", tag]
    return args


def parse_no_match(stderr: str):
    """The requirement pip could not find as a wheel ('No matching distribution found for X>=1'), or None."""
    m = re.findall(r"No matching distribution found for (.+?)\s*$", stderr, flags=re.MULTILINE)
    return m[-1].strip() if m else None


def select_downloads(report: dict, have: dict, wheelhouse: Path) -> list:
    """(name, version) of each resolved package to download: not the node's, not already in the wheelhouse."""
    wheelhouse = Path(wheelhouse).resolve()
    out = []
    for item in report.get("install", []):
        meta = item["metadata"]
        if canon(meta["name"]) in have:
            continue
        url = item.get("download_info", {}).get("url", "")
        if url.startswith("file:"):
            local = Path(url2pathname(unquote(urlparse(url).path)))
            if local.resolve().parent == wheelhouse:
                continue
        out.append((meta["name"], meta["version"]))
    return out


def source_only(report: dict, have: dict) -> list:
    """'name==version' of each resolved package that pip would install from a source distribution."""
    out = []
    for item in report.get("install", []):
        meta, url = item["metadata"], item.get("download_info", {}).get("url", "")
        if canon(meta["name"]) not in have and not urlparse(url).path.endswith(".whl"):
            out.append(f"{meta['name']}=={meta['version']}")
    return out


def build_pure_wheel(py: str, requirement: str, scratch: Path, out: Path, env: dict, python_version: str):
    """Build `requirement` from source into `out`; refuse anything but a pure-Python wheel."""
    print(f"  {requirement}: no wheel on the index, building it from source")
    shutil.rmtree(scratch, ignore_errors=True)
    run([py, "-m", "pip", "wheel", "-q", "--no-deps", "--no-binary", parse_requirement(requirement).name,
         "-w", scratch, requirement], env=env)
    for whl in scratch.glob("*.whl"):
        if not whl.name.endswith("-none-any.whl"):
            raise BuildError(f"{whl.name}: {requirement} is not pure Python and the index has no wheel of it "
                             f"for CPython {python_version}; add it to --have or build it on a machine like the node")
        shutil.move(str(whl), str(out / whl.name))


def node_packages_used(report: dict, have: dict) -> list:
    """Names of the node's packages that the resolution relied on (the stand-ins it picked)."""
    return sorted(canon(i["metadata"]["name"]) for i in report.get("install", [])
                  if canon(i["metadata"]["name"]) in have)


# ------------------------------------------------------------------------------------------ install.sh

def render_install_sh(project: str, version: str, extras, python_version: str, checks, *,
                      platforms=(), wheels=(), node_used=()) -> str:
    """The node-side installer: Python and range checks via `python -c`, then pip --no-index."""
    target = f"{project}[{','.join(extras)}]=={version}" if extras else f"{project}=={version}"
    pairs = [[canon(r.name), r.spec] for r in checks]
    for pair in pairs:
        if "'" in pair[1]:
            raise BuildError(f"specifier {pair[1]!r} cannot be embedded in install.sh")
    major, minor = python_version.split(".")
    check = f'''import sys
want = ({int(major)}, {int(minor)})
if sys.version_info[:2] != want:
    sys.exit("install.sh: these wheels are for Python %d.%d, but %s is Python %d.%d" % (want + (sys.executable,) + tuple(sys.version_info[:2])))
from importlib.metadata import PackageNotFoundError, version
try:
    from packaging.specifiers import SpecifierSet
except ImportError:
    from pip._vendor.packaging.specifiers import SpecifierSet
bad = []
for name, spec in {json.dumps(pairs)}:
    try:
        have = version(name)
    except PackageNotFoundError:
        bad.append("%s is not installed (cnnbench needs %s%s)" % (name, name, spec))
        continue
    if spec and not SpecifierSet(spec).contains(have, prereleases=True):
        bad.append("%s %s is installed, cnnbench needs %s%s" % (name, have, name, spec))
if bad:
    sys.exit("install.sh: this node does not fit {project} {version}: " + "; ".join(bad) + " (the wheelhouse does not carry these: use a PyTorch image that has them)")
'''
    lines = ["#!/bin/sh",
             f"# Offline install of {target} on a GPU node: generated by workflow/scripts/build_wheelhouse.py",
             (f"# for CPython {python_version} on {describe_platforms(platforms) if platforms else 'any platform'}; "
              f"{len(wheels)} wheels."),
             f"# Left to the node: {', '.join(node_used) or 'nothing'}.",
             "# Usage: sh install.sh [pip options, e.g. --user]   PYTHON=/path/to/python picks the interpreter.",
             "#        TARGET=/abs/dir sh install.sh   installs into a folder instead (no write access to the",
             "#        Python); then: export PYTHONPATH=/abs/dir PATH=/abs/dir/bin:$PATH",
             "set -eu",
             'HERE=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)',
             'PY=${PYTHON:-python3}',
             'case " $* " in *" --target"*|*" -t "*)',
             '  echo "install.sh: give the folder as TARGET=DIR sh install.sh, not pip\'s --target: with it pip ignores '
             'what the node has installed and would look for torch in this wheelhouse" >&2; exit 2;; esac',
             f"\"$PY\" -c '{check}' || exit 1",
             'if [ -n "${TARGET:-}" ]; then',
             '  # every wheel here, no resolution: the set was resolved against the node when it was built',
             '  "$PY" -m pip install --no-index --no-deps --target "$TARGET" "$@" "$HERE"/*.whl',
             r'  echo "installed into $TARGET; before using it: export PYTHONPATH=$TARGET\${PYTHONPATH:+:\$PYTHONPATH} '
             r'PATH=$TARGET/bin:\$PATH"',
             '  exit 0',
             'fi',
             f'exec "$PY" -m pip install --no-index --find-links "$HERE" "$@" \'{target}\'',
             ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ the build

def python_version_of(exe: str):
    try:
        out = subprocess.run([exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def find_python(version: str):
    """An interpreter of `version` (this one, pythonX.Y on PATH, pyenv's, uv's), or None."""
    if "{}.{}".format(*sys.version_info[:2]) == version:
        return sys.executable
    candidates = [shutil.which(f"python{version}")]
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates += sorted(glob.glob(f"{root}/versions/{version}.*/bin/python{version}"), reverse=True)
    if shutil.which("uv"):
        found = subprocess.run(["uv", "python", "find", version], capture_output=True, text=True, check=False)
        candidates.append(found.stdout.strip() if found.returncode == 0 else None)
    for exe in candidates:
        if exe and python_version_of(exe) == version:
            return exe
    return None


def run(cmd, *, env=None, quiet=False):
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0 and not quiet:
        tail = "\n".join([ln for ln in (res.stdout + res.stderr).strip().splitlines() if "is ignored" not in ln][-25:])
        raise BuildError(f"command failed ({res.returncode}): {' '.join(map(str, cmd))}\n{tail}")
    return res


def pip_env(constraints: Path, *, offline: bool = False) -> dict:
    env = dict(os.environ, PIP_CONSTRAINT=str(constraints), PIP_DISABLE_PIP_VERSION_CHECK="1")
    if offline:  # nothing but what the command names: no config files, no configured indexes or links
        for key in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
            env.pop(key, None)
        env["PIP_CONFIG_FILE"] = os.devnull
    return env


def copy_project(src: Path, dst: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist", ".git", ".venv",
                                    "results", "reports", "tests", ".snakemake", "wheelhouse")
    shutil.copytree(src, dst, ignore=ignore)
    return dst


def build(args) -> int:
    t0 = time.monotonic()
    project_dir = Path(args.project).resolve()
    pyproject = load_pyproject(project_dir / "pyproject.toml")
    name, version = pyproject["project"]["name"], pyproject["project"]["version"]
    extras = [e.strip() for e in (args.extras or "").split(",") if e.strip()]
    reqs = project_requirements(pyproject, extras, args.python_version)

    have = node_packages(args.have, Path(args.have_freeze).read_text() if args.have_freeze else None)
    have.pop(canon(name), None)
    left, carried, notes = split_direct(reqs, have)
    for note in notes:
        print(f"note: {note}")
    for req in carried:
        have.pop(req.key, None)

    py = args.resolver_python or find_python(args.python_version)
    if py is None:
        py = sys.executable
        print(f"warning: no Python {args.python_version} found here; resolving with {sys.executable} "
              f"({'{}.{}'.format(*sys.version_info[:2])}): wheel tags target {args.python_version}, but pip evaluates "
              "environment markers for the running Python. Pass --resolver-python for exact results.")
    platforms = args.platform or platform_tags(args.glibc)
    targs = target_args(args.python_version, platforms)

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stale = list(out.glob("*.whl")) + list(out.glob("install.sh"))
    for path in stale:
        path.unlink()
    if stale:
        print(f"removed {len(stale)} files of an earlier build from {out}")

    with tempfile.TemporaryDirectory(prefix="wheelhouse-") as tmp:
        tmp = Path(tmp)
        stubs = tmp / "node"
        stubs.mkdir()
        constraints = tmp / "node-constraints.txt"
        constraints.write_text("")
        env = pip_env(constraints)
        unknown = sorted(k for k, v in have.items() if v is None)
        if unknown:
            assumed = newest_versions(py, unknown, targs, env)
            have.update(assumed)
            print("node versions not given, assumed the newest releases: "
                  + ", ".join(f"{k} {v}" for k, v in sorted(assumed.items())))
        pins = []
        for key, ver in sorted(have.items()):
            make_stub_wheel(stubs, key, stub_version(ver))
            pins.append(f"{key}=={stub_version(ver)}")
        constraints.write_text("\n".join(pins) + "\n")

        print(f"building the {name} wheel with {py} ...")
        src = copy_project(project_dir, tmp / "src")
        run([py, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, src], env=env)

        root = f"{name}[{','.join(extras)}]=={version}" if extras else f"{name}=={version}"
        resolve = [py, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed", "--target", tmp / "t",
                   "--find-links", out, "--find-links", stubs, "-c", constraints]
        # Pass A, for the resolving Python's own platform with source distributions allowed: which of the
        # needed releases exist only as source? Build those into wheels before the wheels-only pass B.
        print(f"resolving {root} (source distributions allowed) ...")
        run([*resolve, "--report", tmp / "report-a.json", root], env=env)
        built = []
        for missing in source_only(json.loads((tmp / "report-a.json").read_text()), have):
            build_pure_wheel(py, missing, tmp / "sdist", out, env, args.python_version)
            built.append(canon(parse_requirement(missing).name))
        for attempt in range(args.max_source_builds + 1):
            print(f"resolving {root} for CPython {args.python_version} on {describe_platforms(platforms)}, wheels only ...")
            res = run([*resolve, *targs, "--report", tmp / "report.json", root], env=env, quiet=True)
            if res.returncode == 0:
                break
            missing = parse_no_match(res.stderr)
            if missing is None or attempt == args.max_source_builds or canon(parse_requirement(missing).name) in built:
                raise BuildError("pip could not resolve the requirements for the node:\n"
                                 + "\n".join(ln for ln in res.stderr.strip().splitlines()[-15:]
                                             if "is ignored" not in ln))
            build_pure_wheel(py, missing, tmp / "sdist", out, env, args.python_version)
            built.append(canon(parse_requirement(missing).name))
        report = json.loads((tmp / "report.json").read_text())

        downloads = select_downloads(report, have, out)
        if downloads:
            print(f"downloading {len(downloads)} wheels ...")
            run([py, "-m", "pip", "download", "-q", "--no-deps", "--progress-bar", "off", "--dest", out, *targs,
                 *(f"{n}=={v}" for n, v in downloads)], env=env)

        if not args.no_verify:
            print("checking that the wheelhouse alone (plus the node's packages) satisfies pip, offline ...")
            run([py, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed", "--no-index",
                 "--target", tmp / "v", "--find-links", out, "--find-links", stubs, "-c", constraints, *targs,
                 root], env=pip_env(constraints, offline=True))

    wheels = sorted(out.glob("*.whl"))
    used = node_packages_used(report, have)
    script = out / "install.sh"
    script.write_text(render_install_sh(name, version, extras, args.python_version, left,
                                        platforms=platforms, wheels=wheels, node_used=used))
    script.chmod(0o755)

    sizes = sorted(((w.stat().st_size, w.name) for w in wheels), reverse=True)
    total = sum(s for s, _ in sizes)
    print(f"\nwheelhouse: {out}")
    print(f"  {len(wheels)} wheels, {total / 1e6:.1f} MB (largest: "
          + ", ".join(f"{n.split('-')[0]} {s / 1e6:.1f}" for s, n in sizes[:4]) + ")")
    if built:
        print(f"  built from source (pure Python): {', '.join(built)}")
    chosen = {canon(i["metadata"]["name"]): i["metadata"]["version"] for i in report.get("install", [])}
    print("  carried for cnnbench: " + ", ".join(f"{r.key} {chosen[r.key]}" for r in carried if r.key in chosen))
    print(f"  left to the node, checked by install.sh: {', '.join(str(r) for r in left) or 'nothing'}")
    rest = [u for u in used if u not in {r.key for r in left}]
    print(f"  left to the node, needed by carried packages: {', '.join(rest) or 'nothing'}")
    print(f"  on the node: sh {out.name}/install.sh   ({time.monotonic() - t0:.0f} s to build)")
    return 0


def make_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python-version", default="{}.{}".format(*sys.version_info[:2]),
                    help="the node's Python, MAJOR.MINOR (default: this interpreter's)")
    ap.add_argument("--platform", action="append",
                    help="a wheel platform tag, repeatable (default: manylinux tags up to --glibc)")
    ap.add_argument("--glibc", default="2.28", help="the node's glibc, for the default tags (default 2.28)")
    ap.add_argument("--out", default="wheelhouse", help="the folder to write (default: wheelhouse/)")
    ap.add_argument("--extras", default="", help="cnnbench extras, comma separated (e.g. test,slurm)")
    ap.add_argument("--have", nargs="+", action="extend", default=None, metavar="NAME[==VERSION]",
                    help="what the node has, repeatable (default: " + " ".join(DEFAULT_HAVE) + "; torch and "
                         "torchvision are always the node's)")
    ap.add_argument("--have-freeze", metavar="FILE", help="the node's `python -m pip freeze` output")
    ap.add_argument("--resolver-python", help="a Python of --python-version to run pip with (default: found)")
    ap.add_argument("--project", default=str(REPO), help="the cnnbench checkout (default: this one)")
    ap.add_argument("--max-source-builds", type=int, default=10, help=argparse.SUPPRESS)
    ap.add_argument("--no-verify", action="store_true", help="skip the offline resolution check")
    return ap


def main(argv=None) -> int:
    ap = make_parser()
    args = ap.parse_args(argv)
    if not re.fullmatch(r"3\.\d+", args.python_version):
        ap.error(f"--python-version wants 3.N, not {args.python_version}")
    try:
        return build(args)
    except BuildError as exc:
        print(f"build_wheelhouse: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
