"""The DataModule: splits, batches, augmentation only while training."""


import pytest
import torch
from conftest import make_fashion_mnist

from imgclf.data.arrays import ImageArrays
from imgclf.data.datamodule import ImageDataModule
from imgclf.data.memory_loaders import InMemoryBatches, split_train_val
from imgclf.errors import UserError


def test_split_is_deterministic_disjoint_and_complete():
    train, val = split_train_val(1000, 0.1, seed=3)
    assert len(val) == 100 and len(train) == 900
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(1000))
    assert torch.equal(val, split_train_val(1000, 0.1, seed=3)[1])
    assert not torch.equal(val, split_train_val(1000, 0.1, seed=4)[1])


def test_bad_val_fraction():
    with pytest.raises(UserError, match="val_fraction"):
        split_train_val(10, 1.5, 0)


def test_datamodule_splits_digits():
    dm = ImageDataModule("digits", val_fraction=0.2)
    dm.setup("fit")
    sizes = {k: len(v) for k, v in dm.splits.items()}
    assert sizes == {"train": 1150, "val": 287, "test": 360}
    assert dm.num_classes == 10 and dm.in_channels == 1 and dm.image_size == [8, 8]


def test_datamodule_reads_a_given_root(tmp_path):
    make_fashion_mnist(tmp_path, n_train=50, n_test=10)
    dm = ImageDataModule("fashion_mnist", root=str(tmp_path), val_fraction=0.2, download=False)
    dm.setup("fit")
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 40, "val": 10, "test": 10}
    images, labels = next(iter(dm.test_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (10, 1, 28, 28)


def test_missing_root_is_a_clear_error(tmp_path):
    dm = ImageDataModule("fashion_mnist", root=str(tmp_path / "nowhere"), download=False)
    with pytest.raises(UserError, match="dvc pull"):
        dm.prepare_data()


def test_batches_cover_each_item_once_in_near_equal_batches():
    data = ImageArrays(torch.zeros(103, 1, 2, 2, dtype=torch.uint8), torch.arange(103))
    batches = InMemoryBatches(data, batch_size=10, shuffle=True, seed=1)
    sizes = [len(labels) for _, labels in batches]
    assert len(sizes) == len(batches) == 11 and max(sizes) <= 10 and min(sizes) >= 9
    seen = torch.cat([labels for _, labels in batches])
    assert sorted(seen.tolist()) == list(range(103))


def test_epochs_reshuffle():
    data = ImageArrays(torch.zeros(50, 1, 2, 2, dtype=torch.uint8), torch.arange(50))
    epoch = [0]
    batches = InMemoryBatches(data, batch_size=50, shuffle=True, seed=1, epoch=lambda: epoch[0])
    first = next(iter(batches))[1]
    epoch[0] = 1
    assert not torch.equal(first, next(iter(batches))[1])


def test_a_dataset_held_in_memory_has_no_image_cache():
    with pytest.raises(UserError, match="digits dataset is held in memory whole; only datasets of image files"):
        ImageDataModule("digits").build_cache()
