"""Readers on small files written in each dataset's exact on-disk format."""

import dataclasses
import gzip
import pickle

import numpy as np
import pytest
import torch
from conftest import make_cifar10, make_fashion_mnist, write_idx

from imgclf.data import get_dataset
from imgclf.data.readers import read_cifar10, read_digits, read_fashion_mnist, read_idx
from imgclf.errors import UserError


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, compress):
    array = np.random.default_rng(0).integers(0, 256, (5, 28, 28))
    path = write_idx(tmp_path / "images-idx3-ubyte", array, compress)
    np.testing.assert_array_equal(read_idx(path), array)


def test_idx_truncated_file_names_the_file(tmp_path):
    path = write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((5, 28, 28)))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte.*truncated"):
        read_idx(path)


def test_idx_truncated_gzip(tmp_path):
    path = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((50, 28, 28)), compress=True)
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(UserError, match="corrupt or truncated"):
        read_idx(path)


def test_idx_bad_magic(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(b"<html>not found</html>")
    with pytest.raises(UserError, match="not an idx file"):
        read_idx(path)


@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_fashion_mnist_reader(tmp_path, layout):
    root = tmp_path / "fm"
    files = make_fashion_mnist(root if layout == "flat" else root / "FashionMNIST" / "raw", compress=layout == "flat")
    train, test = read_fashion_mnist(root, True), read_fashion_mnist(root, False)
    assert train.images.shape == (60, 1, 28, 28) and train.images.dtype == torch.uint8
    np.testing.assert_array_equal(train.images[:, 0].numpy(), files["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(test.labels.numpy(), files["t10k-labels-idx1-ubyte"])
    assert get_dataset("fashion_mnist").is_present(root)


def test_fashion_mnist_mismatched_pair(tmp_path):
    make_fashion_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(7), compress=True)
    with pytest.raises(UserError, match="do not form an image/label pair"):
        read_fashion_mnist(tmp_path, True)


def test_cifar10_reader_keeps_pixel_layout(tmp_path):
    batches = make_cifar10(tmp_path, per_batch=4)
    train, test = read_cifar10(tmp_path, True), read_cifar10(tmp_path, False)
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (4, 3, 32, 32)
    row = batches["data_batch_2"]["data"][1]  # 1024 red, then 1024 green, then 1024 blue values, row-major
    image = train.images[4 + 1]
    assert image[0, 0, 0] == row[0] and image[0, 0, 5] == row[5] and image[0, 1, 0] == row[32]
    assert image[1, 0, 0] == row[1024] and image[2, 31, 31] == row[3071]
    assert train.labels.tolist()[4:8] == batches["data_batch_2"]["labels"]


def test_cifar10_corrupt_pickle(tmp_path):
    make_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(UserError, match="data_batch_3.*corrupt or truncated"):
        read_cifar10(tmp_path, True)


def test_cifar10_wrong_content(tmp_path):
    make_cifar10(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((3, 100), np.uint8), "labels": [0, 1, 2]}, f)
    with pytest.raises(UserError, match="does not hold CIFAR-10 data"):
        read_cifar10(tmp_path, False)


def test_digits_fixed_stratified_test_split():
    train, test = read_digits(True), read_digits(False)
    assert len(train) + len(test) == 1797 and len(test) == 360
    assert train.images.max() == 255 and train.images.dtype == torch.uint8
    assert torch.bincount(test.labels).min() >= 35  # stratified: every digit about 36 times
    again = read_digits(False)
    assert torch.equal(test.images, again.images)


def test_missing_dataset_names_dvc_pull(tmp_path):
    spec = get_dataset("cifar10")
    with pytest.raises(UserError, match=r"not found in .*empty.*dvc pull data/cifar10.dvc"):
        spec.fetch(tmp_path / "empty", download=False)


def test_failed_download_names_dvc_pull(tmp_path):
    def no_network(root):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    spec = dataclasses.replace(get_dataset("fashion_mnist"), download=no_network)
    with pytest.raises(UserError, match="name resolution.*dvc pull data/fashion_mnist.dvc"):
        spec.fetch(tmp_path / "none")


def test_unknown_dataset():
    with pytest.raises(UserError, match="Unknown dataset 'mnist'.*digits"):
        get_dataset("mnist")


def test_gzip_module_detects_truncation(tmp_path):
    # guards the assumption read_idx relies on: gzip raises for a cut stream instead of returning short data
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(b"a" * 1000)[:-8])
    with pytest.raises(EOFError), gzip.open(path) as f:
        f.read()
