"""The LightningDataModule: pick a dataset by name, split it, serve batches, augment them on the device."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from imgclf.data.catalog import get_dataset
from imgclf.data.class_counts import check_class_counts
from imgclf.data.file_data import FileData
from imgclf.data.files import SplitOptions
from imgclf.data.loaders import InMemoryBatches
from imgclf.data.readers import ImageArrays
from imgclf.distributed import per_device_batch_size
from imgclf.errors import UserError


def split_train_val(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic split of range(n) into (train, val) indices, both sorted; depends only on n and seed."""
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"--data.val_fraction must be in [0, 1), got {val_fraction}.")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = round(n * val_fraction)
    return order[n_val:].sort().values, order[:n_val].sort().values


class ImageDataModule(L.LightningDataModule):
    """Image classification data, chosen by name.

    Args:
        dataset: digits (bundled with scikit-learn, offline), fashion_mnist or cifar10.
        root: folder holding the dataset's files; default data/<dataset> (Fashion-MNIST also looks in
            /usr/share/datasets/fashion-mnist, where Debian's dataset-fashion-mnist puts it).
        batch_size: training batch size per device (under DDP the global batch is this times the devices).
        global_batch_size: training batch size summed over all devices and nodes; when set, it replaces
            batch_size, which becomes global_batch_size / world size (it must divide evenly), so the
            optimization does not change when the device count does.
        eval_batch_size: validation/test batch size per device.
        val_fraction: share of the official training set held out for validation.
        split_seed: seed of the train/val split (kept apart from the training seed on purpose).
        augment: apply the dataset's training augmentation (none at evaluation, ever).
        data_dir: parent folder of the per-dataset folders.
        download: let torchvision download a missing dataset (where the dataset allows it).
        input_size: side of the square network input, for datasets of image files (stanford_cars, folder).
        num_workers: DataLoader worker processes decoding image files; default: the CPU cores less one.
        crop_to_box: crop each image to its object box (Stanford Cars) before resizing.
        box_padding: grow the box by this share of its width/height on each side before cropping.
        skip_bad_images: leave out (and count) image files that fail to decode, instead of stopping.
        test_fraction: share held out for testing where an image folder has no test/ split.
        cache_dir: read pre-resized images from this cache (written by cache_images.py) instead of decoding.
    """

    def __init__(
        self,
        dataset: str = "digits",
        root: str | None = None,
        batch_size: int = 64,
        global_batch_size: int | None = None,
        eval_batch_size: int = 1024,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        augment: bool = True,
        data_dir: str = "data",
        download: bool = True,
        input_size: int = 224,
        num_workers: int | None = None,
        crop_to_box: bool = False,
        box_padding: float = 0.1,
        skip_bad_images: bool = False,
        test_fraction: float = 0.1,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.spec = get_dataset(dataset)
        if batch_size < 2:
            raise UserError(f"--data.batch_size must be >= 2 (BatchNorm needs two images), got {batch_size}.")
        if eval_batch_size < 1:  # evaluation uses BatchNorm's running statistics: one image is enough
            raise UserError(f"--data.eval_batch_size must be >= 1, got {eval_batch_size}.")
        self.root = self.spec.locate(root, data_dir)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_fraction, self.split_seed, self.augment = val_fraction, split_seed, augment
        self.global_batch_size = global_batch_size
        self.shuffle_seed = 0
        self.splits: dict[str, ImageArrays] = {}
        self.file_data: FileData | None = None
        if self.spec.list_files is not None:  # large images: decoded in DataLoader workers (file_data.py)
            options = SplitOptions(val_fraction, test_fraction, split_seed)
            self.file_data = FileData(self.spec, self.root, options, input_size, num_workers, crop_to_box,
                                      box_padding, skip_bad_images, cache_dir)
            self.spec = self.file_data.spec  # now with the class names read from disk

    # What the model needs to know about the data (linked into the model's arguments by the CLI).
    @property
    def class_names(self) -> list[str]:
        return list(self.spec.classes)

    @property
    def num_classes(self) -> int:
        return len(self.spec.classes)

    @property
    def in_channels(self) -> int:
        return self.spec.channels

    @property
    def image_size(self) -> list[int]:
        return list(self.spec.image_size)

    @property
    def mean(self) -> list[float]:
        return list(self.spec.mean)

    @property
    def std(self) -> list[float]:
        return list(self.spec.std)

    def prepare_data(self) -> None:
        self.spec.fetch(self.root, self.hparams.download)  # once per node (rank 0): the only download

    def setup(self, stage: str | None = None) -> None:
        if self.trainer:
            if self.global_batch_size is not None:
                self.batch_size = per_device_batch_size(self.global_batch_size, self.trainer.world_size)
            # Every rank must shuffle with the same permutation, or the shards overlap. Without seed_everything
            # each process starts from its own random torch seed, so all take rank 0's.
            self.shuffle_seed = self.trainer.strategy.broadcast(torch.initial_seed() % 2**31)
        if self.splits:
            return
        if self.file_data is not None:
            self.splits = self.file_data.datasets()
        else:
            self.splits = self.read_in_memory()
        warning = check_class_counts(self.class_names, {name: split.labels.tolist()
                                                        for name, split in self.splits.items()})
        if warning:
            rank_zero_warn(warning)

    def read_in_memory(self) -> dict[str, ImageArrays]:
        self.spec.fetch(self.root, download=False)  # a clear error if rank 0's download did not land
        full_train = self.spec.read(self.root, True)
        train_idx, val_idx = split_train_val(len(full_train), self.val_fraction, self.split_seed)
        splits = {"train": full_train.subset(train_idx), "val": full_train.subset(val_idx),
                  "test": self.spec.read(self.root, False)}
        for name, split in splits.items():
            if split.labels.numel() and int(split.labels.max()) >= self.num_classes:
                raise UserError(f"The {name} split of {self.spec.name} in {self.root} holds label "
                                f"{int(split.labels.max())}, but the dataset has {self.num_classes} classes.")
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        # Small datasets live on the training device as uint8: no host-to-device copy per step.
        return {name: ImageArrays(s.images.to(device), s.labels.to(device)) for name, s in splits.items()}

    def _batches(self, split: str, train: bool) -> InMemoryBatches:
        if self.file_data is not None:
            batch_size = self.batch_size if train else self.eval_batch_size
            return self.file_data.loader(self.splits[split], batch_size, train, self.trainer)
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        return InMemoryBatches(
            self.splits[split],
            self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            seed=self.shuffle_seed,
            rank=rank,
            world_size=world,
            epoch=lambda: self.trainer.current_epoch if self.trainer else 0,
        )

    def train_dataloader(self) -> InMemoryBatches:
        return self._batches("train", train=True)

    def val_dataloader(self) -> InMemoryBatches:
        if not len(self.splits["val"]):
            return []
        return self._batches("val", train=False)

    def test_dataloader(self) -> InMemoryBatches:
        return self._batches("test", train=False)

    def predict_dataloader(self) -> InMemoryBatches:
        return self._batches("test", train=False)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        if self.file_data is None or not isinstance(batch, (tuple, list)) or len(batch) != 3:
            return batch
        # File batches are (images, labels, indices); unreadable files are dropped or named here.
        trainer = self.trainer
        evaluating = trainer.validating or trainer.sanity_checking
        split = "train" if trainer.training else "val" if evaluating else "test"
        return self.file_data.clean_batch(batch, self.splits[split])

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        training = self.trainer is not None and self.trainer.training
        if not (self.augment and training and isinstance(batch, (tuple, list))):
            return batch  # evaluation batches, and the model summary's example input, pass unchanged
        images, labels = batch
        return self.spec.augment(images), labels

    def describe(self) -> str:
        return f"{self.spec.name} from {Path(self.root)}"
