"""Image folders: class names from disk, splits, bad files, the cache, and a short fit on real images."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO
from image_files import write_colour_folder, write_fashion_mnist_folder

from imgclf.bench.pipeline import TestAsValidation
from imgclf.data import cache
from imgclf.data.cache import build_cache, open_cache
from imgclf.data.datamodule import ImageDataModule
from imgclf.data.folders import read_image_folder
from imgclf.data.image_files import SplitOptions
from imgclf.errors import UserError
from imgclf.train.run import RUN_DIR_ENV, main


@pytest.fixture(autouse=True)
def fresh_run_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() keeps its run folder in the environment (for DDP ranks): each in-process run needs its own."""
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
OPTIONS = SplitOptions(val_fraction=0.2, test_fraction=0.2, seed=0)


def test_flat_folder_is_split_stratified(tmp_path: Path) -> None:
    write_colour_folder(tmp_path, {"cat": 10, "dog": 20, "emu": 5})
    (tmp_path / ".thumbnails").mkdir()  # hidden folders are not classes
    files = read_image_folder(tmp_path, OPTIONS)
    assert files.classes == ["cat", "dog", "emu"]
    per_class = {split: [sum(f.label == c for f in fs) for c in range(3)]
                 for split, fs in files.splits.items()}
    assert per_class == {"train": [6, 12, 3], "val": [2, 4, 1], "test": [2, 4, 1]}
    paths = [f.path for f in files.all_files()]
    assert len(paths) == len(set(paths)) == 35  # disjoint and complete
    assert read_image_folder(tmp_path, OPTIONS) == files  # deterministic
    assert read_image_folder(tmp_path, SplitOptions(0.2, 0.2, seed=1)).splits["test"] != files.splits["test"]


def test_split_folders_are_used_as_given(tmp_path: Path) -> None:
    write_colour_folder(tmp_path / "train", {"a": 6, "b": 6})
    write_colour_folder(tmp_path / "test", {"a": 2, "b": 3})
    files = read_image_folder(tmp_path, OPTIONS)
    assert len(files.splits["test"]) == 5
    assert all(f.path.parent.parent.name == "test" for f in files.splits["test"])
    assert len(files.splits["val"]) == 2 and len(files.splits["train"]) == 10  # val split off train/
    write_colour_folder(tmp_path / "val", {"b": 2})  # a split may lack a class
    assert [f.label for f in read_image_folder(tmp_path, OPTIONS).splits["val"]] == [1, 1]


@pytest.mark.parametrize(("layout", "message"), [
    ({"only": 4}, r"holds 1 class folder\(s\) \['only'\], but classification needs at least 2"),
    ({}, r"holds 0 class folder\(s\)"),
])
def test_fewer_than_two_classes(tmp_path: Path, layout: dict, message: str) -> None:
    tmp_path.mkdir(exist_ok=True)
    write_colour_folder(tmp_path, layout)
    with pytest.raises(UserError, match=message):
        ImageDataModule(dataset="folder", root=str(tmp_path))


def test_other_bad_folders(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist. Set --data.root"):
        ImageDataModule(dataset="folder", root=str(tmp_path / "nowhere"))
    write_colour_folder(tmp_path, {"a": 3, "b": 3})
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"Class folder .*empty holds no images"):
        read_image_folder(tmp_path, OPTIONS)
    split = tmp_path / "split"
    write_colour_folder(split / "train", {"a": 3, "b": 3})
    write_colour_folder(split / "val", {"c": 1})
    with pytest.raises(UserError, match=r"class folders \['c'\] that .*train lacks"):
        read_image_folder(split, OPTIONS)


def first_batch(dm: ImageDataModule, split: str):
    loader = {"train": dm.train_dataloader, "test": dm.test_dataloader}[split]()
    return next(iter(loader))


def test_broken_test_image_stops_setup_naming_it_or_is_skipped(tmp_path: Path) -> None:
    write_colour_folder(tmp_path / "train", {"a": 4, "b": 4})
    write_colour_folder(tmp_path / "test", {"a": 2, "b": 2})
    bad = tmp_path / "test" / "b" / "1.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated: found only by decoding, never used in training
    kwargs = dict(dataset="folder", root=str(tmp_path), val_fraction=0.25, input_size=16, num_workers=1)
    with pytest.raises(UserError, match=rf"1 image file\(s\) cannot be read: {bad} \(OSError: [^)]*runcated.*"
                                        rf"--data.skip_bad_images true"):
        ImageDataModule(**kwargs).setup("fit")
    dm = ImageDataModule(**kwargs, skip_bad_images=True)
    with pytest.warns(UserWarning, match=rf"Leaving out unreadable images .*{bad}"):
        dm.setup("fit")
    assert len(dm.splits["test"]) == 3 and bad not in {f.path for f in dm.splits["test"].files}
    assert dm.source.skipped == {bad}


def test_image_broken_after_setup_is_named_or_skipped_with_a_count(tmp_path: Path) -> None:
    """The DataLoader's own guard, for a file that passed the setup check but does not decode."""
    write_colour_folder(tmp_path, {"a": 4, "b": 4})
    bad = tmp_path / "b" / "1.jpg"
    kwargs = dict(dataset="folder", root=str(tmp_path), val_fraction=0.0, test_fraction=0.0, batch_size=8,
                  input_size=16, num_workers=1)
    dm = ImageDataModule(**kwargs)
    dm.setup("fit")
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is no JPEG")
    batch = first_batch(dm, "train")
    with pytest.raises(UserError, match=rf"Cannot read image {bad} \(.*\).*--data.skip_bad_images true"):
        dm.source.clean_batch(batch, dm.splits["train"])
    bad.write_bytes((tmp_path / "b" / "0.jpg").read_bytes())
    dm = ImageDataModule(**kwargs, skip_bad_images=True)
    dm.setup("fit")
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is no JPEG")
    with pytest.warns(UserWarning, match=rf"Skipping unreadable image {bad} .* 1 skipped so far"):
        images, labels = dm.source.clean_batch(first_batch(dm, "train"), dm.splits["train"])
    assert images.shape == (7, 3, 16, 16) and len(labels) == 7 and dm.source.skipped == {bad}


def test_class_with_a_single_image_is_warned_about(tmp_path: Path) -> None:
    write_colour_folder(tmp_path, {"a": 10, "b": 10, "solo": 1})
    dm = ImageDataModule(dataset="folder", root=str(tmp_path), val_fraction=0.2, test_fraction=0.2,
                         input_size=16, num_workers=0)
    with pytest.warns(UserWarning, match=r"1 class\(es\) have no image in the val or test split.*"
                                         r"'solo' \(train 1, val 0, test 0\).*f1_macro"):
        dm.setup("fit")


def test_cache_matches_decoding_and_goes_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_colour_folder(tmp_path / "images", {"a": 3, "b": 3}, size=(70, 50))
    cache_dir = tmp_path / "cache"
    kwargs = dict(dataset="folder", root=str(root), val_fraction=0.0, test_fraction=0.3, input_size=21,
                  num_workers=0, eval_batch_size=8)
    with pytest.raises(UserError, match="No image cache in .*imgclf.train.cache_images"):
        ImageDataModule(**kwargs, cache_dir=str(cache_dir)).setup("fit")
    dm = ImageDataModule(**kwargs, cache_dir=str(cache_dir))
    dm.build_cache()
    dm.setup("fit")
    plain = ImageDataModule(**kwargs)
    plain.setup("fit")
    cached_images, cached_labels, _ = first_batch(dm, "test")
    images, labels, _ = first_batch(plain, "test")
    assert torch.equal(cached_labels, labels) and torch.equal(cached_images, images)
    files, size = dm.source.files.all_files(), dm.source.input_size
    (root / "a" / "0.jpg").touch()  # a changed image (new mtime) invalidates the cache
    with pytest.raises(UserError, match="stale"):
        open_cache(cache_dir, root, files, size, False, 0.1)
    build_cache(cache_dir, root, files, size, False, 0.1, skip_bad_images=False, num_workers=0)
    with pytest.raises(UserError, match="stale"):  # so do other settings
        open_cache(cache_dir, root, files, size + 7, False, 0.1)
    monkeypatch.setattr(cache, "DECODER_VERSION", cache.DECODER_VERSION + 1)
    with pytest.raises(UserError, match="stale"):  # and a decoder that gives other pixels
        open_cache(cache_dir, root, files, size, False, 0.1)


@pytest.mark.slow
def test_short_fit_on_fashion_mnist_pngs_learns(fashion_mnist_real: Path, tmp_path: Path) -> None:
    root = write_fashion_mnist_folder(tmp_path / "fmnist", per_class=80)
    run_dir = main([
        "--config", str(REPO / "configs/folder.yaml"), "--data.root", str(root),
        "--runs_dir", str(tmp_path / "runs"),
        # 16 px keeps this affordable on a busy 2-core CPU; the images are real Fashion-MNIST all the same
        "--data.input_size", "16", "--data.num_workers", "1", "--data.batch_size", "32",
        "--model.network", "small_cnn", "--model.weights", "null", "--model.lr", "0.003",
        "--model.freeze_backbone_epochs", "0", "--model.backbone_lr_scale", "1.0",
        "--trainer.max_epochs", "5", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
    ])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # 120 test images of 10 classes: chance is 0.10; this run reached about 0.6.
    assert metrics["test/acc"] > 0.4, metrics
    hparams = torch.load(run_dir / "best.ckpt", map_location="cpu", weights_only=False)["hyper_parameters"]
    assert hparams["class_names"] == [f"class_{c}" for c in range(10)]  # learned from the folder names


def test_benchmark_validating_on_the_test_split_names_the_broken_test_image(tmp_path: Path) -> None:
    """The benchmarks validate on the test split: a broken test image is looked up in that split, not in val."""
    write_colour_folder(tmp_path / "train", {"a": 4, "b": 4})
    write_colour_folder(tmp_path / "test", {"a": 3, "b": 3})
    dm = TestAsValidation(dataset="folder", root=str(tmp_path), val_fraction=0.25, input_size=16, num_workers=1)
    dm.setup("fit")
    bad = dm.splits["test"].files[-1].path
    assert dm.splits["val"] is dm.splits["test"]
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is no JPEG")
    batch = next(iter(dm.val_dataloader()))
    assert len(batch[0]) == len(dm.splits["test"])  # validation batches come from the test split
    dm.trainer = SimpleNamespace(training=False, validating=True, sanity_checking=False)
    with pytest.raises(UserError, match=rf"Cannot read image {bad} \("):
        dm.on_before_batch_transfer(batch, 0)
