"""Readers on small files written in each dataset's exact on-disk format."""

import dataclasses
import gzip
import hashlib
import pickle
import shutil

import numpy as np
import pytest
import torch
from conftest import make_cifar10, make_fashion_mnist, write_idx

from imgclf.data import readers
from imgclf.data.catalog import get_dataset
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


# ----------------------------------------------------------------------------- published checksums
def copy_fashion_mnist_test_files(source, target):
    target.mkdir()
    for stem in readers.FASHION_MNIST_FILES[False]:
        shutil.copy(source / f"{stem}.gz", target)
    return target / "t10k-images-idx3-ubyte.gz"


def test_real_fashion_mnist_matches_published_checksums(fashion_mnist_real):
    test = read_fashion_mnist(fashion_mnist_real, False)  # Debian's re-compressed copies hold the published bytes
    assert len(test) == 10_000


@pytest.mark.parametrize(("offset", "error"), [(1000, "invalid distance"), (5000, "CRC check failed")])
def test_byte_changed_inside_gz_names_file_and_restore_command(fashion_mnist_real, tmp_path, offset, error):
    images = copy_fashion_mnist_test_files(fashion_mnist_real, tmp_path / "fashion_mnist")
    raw = bytearray(images.read_bytes())
    raw[offset] ^= 0xFF  # inside the deflate stream: zlib finds invalid data, or gzip's CRC-32 differs
    images.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=rf"t10k-images-idx3-ubyte\.gz: .*{error}.*corrupt.*"
                                        rf"delete it and run `dvc pull data/fashion_mnist\.dvc`"):
        read_fashion_mnist(images.parent, False)


@pytest.mark.parametrize("compress", [False, True])
def test_altered_pixel_fails_published_md5(fashion_mnist_real, tmp_path, compress):
    # A changed byte in an uncompressed file, or a re-compressed altered file, passes every structural check.
    folder = tmp_path / "fm"
    copy_fashion_mnist_test_files(fashion_mnist_real, folder)
    images = folder / "t10k-images-idx3-ubyte.gz"
    content = bytearray(gzip.decompress(images.read_bytes()))
    content[16 + 123 * 784 + 400] ^= 0x01  # one pixel of image 123
    images.unlink()
    if compress:
        images.write_bytes(gzip.compress(bytes(content), compresslevel=1))
    else:
        images.with_suffix("").write_bytes(bytes(content))
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte.*corrupt.*md5 .*published "
                                        r"8181f5470baa50b63fa0f6fddb340f0a.*dvc pull data/fashion_mnist\.dvc"):
        read_fashion_mnist(folder, False)


def test_debian_copy_names_the_package_to_reinstall():
    hint = readers.restore_hint(readers.DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz", "fashion_mnist")
    assert "apt-get install --reinstall dataset-fashion-mnist" in hint


def test_cifar10_checksums_are_torchvisions():
    from torchvision.datasets import CIFAR10

    assert readers.CIFAR10_MD5 == dict(CIFAR10.train_list + CIFAR10.test_list)


def test_full_size_cifar10_batch_must_match_published_md5(tmp_path, monkeypatch):
    make_cifar10(tmp_path, per_batch=4)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch = {"data": np.random.default_rng(0).integers(0, 256, (10_000, 3072), dtype=np.uint8),
             "labels": [i % 10 for i in range(10_000)]}
    path.write_bytes(pickle.dumps(batch))
    with pytest.raises(UserError, match=r"test_batch is corrupt.*published 40351d587109b95175f43aff81a1287e"
                                        r".*dvc pull data/cifar10\.dvc"):
        read_cifar10(tmp_path, False)
    # the same file passes once it is the published one (here: by making its md5 the published md5)
    monkeypatch.setitem(readers.CIFAR10_MD5, "test_batch", hashlib.md5(path.read_bytes()).hexdigest())
    assert len(read_cifar10(tmp_path, False)) == 10_000
