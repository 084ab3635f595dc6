"""The LightningDataModule: pick a dataset by name, split it, serve batches, augment them on the device."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from imgclf.data.augment import AugmentPolicy
from imgclf.data.catalog import get_dataset
from imgclf.data.class_counts import check_class_counts
from imgclf.data.file_loaders import FileData
from imgclf.data.image_files import SplitOptions
from imgclf.data.interface import Batch, DataSource, Split
from imgclf.data.memory_loaders import InMemoryData
from imgclf.distributed import per_device_batch_size
from imgclf.errors import UserError


class ImageDataModule(L.LightningDataModule):
    """Image classification data, chosen by name.

    Args:
        dataset: digits (bundled with scikit-learn, offline), fashion_mnist, cifar10 (held in memory), or
            stanford_cars, folder (image files, decoded in DataLoader workers); see data/catalog.py.
        root: folder holding the dataset's files; default data/<dataset> (Fashion-MNIST also looks in
            /usr/share/datasets/fashion-mnist, where Debian's dataset-fashion-mnist puts it).
        global_batch_size: training batch size summed over all devices and nodes (what the configs state,
            with the learning rate tuned for it): each process takes global_batch_size / world size (it must
            divide evenly), so the optimization does not change when the device count does.
        batch_size: training batch size per device instead (the global batch is then this times the
            devices); when given, it wins over global_batch_size (e.g. `--data.batch_size 8` on the command
            line with a config that states a global batch). Without either: 64 per device. For a dataset held
            in memory it is the largest batch: each epoch is cut into ceil(N / batch_size) batches of
            near-equal size (digits' 1,293 training images at 64: 21 batches of 61-62), so no short last batch
            gets a step of its own (memory_loaders.InMemoryBatches). Image files: exactly batch_size, the last
            partial training batch dropped (file_loaders.py).
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
        cache_dir: read pre-resized images from this cache (written by imgclf.train.cache_images), not decoding.
        flip, translate, translate_padding: replace the dataset's training augmentation (data/catalog.py), for
            datasets held in memory: flip "random" (p=0.5 per image), "alternating" (airbench94's: a fixed random
            half stored mirrored, all mirrored on odd epochs) or "none"; translate: the largest shift in pixels;
            translate_padding: "zeros" or "reflect" (airbench94's). None keeps the dataset's choice.
    """

    def __init__(
        self,
        dataset: str = "digits",
        root: str | None = None,
        batch_size: int | None = None,
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
        flip: Literal["random", "alternating", "none"] | None = None,
        translate: int | None = None,
        translate_padding: Literal["zeros", "reflect"] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.spec = get_dataset(dataset)
        if batch_size is not None:  # a per-device batch named explicitly is the more specific setting
            global_batch_size = None
        elif global_batch_size is None:
            batch_size = 64
        for name, size in (("batch_size", batch_size), ("global_batch_size", global_batch_size)):
            if size is not None and size < 2:
                raise UserError(f"--data.{name} must be >= 2 (BatchNorm needs two images), got {size}.")
        if eval_batch_size < 1:  # evaluation uses BatchNorm's running statistics: one image is enough
            raise UserError(f"--data.eval_batch_size must be >= 1, got {eval_batch_size}.")
        self.root = self.spec.locate(root, data_dir)
        # Until setup() knows the world size, the global batch is the one process's batch.
        self.batch_size, self.eval_batch_size = batch_size or global_batch_size, eval_batch_size
        self.val_fraction, self.split_seed, self.augment = val_fraction, split_seed, augment
        self.global_batch_size = global_batch_size
        self.shuffle_seed = 0
        self.splits: dict[str, Split] = {}
        # The two kinds of dataset (interface.py) part here; past this point nothing asks which one it holds.
        self.source: DataSource
        if self.spec.list_files is not None:  # large images: decoded in DataLoader workers (file_loaders.py)
            options = SplitOptions(val_fraction, test_fraction, split_seed)
            self.source = FileData(self.spec, self.root, options, input_size, num_workers, crop_to_box,
                                   box_padding, skip_bad_images, cache_dir)
        else:  # small datasets: whole in memory, on the training device (memory_loaders.py)
            self.source = InMemoryData(self.spec, self.root, val_fraction, split_seed)
        self.spec = self.source.spec  # for image files, now with the class names read from disk
        self.policy = augment_policy(self.spec.augment, flip, translate, translate_padding,
                                     in_memory=isinstance(self.source, InMemoryData))

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
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        self.splits = self.source.datasets(device)
        if self.augment and self.policy.alternate:  # seeded by split_seed: every DDP rank mirrors the same images
            train = self.splits["train"]
            self.splits["train"] = replace(train, images=self.policy.preflip(train.images, self.split_seed))
        warning = check_class_counts(self.class_names, {name: split.labels.tolist()
                                                        for name, split in self.splits.items()})
        if warning:
            rank_zero_warn(warning)

    def _batches(self, split: str, train: bool) -> Iterable[Batch]:
        batch_size = self.batch_size if train else self.eval_batch_size
        return self.source.loader(self.splits[split], batch_size, train, self.trainer, self.shuffle_seed)

    def train_dataloader(self) -> Iterable[Batch]:
        return self._batches("train", train=True)

    def val_dataloader(self) -> Iterable[Batch]:
        if not len(self.splits["val"]):
            return []
        return self._batches("val", train=False)

    def test_dataloader(self) -> Iterable[Batch]:
        return self._batches("test", train=False)

    def evaluation_batches(self, split: str, limit: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, labels) of `split` as evaluation feeds them to the model, all in this process (no DDP shards):
        image files centre-cropped by the DataLoader workers, an unreadable one named in a UserError or, with
        --data.skip_bad_images, left out, exactly as at test time. `limit`: only the first images."""
        return self.source.evaluation_batches(self.splits[split], self.eval_batch_size, limit)

    def build_cache(self) -> Path:
        """Decode and resize every image file once into --data.cache_dir (imgclf.train.cache_images); returns
        the folder. A UserError for datasets held in memory: there is nothing to cache."""
        return self.source.build_cache()

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        if not isinstance(batch, (tuple, list)):
            return batch  # the model summary's example input: a bare tensor, not a batch
        # File batches carry each image's index, so an unreadable file is named (or dropped) here.
        trainer = self.trainer
        evaluating = trainer.validating or trainer.sanity_checking
        split = "train" if trainer.training else "val" if evaluating else "test"
        return self.source.clean_batch(batch, self.splits[split])

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        training = self.trainer is not None and self.trainer.training
        if not (self.augment and training and isinstance(batch, (tuple, list))):
            return batch  # evaluation batches, and the model summary's example input, pass unchanged
        images, labels = batch
        epoch = self.trainer.current_epoch if self.policy.alternate else 0  # only alternating flips count epochs
        return self.policy(images, epoch), labels

    def describe(self) -> str:
        return f"{self.spec.name} from {Path(self.root)}"


def augment_policy(default: AugmentPolicy, flip: str | None, translate: int | None, padding: str | None,
                   in_memory: bool) -> AugmentPolicy:
    """The dataset's batch augmentation with the DataModule's overrides applied (None: keep the dataset's)."""
    if (flip, translate, padding) == (None, None, None):
        return default
    if not in_memory:
        raise UserError("--data.flip, --data.translate and --data.translate_padding apply to datasets held in "
                        "memory (digits, fashion_mnist, cifar10); image files are augmented in their loaders.")
    if translate is not None and translate < 0:
        raise UserError(f"--data.translate must be >= 0 pixels, got {translate}.")
    changes: dict = {}
    if flip is not None:
        changes.update(flip=flip != "none", alternate=flip == "alternating")
    if translate is not None:
        changes["translate"] = translate
    if padding is not None:
        changes["padding"] = padding
    return replace(default, **changes)
