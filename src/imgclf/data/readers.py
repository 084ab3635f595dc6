"""Readers for the in-memory datasets, one per on-disk format.

Each returns `ImageArrays`: uint8 images [N, C, H, W] and int64 labels, the form the training loop
keeps on the device. Files are validated while read so a truncated or corrupt download gives a
`UserError` that names the file, not a numpy shape error deep inside training.
"""

from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imgclf.errors import UserError


@dataclass(frozen=True)
class ImageArrays:
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: torch.Tensor) -> ImageArrays:
        return ImageArrays(self.images[index], self.labels[index])


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


# ----------------------------------------------------------------------------- idx (MNIST family)
IDX_DTYPES = {0x08: np.uint8}


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally gzipped), as published for MNIST and Fashion-MNIST."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip raises these for truncated or non-gzip files
        raise UserError(f"Cannot read {path}: {e}. The file is corrupt or truncated; {_refetch_hint(path)}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise UserError(f"{path} is not an idx file (bad magic number); {_refetch_hint(path)}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise UserError(
            f"{path} holds {len(raw)} bytes but its header promises {expected} (shape {shape}): the file is "
            f"truncated or corrupt; {_refetch_hint(path)}"
        )
    return np.frombuffer(raw, dtype=IDX_DTYPES[raw[2]], offset=header).reshape(shape)


def _refetch_hint(path: Path) -> str:
    return f"delete it and fetch the dataset again (`dvc pull` for the folder {path.parent})."


FASHION_MNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def find_idx_file(root: Path, stem: str) -> Path | None:
    """The idx file `stem` in root, in torchvision's `FashionMNIST/raw/`, gzipped or not."""
    for folder in (root, root / "raw", root / "FashionMNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def read_fashion_mnist(root: Path, train: bool) -> ImageArrays:
    paths = []
    for stem in FASHION_MNIST_FILES[train]:
        path = find_idx_file(root, stem)
        if path is None:
            raise UserError(f"Fashion-MNIST file {stem}[.gz] not found under {root}.")
        paths.append(path)
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(
            f"{paths[0]} ({images.shape}) and {paths[1]} ({labels.shape}) do not form an image/label pair; "
            f"{_refetch_hint(paths[0])}"
        )
    return ImageArrays(torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64)))


# ----------------------------------------------------------------------------- CIFAR-10 (python pickles)
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_BATCHES = {True: [f"data_batch_{i}" for i in range(1, 6)], False: ["test_batch"]}


def _load_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except FileNotFoundError as e:
        raise UserError(f"CIFAR-10 file {path} is missing; {_refetch_hint(path)}") from e
    except Exception as e:  # unpickling a damaged file can raise almost anything
        raise UserError(f"Cannot unpickle {path} ({type(e).__name__}: {e}): corrupt or truncated; "
                        f"{_refetch_hint(path)}") from e


def read_cifar10(root: Path, train: bool) -> ImageArrays:
    """torchvision's on-disk CIFAR-10: pickles holding `data` uint8 [N, 3072] (RGB planes) and `labels`."""
    images, labels = [], []
    for name in CIFAR10_BATCHES[train]:
        path = root / CIFAR10_FOLDER / name
        batch = _load_pickle(path)
        data = np.asarray(batch.get("data"))
        batch_labels = np.asarray(batch.get("labels", batch.get("fine_labels")))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(batch_labels) != len(data):
            raise UserError(f"{path} does not hold CIFAR-10 data (uint8 [N, 3072] plus N labels); "
                            f"{_refetch_hint(path)}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(batch_labels.astype(np.int64))
    return ImageArrays(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))
