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
QUIET_ARGS = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]  # for main.py

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
def digits_report(digits_onnx) -> dict:
    """verify_onnx's report on digits_onnx (with int8 and the model card beside the model), shared: one verify."""
    from imgclf.deploy.verify import verify

    return verify(digits_onnx, report=digits_onnx.parent / "report.json", quantize=True, latency_repeats=5)


@pytest.fixture(scope="session")
def digits_onnx(digits_run, tmp_path_factory) -> Path:
    """digits_run exported by export.py's function at the default opset, as model.onnx."""
    from imgclf.deploy.export import export

    output = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export(digits_run / "best.ckpt", output)
    return output


REQUIRE_DATA_ENV = "IMGCLF_REQUIRE_DATA"  # CI sets it to 1 (.ci/run): a missing dataset fails instead of skipping
FETCH_FASHION_MNIST = "sudo apt-get install dataset-fashion-mnist"


def real_fashion_mnist() -> Path:
    """Debian's real Fashion-MNIST (where the catalog looks for it). Without it the calling test is skipped, with
    the one command that brings the files, or fails when IMGCLF_REQUIRE_DATA=1 (CI runs everything)."""
    if (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        return DEBIAN_FASHION_MNIST
    reason = f"needs real Fashion-MNIST in {DEBIAN_FASHION_MNIST}: `{FETCH_FASHION_MNIST}`"
    if os.environ.get(REQUIRE_DATA_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_DATA_ENV}=1 turns this skip into a failure)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def fashion_mnist_real() -> Path:
    return real_fashion_mnist()


# --------------------------------------------------------------------------- truthful `slow` markers
# A test that is not marked slow may not train (Lightning's fit loop) nor start a Python process (main.py, a tool, a
# probe): both cost seconds to minutes on 2 cores. The guard covers setup too, so a session fixture that
# trains (digits_run) counts against the first unmarked test that asks for it.
class UnmarkedSlowTest(Exception):
    pass


def _refuse(what: str):
    def refuse(*args, **kwargs):
        raise UnmarkedSlowTest(f"this test {what}: mark it @pytest.mark.slow (tests/conftest.py)")
    return refuse


def _starts_python(args) -> bool:
    """A Python process that runs a script, the project, torch or a notebook kernel: seconds of imports each.
    (Libraries' own one-line probes, such as typeshed_client asking for sys.path, are left alone.)"""
    if not isinstance(args, (list, tuple)) or not args or not Path(str(args[0])).name.startswith("python"):
        return False
    rest = " ".join(str(arg) for arg in args[1:])
    return any(word in rest for word in (".py", "imgclf", "torch", "ipykernel"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    with _guard(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    with _guard(item):
        return (yield)


class _guard:
    def __init__(self, item):
        self.active = item.get_closest_marker("slow") is None
        self.patch = pytest.MonkeyPatch()

    def __enter__(self):
        if not self.active:
            return
        import subprocess

        from lightning.pytorch.loops.fit_loop import _FitLoop

        # The fit loop, not Trainer.fit: a run refused during setup (a bad checkpoint) trains nothing.
        self.patch.setattr(_FitLoop, "run", _refuse("trains a model"))
        popen = subprocess.Popen.__init__

        def checked_popen(popen_self, args, *rest, **kwargs):
            if _starts_python(args):
                _refuse("starts a Python process")()
            return popen(popen_self, args, *rest, **kwargs)
        self.patch.setattr(subprocess.Popen, "__init__", checked_popen)

    def __exit__(self, *exc):
        self.patch.undo()


def run_script(script: str, *args: str, cwd: Path = REPO, timeout: float = 900, env: dict | None = None):
    """Run a top-level script the way a user does; returns the CompletedProcess (text output)."""
    import subprocess

    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def quiet_trainer(**settings):
    """A one-CPU Lightning Trainer that writes and prints nothing (no logger, checkpoints, bar or summary)."""
    import lightning as L

    return L.Trainer(**{"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
                        "enable_progress_bar": False, "enable_model_summary": False, **settings})


def run_in_process(command: str, *args: str) -> int | str | None:
    """Run a top-level script (`export.py`) or a tool module (`imgclf.deploy.predictor`) as `__main__` in
    this process (no second torch import); returns its exit code, or the message it exited with."""
    import runpy

    saved = sys.argv
    sys.argv = [command, *args]
    try:
        if command.endswith(".py"):
            runpy.run_path(str(REPO / command), run_name="__main__")
        else:
            runpy.run_module(command, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        return e.code
    finally:
        sys.argv = saved
    return 0
