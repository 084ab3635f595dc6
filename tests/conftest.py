"""Shared fixtures: small files in each dataset's exact on-disk format, and the real data when present."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from imgclf.data.catalog import DEBIAN_FASHION_MNIST

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """An idx file as published for (Fashion-)MNIST: magic 0x0000 0x08 ndim, big-endian dims, uint8 data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def make_fashion_mnist(root: Path, n_train: int = 60, n_test: int = 20, compress: bool = True,
                       seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    for name, array in arrays.items():
        write_idx(root / name, array, compress)
    return arrays


def make_cifar10(root: Path, per_batch: int = 10, seed: int = 0) -> dict[str, dict]:
    """torchvision's cifar-10-batches-py: five data batches, a test batch and batches.meta (pickles)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"batch_label": name, "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": [int(x) for x in rng.integers(0, 10, per_batch)],
                 "filenames": [f"img{i}.png" for i in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
        batches[name] = batch
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer",
                            "dog", "frog", "horse", "ship", "truck"], "num_cases_per_batch": per_batch}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f)
    return batches


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> Path:
    """A small_cnn trained for 2 epochs on digits (seconds), shared by the deployment tests."""
    from trained import train

    return train(tmp_path_factory.mktemp("runs"), "--trainer.max_epochs", "2")


@pytest.fixture(scope="session")
def digits_onnx(digits_run, tmp_path_factory) -> Path:
    """digits_run exported by export.py's function at the default opset, as model.onnx."""
    from imgclf.deploy.export import export

    output = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export(digits_run / "best.ckpt", output)
    return output


@pytest.fixture(scope="session")
def fashion_mnist_real() -> Path:
    """Debian's real Fashion-MNIST (where the catalog looks for it); the test is skipped without it."""
    if not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real Fashion-MNIST not found in {DEBIAN_FASHION_MNIST} "
                    f"(apt-get install dataset-fashion-mnist)")
    return DEBIAN_FASHION_MNIST


def run_script(script: str, *args: str, cwd: Path = REPO, timeout: float = 900, env: dict | None = None):
    """Run a top-level script the way a user does; returns the CompletedProcess (text output)."""
    import subprocess

    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
