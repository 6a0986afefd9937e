"""Data: real IDX files, the shared MNIST ones and small broken ones built here."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
from conftest import free_ports, make_dataset, write_idx

from mnist_ray.data import DataError, data_root, load, read_idx


def test_mnist_splits_have_the_published_shapes_and_label_counts(mnist_train, mnist_test):
    assert mnist_train.images.shape == (60000, 28, 28) and mnist_train.images.dtype == np.uint8
    assert mnist_test.images.shape == (10000, 28, 28)
    assert mnist_train.labels.dtype == np.int64
    assert np.bincount(mnist_train.labels).tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949
    ]  # fmt: skip
    assert np.bincount(mnist_test.labels).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009
    ]  # fmt: skip


def test_arrays_are_torchvisions_data_and_targets(data_dir, mnist_test):
    import torchvision

    ds = torchvision.datasets.MNIST(str(data_dir), train=False, download=False)
    assert np.array_equal(ds.data.numpy(), mnist_test.images)
    assert np.array_equal(ds.targets.numpy(), mnist_test.labels)


def test_root_comes_from_option_then_environment_then_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("MNIST_RAY_DATA", str(tmp_path / "env"))
    assert data_root(tmp_path / "opt") == tmp_path / "opt"
    assert data_root(None) == tmp_path / "env"
    monkeypatch.delenv("MNIST_RAY_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data_root(None) == tmp_path / "cache" / "mnist-ray"


def test_small_fashion_dataset_loads_through_the_same_path(tmp_path):
    make_dataset(tmp_path, n_train=30, n_test=10)
    train = load("fashion-mnist", "train", tmp_path, download=False)
    assert train.images.shape == (30, 28, 28) and train.labels.shape == (30,)


@pytest.fixture
def small(tmp_path):
    make_dataset(tmp_path, n_train=20, n_test=10)
    return tmp_path, tmp_path / "FashionMNIST" / "raw"


def _load_error(root) -> str:
    with pytest.raises(DataError) as info:
        load("fashion-mnist", "train", root, download=False)
    return str(info.value)


def test_truncated_images_file_is_named(small):
    root, raw = small
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    message = _load_error(root)
    assert str(path) in message and "truncated" in message


def test_empty_file_is_named(small):
    root, raw = small
    (raw / "train-labels-idx1-ubyte").write_bytes(b"")
    message = _load_error(root)
    assert "train-labels-idx1-ubyte" in message and "empty" in message


def test_gzipped_file_is_named(small):
    root, raw = small
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(gzip.compress(path.read_bytes()))
    message = _load_error(root)
    assert str(path) in message and "gzip" in message


def test_labels_file_given_as_images_is_named(small):
    root, raw = small
    shutil.copy(raw / "train-labels-idx1-ubyte", raw / "train-images-idx3-ubyte")
    message = _load_error(root)
    assert "train-images-idx3-ubyte" in message and "magic number 2049" in message


def test_label_outside_0_9_is_named(small):
    root, raw = small
    write_idx(raw / "train-labels-idx1-ubyte", [1, 2, 12] + [0] * 17)
    message = _load_error(root)
    assert "train-labels-idx1-ubyte" in message and "label 12 at index 2" in message


def test_counts_that_disagree_are_named(small):
    root, raw = small
    write_idx(raw / "train-labels-idx1-ubyte", [1] * 19)
    message = _load_error(root)
    assert "19 labels for 20 images" in message


def test_corrupted_mnist_file_fails_its_md5(tmp_path, data_dir):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        shutil.copy(data_dir / "MNIST" / "raw" / name, raw / name)
    path = raw / "t10k-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[5000] ^= 0xFF  # one flipped byte: size and header still fine
    path.write_bytes(bytes(data))
    with pytest.raises(
        DataError, match="md5 .* is not the published 2646ac647ad5339dbf082846283269ea"
    ):
        load("mnist", "test", tmp_path, download=False)


def test_missing_files_without_download_say_where_to_put_them(tmp_path):
    with pytest.raises(DataError) as info:
        load("mnist", "test", tmp_path, download=False)
    assert str(tmp_path / "MNIST" / "raw") in str(info.value) and "--data-dir" in str(info.value)


def test_read_idx_checks_header_against_size(tmp_path):
    path = write_idx(tmp_path / "x", np.zeros((3, 28, 28)))
    assert read_idx(path, 2051).shape == (3, 28, 28)
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(DataError, match="trailing bytes"):
        read_idx(path, 2051)


def test_a_folder_named_but_missing_is_said_so_and_not_made(tmp_path, monkeypatch):
    monkeypatch.delenv("MNIST_RAY_DATA", raising=False)
    typo = tmp_path / "dta"
    with pytest.raises(DataError, match=f"{typo}: no such folder"):
        load("mnist", "train", typo)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_download_leaves_nothing_behind(tmp_path, monkeypatch):
    """The real download, from a mirror where nothing listens: no half-made MNIST/raw."""
    import torchvision.datasets as tvd

    (port,) = free_ports(1)
    monkeypatch.setattr(tvd.MNIST, "mirrors", [f"http://127.0.0.1:{port}/"])
    with pytest.raises(DataError, match="files missing and the download failed"):
        load("mnist", "train", tmp_path)
    assert list(tmp_path.iterdir()) == []
