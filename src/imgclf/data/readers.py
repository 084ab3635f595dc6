"""Readers for the in-memory datasets, one per on-disk format.

Each returns `ImageArrays` (arrays.py): uint8 images [N, C, H, W] and int64 labels, the form the training
loop keeps on the device. Files are validated while read so a truncated or corrupt download gives a
`UserError` that names the file, not a numpy shape error deep inside training.

Published checksums are checked where they exist. A file that holds exactly as many images as the
published one claims to be it, so its bytes must match the published md5: a bit flip (a damaged disk or
DVC cache) keeps the size and the structure and would otherwise train silently on altered data. Smaller
files in the same format (test fixtures, subsets) get the structural checks only.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import zlib
from pathlib import Path

import numpy as np
import torch

from imgclf.data.arrays import ImageArrays
from imgclf.errors import UserError

# ----------------------------------------------------------------------------- digits (scikit-learn)
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 0  # fixed, never the config's seed: the test split must not move between runs


def read_digits(train: bool) -> ImageArrays:
    """scikit-learn's bundled 8x8 digits (values 0-16), scaled to 0-255.

    Digits has no official test split, so a stratified 20% split with a fixed seed plays that role.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    index = np.arange(len(images))
    train_idx, test_idx = train_test_split(
        index, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_TEST_SEED, stratify=digits.target
    )
    idx = np.sort(train_idx if train else test_idx)
    return ImageArrays(torch.from_numpy(images[idx]), torch.from_numpy(digits.target[idx].astype(np.int64)))


# ----------------------------------------------------------------------------- published checksums
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist


def restore_hint(path: Path, dataset: str) -> str:
    """How to get an intact copy of a dataset file back, for the place it was read from."""
    if path.is_relative_to(DEBIAN_FASHION_MNIST):
        return "reinstall it with `sudo apt-get install --reinstall dataset-fashion-mnist`."
    # Deleting first matters: `dvc checkout`/`pull` leave a modified file alone, and a file restored from a
    # damaged cache entry counts as up to date afterwards; `dvc pull` re-fetches a damaged cache entry.
    return (f"delete it and run `dvc pull data/{dataset}.dvc` (DVC restores it from its cache, re-fetching a "
            f"damaged cache entry from the remote); without DVC, delete it and run again to download it "
            f"(torchvision, needs internet).")


def check_published_md5(path: Path, content: bytes, published_md5: str, dataset: str) -> None:
    """UserError naming `path` unless md5(content) is the published checksum."""
    actual = hashlib.md5(content, usedforsecurity=False).hexdigest()
    if actual != published_md5:
        raise UserError(f"{path} is corrupt: it holds as many images as the published {dataset} file but "
                        f"not the same bytes (md5 {actual}, published {published_md5}). To restore it, "
                        f"{restore_hint(path, dataset)}")


# ----------------------------------------------------------------------------- idx (MNIST family)
IDX_DTYPES = {0x08: np.uint8}


def read_idx_bytes(path: Path, dataset: str = "fashion_mnist") -> bytes:
    """The idx content of `path`, decompressed when it ends in .gz (gzip's CRC-32 checks the content)."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:  # truncated, altered or non-gzip data
        raise UserError(f"Cannot read {path}: {e}. The file is corrupt or truncated; to restore it, "
                        f"{restore_hint(path, dataset)}") from e


def read_idx(path: Path, content: bytes | None = None, dataset: str = "fashion_mnist") -> np.ndarray:
    """Read an idx file (optionally gzipped), as published for MNIST and Fashion-MNIST; `content`: its bytes,
    when already read; `dataset` names the dataset in the error messages."""
    raw = read_idx_bytes(path, dataset) if content is None else content
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise UserError(f"{path} is not an idx file (bad magic number); to restore it, "
                        f"{restore_hint(path, dataset)}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise UserError(
            f"{path} holds {len(raw)} bytes but its header promises {expected} (shape {shape}): the file is "
            f"truncated or corrupt; to restore it, {restore_hint(path, dataset)}"
        )
    return np.frombuffer(raw, dtype=IDX_DTYPES[raw[2]], offset=header).reshape(shape)


FASHION_MNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# md5 of each published file's idx content: what the published .gz files (torchvision's FashionMNIST checks
# their md5s on download) decompress to. Checking the content rather than the .gz serves every copy alike:
# torchvision's download and its unpacked files, and Debian's .gz files (re-compressed without the file name
# in the gzip header, so their own md5s differ from the published .gz md5s while the content is the same).
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
FASHION_MNIST_SIZES = {True: 60_000, False: 10_000}  # images in the published train and test files


def find_idx_file(root: Path, stem: str) -> Path | None:
    """The idx file `stem` in root, in torchvision's `FashionMNIST/raw/`, gzipped or not."""
    for folder in (root, root / "raw", root / "FashionMNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def read_fashion_mnist_file(path: Path, stem: str, published_count: int) -> np.ndarray:
    """One idx file, checked against the published content md5 when it holds the published image count."""
    content = read_idx_bytes(path)
    array = read_idx(path, content)
    if len(array) == published_count:
        check_published_md5(path, content, FASHION_MNIST_MD5[stem], "fashion_mnist")
    return array


def read_fashion_mnist(root: Path, train: bool) -> ImageArrays:
    paths = []
    for stem in FASHION_MNIST_FILES[train]:
        path = find_idx_file(root, stem)
        if path is None:
            raise UserError(f"Fashion-MNIST file {stem}[.gz] not found under {root}.")
        paths.append(path)
    images, labels = (read_fashion_mnist_file(path, stem, FASHION_MNIST_SIZES[train])
                      for path, stem in zip(paths, FASHION_MNIST_FILES[train], strict=True))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(
            f"{paths[0]} ({images.shape}) and {paths[1]} ({labels.shape}) do not form an image/label pair; "
            f"to restore them, {restore_hint(paths[0], 'fashion_mnist')}"
        )
    return ImageArrays(torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64)))


# ----------------------------------------------------------------------------- CIFAR-10 (python pickles)
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_BATCHES = {True: [f"data_batch_{i}" for i in range(1, 6)], False: ["test_batch"]}
# torchvision's CIFAR10.train_list and test_list (tests/test_readers.py checks they still agree).
CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
CIFAR10_BATCH_SIZE = 10_000  # images in each published batch


def _load_pickle(path: Path) -> tuple[dict, bytes]:
    """The unpickled batch and the file's bytes (kept for the checksum)."""
    try:
        content = path.read_bytes()
    except FileNotFoundError as e:
        raise UserError(f"CIFAR-10 file {path} is missing; {restore_hint(path, 'cifar10')}") from e
    try:
        return pickle.loads(content, encoding="latin1"), content
    except Exception as e:  # unpickling a damaged file can raise almost anything
        raise UserError(f"Cannot unpickle {path} ({type(e).__name__}: {e}): corrupt or truncated; to restore "
                        f"it, {restore_hint(path, 'cifar10')}") from e


def read_cifar10(root: Path, train: bool) -> ImageArrays:
    """torchvision's on-disk CIFAR-10: pickles holding `data` uint8 [N, 3072] (RGB planes) and `labels`."""
    images, labels = [], []
    for name in CIFAR10_BATCHES[train]:
        path = root / CIFAR10_FOLDER / name
        batch, content = _load_pickle(path)
        data = np.asarray(batch.get("data"))
        batch_labels = np.asarray(batch.get("labels", batch.get("fine_labels")))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(batch_labels) != len(data):
            raise UserError(f"{path} does not hold CIFAR-10 data (uint8 [N, 3072] plus N labels); to "
                            f"restore it, {restore_hint(path, 'cifar10')}")
        if len(data) == CIFAR10_BATCH_SIZE:
            check_published_md5(path, content, CIFAR10_MD5[name], "cifar10")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(batch_labels.astype(np.int64))
    return ImageArrays(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))
