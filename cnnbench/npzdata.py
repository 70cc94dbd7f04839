"""Any image data set as one `.npz` file: `data: {name: npz, path: my_images.npz}`.

The file holds `x` (N, H, W), (N, H, W, C) or (N, C, H, W) uint8 images with C = 1 or 3, `y` (N,) integer
labels 0..K-1, and optionally `x_test`/`y_test` (an official test split) and `classes` (K names). It is
checked in full when the study is validated - before any job - and every problem is one line naming the
file, the array and the fix. Shapes are read from the array headers, so checking a large file does not
load its images.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from cnnbench.errors import ConfigError


@dataclass(frozen=True)
class NpzInfo:
    shape: tuple[int, int, int]  # (C, H, W) of one image
    layout: str  # NHW | NHWC | NCHW: how `x` is stored
    n: int
    num_classes: int
    smallest_class: int
    has_test: bool
    classes: tuple[str, ...]
    n_test: int = 0


def _header(z: zipfile.ZipFile, key: str, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    with z.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    return tuple(shape), np.dtype(dtype)


def _layout(shape: tuple[int, ...], path: Path, key: str) -> tuple[str, tuple[int, int, int]]:
    if len(shape) == 3:
        return "NHW", (1, shape[1], shape[2])
    if len(shape) == 4:
        first, last = shape[1] in (1, 3), shape[3] in (1, 3)
        if last and not first:
            return "NHWC", (shape[3], shape[1], shape[2])
        if first and not last:
            return "NCHW", (shape[1], shape[2], shape[3])
        if first and last:
            raise ConfigError(f"data.path: {path}: {key} has shape {list(shape)}, which could be channels first or "
                              "last; store it as (N, C, H, W) with images larger than 3x3")
    raise ConfigError(f"data.path: {path}: {key} has shape {list(shape)}; expected (N, H, W), (N, H, W, C) or "
                      "(N, C, H, W) with C = 1 or 3")


@lru_cache(maxsize=8)
def _inspect(path: str, mtime: float) -> NpzInfo:
    p = Path(path)
    try:
        z = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError) as e:
        raise ConfigError(f"data.path: {p}: not a readable .npz file ({e}); write it with numpy.savez") from None
    with z:
        keys = {n[:-4] for n in z.namelist() if n.endswith(".npy")}
        for key in ("x", "y"):
            if key not in keys:
                raise ConfigError(f"data.path: {p}: no array {key!r} (it has {', '.join(sorted(keys)) or 'none'}); "
                                  "save images as x and labels as y")
        if ("x_test" in keys) != ("y_test" in keys):
            raise ConfigError(f"data.path: {p}: has {'x_test' if 'x_test' in keys else 'y_test'} without "
                              f"{'y_test' if 'x_test' in keys else 'x_test'}; save both or neither")
        x_shape, x_dtype = _header(z, "x", p)
        layout, shape = _layout(x_shape, p, "x")
        if x_dtype != np.uint8:
            raise ConfigError(f"data.path: {p}: x is {x_dtype}, not uint8; store 0..255 pixels, e.g. "
                              "np.clip(x * 255, 0, 255).astype(np.uint8) for images in [0, 1]")
        n = x_shape[0]
        if n == 0:
            raise ConfigError(f"data.path: {p}: x holds no images; save at least one image per class")
        y = _labels(np.load(p, allow_pickle=False)["y"], n, p, "y")
        counts = np.bincount(y)
        if (counts == 0).any():
            raise ConfigError(f"data.path: {p}: labels {np.flatnonzero(counts == 0)[:5].tolist()} have no images; "
                              f"labels must be 0..K-1 with every class present (K = {len(counts)})")
        if len(counts) < 2:
            raise ConfigError(f"data.path: {p}: y has only label 0; a classifier needs at least 2 classes (with one, "
                              "every run scores 100% and no comparison can differ)")
        has_test, n_test = "x_test" in keys, 0
        if has_test:
            t_shape, t_dtype = _header(z, "x_test", p)
            t_layout, t_image = _layout(t_shape, p, "x_test")
            if (t_layout, t_image) != (layout, shape) or t_dtype != np.uint8:
                raise ConfigError(f"data.path: {p}: x_test is {t_dtype} {list(t_shape)}, x is {x_dtype} "
                                  f"{list(x_shape)}; test images must be stored like x")
            n_test = t_shape[0]
            y_test = _labels(np.load(p, allow_pickle=False)["y_test"], n_test, p, "y_test")
            if y_test.max(initial=0) >= len(counts):
                raise ConfigError(f"data.path: {p}: y_test has label {int(y_test.max())}, y only 0..{len(counts) - 1}")
        classes = tuple(str(i) for i in range(len(counts)))
        if "classes" in keys:
            names = np.load(p, allow_pickle=False)["classes"]
            if names.ndim != 1 or len(names) != len(counts):
                raise ConfigError(f"data.path: {p}: classes has {names.size} names for {len(counts)} classes")
            classes = tuple(str(c) for c in names)
    return NpzInfo(shape, layout, n, len(counts), int(counts.min()), has_test, classes, n_test)


def _labels(y: np.ndarray, n: int, p: Path, key: str) -> np.ndarray:
    if y.ndim != 1 or len(y) != n:
        raise ConfigError(f"data.path: {p}: {key} has shape {list(y.shape)}; expected ({n},), one label per image")
    if not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y))):
            raise ConfigError(f"data.path: {p}: {key} is {y.dtype}; labels must be whole numbers 0..K-1")
    y = y.astype(np.int64)
    if len(y) and y.min() < 0:
        raise ConfigError(f"data.path: {p}: {key} has negative label {int(y.min())}; labels must be 0..K-1")
    return y


def inspect(path: str | Path) -> NpzInfo:
    """The file's image shape, classes and sizes, every check done (cached per file version)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"data.path: {str(path)!r} is not a file (from {Path.cwd()}); point it at a .npz with x and y")
    return _inspect(str(p.resolve()), p.stat().st_mtime)


def load(path: str | Path):
    """The file as ImageData: images (N, C, H, W) uint8, labels int64, the test split if any."""
    from cnnbench.data import ImageData

    info = inspect(path)
    z = np.load(Path(path).expanduser(), allow_pickle=False)

    def images(x: np.ndarray) -> np.ndarray:
        x = x[:, None] if info.layout == "NHW" else np.transpose(x, (0, 3, 1, 2)) if info.layout == "NHWC" else x
        return np.ascontiguousarray(x)

    test = (images(z["x_test"]), z["y_test"].astype(np.int64)) if info.has_test else (None, None)
    return ImageData("npz", images(z["x"]), z["y"].astype(np.int64), list(info.classes), *test)
