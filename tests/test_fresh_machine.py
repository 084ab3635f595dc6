"""A fresh machine: no system dataset, no network. Tests needing real data skip with the command that brings it
(CI fails them instead), a failed download leaves no folder behind, and a system folder is never written to;
an unmarked test that trains or starts Python fails (the `slow` markers stay truthful)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import conftest
import pytest
from conftest import FETCH_FASHION_MNIST, REPO, make_fashion_mnist, real_fashion_mnist
from lightning.pytorch.demos.boring_classes import BoringModel

from imgclf.data.catalog import DATASETS, DEBIAN_FASHION_MNIST
from imgclf.data.datamodule import ImageDataModule
from imgclf.errors import UserError


@pytest.fixture
def no_network(monkeypatch):
    """torchvision's download fails as it does offline (it reaches the network through urllib.request)."""
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(urllib.request, "urlopen", offline)


def test_a_failed_download_leaves_no_folder(no_network, tmp_path):
    root = tmp_path / "data" / "fashion_mnist"
    with pytest.raises(UserError, match="Downloading it through torchvision failed .*dvc pull data/fashion_mnist"):
        ImageDataModule("fashion_mnist", root=str(root)).prepare_data()
    assert list(tmp_path.iterdir()) == []  # neither data/fashion_mnist nor its staging folder nor data/


def test_a_system_folder_is_never_written_to(no_network, tmp_path, monkeypatch):
    system = tmp_path / "usr/share/datasets/fashion-mnist"
    system.mkdir(parents=True)  # the package's folder, its files gone
    monkeypatch.setitem(DATASETS, "fashion_mnist", dataclasses.replace(DATASETS["fashion_mnist"],
                                                                       extra_roots=(system,)))
    with pytest.raises(UserError, match="system folder that this project does not write to"):
        ImageDataModule("fashion_mnist", root=str(system)).prepare_data()
    assert list(system.iterdir()) == []


def test_a_download_moves_in_whole_beside_the_users_files(tmp_path, monkeypatch):
    def download(folder: Path) -> None:  # what torchvision leaves: <folder>/FashionMNIST/raw/*
        make_fashion_mnist(folder / "FashionMNIST" / "raw")
    monkeypatch.setitem(DATASETS, "fashion_mnist", dataclasses.replace(DATASETS["fashion_mnist"], download=download))
    root = tmp_path / "fashion_mnist"
    root.mkdir()
    (root / "notes.txt").write_text("the user's own file")
    ImageDataModule("fashion_mnist", root=str(root)).prepare_data()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fashion_mnist"]  # the staging folder is gone
    assert sorted(p.name for p in root.iterdir()) == ["FashionMNIST", "notes.txt"]
    assert DATASETS["fashion_mnist"].is_present(root)


@pytest.mark.slow  # starts Python in a mount namespace
@pytest.mark.skipif(shutil.which("unshare") is None or sys.platform != "linux", reason="needs util-linux unshare")
def test_without_the_system_dataset_and_network_nothing_is_written_there(tmp_path):
    """The real thing: a tmpfs over /usr/share/datasets (an empty fashion-mnist folder in it) and no network."""
    script = f"""
import os, sys
from pathlib import Path
from imgclf.data.datamodule import ImageDataModule
from imgclf.errors import UserError
os.makedirs("{DEBIAN_FASHION_MNIST}")
for root in (None, "{DEBIAN_FASHION_MNIST}"):
    try:
        ImageDataModule("fashion_mnist", root=root, data_dir="{tmp_path}/data").prepare_data()
    except UserError as e:
        print("refused:", str(e)[:80])
left = sorted(str(p) for p in Path("/usr/share/datasets").rglob("*"))
print("LEFT", left, sorted(str(p) for p in Path("{tmp_path}").rglob("*")))
"""
    shell = 'mount -t tmpfs tmpfs /usr/share/datasets && exec "$0" -c "$1"'
    result = subprocess.run(["unshare", "-mn", "sh", "-c", shell, sys.executable, script], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    if "unshare failed" in result.stderr or "Operation not permitted" in result.stderr:
        pytest.skip(f"cannot make a mount namespace here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("refused:") == 2, result.stdout
    assert f"LEFT ['{DEBIAN_FASHION_MNIST}'] []" in result.stdout


def test_missing_real_data_skips_naming_the_command_or_fails_in_ci(tmp_path, monkeypatch):
    monkeypatch.setattr(conftest, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    monkeypatch.delenv(conftest.REQUIRE_DATA_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"`{FETCH_FASHION_MNIST}`"):
        real_fashion_mnist()
    monkeypatch.setenv(conftest.REQUIRE_DATA_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=f"{FETCH_FASHION_MNIST}.*IMGCLF_REQUIRE_DATA=1"):
        real_fashion_mnist()


def test_an_unmarked_test_may_not_train_or_start_python():
    with pytest.raises(conftest.UnmarkedSlowTest, match="trains a model: mark it @pytest.mark.slow"):
        conftest.quiet_trainer(max_epochs=1).fit(BoringModel())
    with pytest.raises(conftest.UnmarkedSlowTest, match="starts a Python process"):
        subprocess.run([sys.executable, "-c", "import torch"])
    assert subprocess.run(["true"]).returncode == 0  # other programs are fine
