"""Any image data set as one .npz file: the layouts it may use, and a one-line refusal of each malformed file."""

from __future__ import annotations

import numpy as np
import pytest

from cnnbench.config import load_study
from cnnbench.data import load_source
from cnnbench.errors import ConfigError
from tests.helpers import tiny_study

RNG = np.random.default_rng(0)


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


def _images(n=40, shape=(8, 8)):
    return RNG.integers(0, 256, (n, *shape), dtype=np.uint8)


def _study(path, **data):
    return tiny_study(data={"name": "npz", "path": str(path), **data}, aa_control=False,
                      protocol={"folds": 2, "epochs": 1, "batch_size": 8})


@pytest.mark.parametrize("shape, expected", [((8, 8), (1, 8, 8)), ((8, 8, 3), (3, 8, 8)), ((3, 8, 8), (3, 8, 8)),
                                             ((8, 8, 1), (1, 8, 8))])
def test_every_layout_loads_as_channels_first(tmp_path, shape, expected):
    x, y = _images(40, shape), np.arange(40) % 4
    path = _write(tmp_path / "d.npz", x=x, y=y, classes=np.array(["a", "b", "c", "d"]))
    study = load_study(_study(path))
    assert study.variants["baseline"].input_shape == expected and study.variants["baseline"].num_classes == 4
    images = load_source(study.data)
    assert images.x.shape == (40, *expected) and images.classes == ["a", "b", "c", "d"]
    first = x[0] if len(shape) == 2 else np.transpose(x[0], (2, 0, 1)) if shape[-1] in (1, 3) and shape[0] not in (1, 3) else x[0]
    assert np.array_equal(images.x[0].reshape(first.shape) if len(shape) == 2 else images.x[0], first)


def test_a_test_split_is_scored_and_the_contents_are_the_identity(tmp_path):
    path = _write(tmp_path / "d.npz", x=_images(), y=np.arange(40) % 4, x_test=_images(12), y_test=np.arange(12) % 4)
    a = load_study(_study(path))
    assert load_source(a.data).has_test
    moved = tmp_path / "elsewhere.npz"
    moved.write_bytes(path.read_bytes())
    assert load_study(_study(moved)).variants["baseline"].spec_hash == a.variants["baseline"].spec_hash
    _write(path, x=_images(), y=np.arange(40) % 4)  # other contents, same name
    assert load_study(_study(path)).variants["baseline"].spec_hash != a.variants["baseline"].spec_hash


BAD = {
    "float images": (dict(x=RNG.random((40, 8, 8)), y=np.arange(40) % 4), "x is float64, not uint8"),
    "labels too short": (dict(x=_images(), y=np.arange(39) % 4), "y has shape [39]"),
    "negative label": (dict(x=_images(), y=np.r_[-1, np.arange(39) % 4]), "negative label -1"),
    "fractional label": (dict(x=_images(), y=np.arange(40) % 4 + 0.5), "whole numbers"),
    "a class with no images": (dict(x=_images(), y=np.where(np.arange(40) % 4 == 2, 3, np.arange(40) % 4)),
                               "labels [2] have no images"),
    "two-dimensional x": (dict(x=_images(40, (64,)), y=np.arange(40) % 4), "expected (N, H, W)"),
    "ambiguous layout": (dict(x=_images(40, (3, 3, 3)), y=np.arange(40) % 4), "channels first or last"),
    "x_test without y_test": (dict(x=_images(), y=np.arange(40) % 4, x_test=_images(5)), "x_test without y_test"),
    "test images unlike x": (dict(x=_images(), y=np.arange(40) % 4, x_test=_images(5, (9, 9)), y_test=np.zeros(5, int)),
                             "test images must be stored like x"),
    "wrong number of class names": (dict(x=_images(), y=np.arange(40) % 4, classes=np.array(["a", "b"])),
                                    "2 names for 4 classes"),
    "no y": (dict(x=_images()), "no array 'y'"),
    "one class": (dict(x=_images(), y=np.zeros(40, int)), "needs at least 2 classes"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_malformed_file_is_refused_in_one_line(tmp_path, case):
    arrays, message = BAD[case]
    path = _write(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ConfigError) as e:
        load_study(_study(path))
    assert message in str(e.value) and "data.path" in str(e.value) and "\n" not in str(e.value)


def test_too_few_images_of_a_class_for_the_folds(tmp_path):
    y = np.r_[np.zeros(37, int), 1, 1, 1]  # class 1: 3 images
    path = _write(tmp_path / "d.npz", x=_images(), y=y)
    with pytest.raises(ConfigError, match="smallest class of npz has about 3"):
        load_study(tiny_study(data={"name": "npz", "path": str(path)}, protocol={"folds": 5, "epochs": 1}))


@pytest.mark.parametrize("bad, message", [("not a zip", "not a readable .npz file"), (None, "is not a file")])
def test_a_missing_or_unreadable_file(tmp_path, bad, message):
    path = tmp_path / "d.npz"
    if bad:
        path.write_text(bad)
    with pytest.raises(ConfigError, match=message):
        load_study(_study(path))


def test_path_belongs_to_npz_only(tmp_path):
    with pytest.raises(ConfigError, match="data.path: only npz data is read from a file"):
        load_study(tiny_study(data={"name": "digits", "path": "x.npz"}))
    with pytest.raises(ConfigError, match="data.path: an npz study needs path"):
        load_study(tiny_study(data={"name": "npz"}))
