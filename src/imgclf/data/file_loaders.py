"""The DataModule's path for datasets of image files (DatasetSpec.list_files is set), batched by DataLoaders.

The files are listed when the DataModule is built (the model needs the class names before setup), decoded
and augmented in DataLoader workers, and batched on the host; the in-memory path is not involved.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from imgclf.data import transforms
from imgclf.data.cache import build_cache, open_cache
from imgclf.data.catalog import DatasetSpec
from imgclf.data.image_files import ImageFileDataset, SplitOptions, bad_images_message, drop_bad_images, find_bad_images
from imgclf.data.interface import Batch
from imgclf.errors import UserError


class FileData:
    """File lists, per-split Datasets and DataLoaders of one file dataset (the DataSource of interface.py)."""

    def __init__(self, spec: DatasetSpec, root: Path, options: SplitOptions, input_size: int,
                 num_workers: int | None, crop_to_box: bool, box_padding: float, skip_bad_images: bool,
                 cache_dir: str | None) -> None:
        if input_size < 16:
            raise UserError(f"--data.input_size must be at least 16 pixels, got {input_size}.")
        if box_padding < 0:
            raise UserError(f"--data.box_padding must be >= 0 (a share of the box size), got {box_padding}.")
        self.root, self.input_size = root, input_size
        self.files = spec.list_files(root, options)
        # The catalog's spec, completed with what only the files tell: the classes; and the chosen input size.
        self.spec = replace(spec, classes=tuple(self.files.classes), image_size=(input_size, input_size))
        # Leave a core to the training loop; decoding JPEGs is the bottleneck, so use the rest.
        self.num_workers = max(0, min(8, (os.cpu_count() or 1) - 1)) if num_workers is None else num_workers
        self.crop_to_box, self.box_padding = crop_to_box, box_padding
        self.skip_bad_images, self.skipped = skip_bad_images, set()
        self.cache_dir = Path(cache_dir) if cache_dir else None

    def check_files(self) -> None:
        """Stop on unreadable images now, not after training; with skip_bad_images, leave them out."""
        bad = find_bad_images(self.files.all_files(), self.num_workers)
        if not bad:
            return
        if not self.skip_bad_images:
            raise UserError(f"{bad_images_message(bad)}. They are corrupt, truncated, too large or not images: "
                            f"replace or delete them, or pass --data.skip_bad_images true to leave them out.")
        rank_zero_warn(f"Leaving out unreadable images (--data.skip_bad_images): {bad_images_message(bad)}.")
        self.files = self.files.without(set(bad))
        self.skipped |= set(bad)

    def datasets(self, device: torch.device) -> dict[str, ImageFileDataset]:
        """The splits; `device` does not matter: files are decoded on the host, batches move step by step."""
        cache = None
        if self.cache_dir is not None:  # the cache was built from decoded files and lists the unreadable ones
            cache = open_cache(self.cache_dir, self.root, self.files.all_files(), self.input_size,
                               self.crop_to_box, self.box_padding)
        else:
            self.check_files()
        train_view, eval_view = transforms.train_view(self.input_size), transforms.eval_view(self.input_size)
        return {
            split: ImageFileDataset(files, self.input_size, train_view if split == "train" else eval_view,
                                    self.crop_to_box, self.box_padding, cache)
            for split, files in self.files.splits.items()
        }

    def loader(self, dataset: ImageFileDataset, batch_size: int, train: bool, trainer: L.Trainer | None,
               seed: int) -> DataLoader:
        """`seed` is not needed: under DDP, Lightning's DistributedSampler shuffles alike on every rank."""
        sampler = None
        if not train and trainer is not None and trainer.world_size > 1:
            # Lightning would pad evaluation shards with repeated images; this sampler does not, so every test
            # image counts exactly once (the metrics sync their counts across ranks).
            sampler = UnrepeatedDistributedSampler(dataset, num_replicas=trainer.world_size,
                                                   rank=trainer.global_rank, shuffle=False)
        return DataLoader(
            dataset, batch_size=batch_size,
            shuffle=train,  # Lightning swaps in a DistributedSampler (shuffling, per-epoch seed) under DDP
            sampler=sampler,
            drop_last=train and len(dataset) > batch_size,  # a 1-image last batch breaks BatchNorm
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,  # no re-forking of workers every epoch
            pin_memory=torch.cuda.is_available(),  # page-locked batches copy to the GPU asynchronously
        )

    def clean_batch(self, batch: Batch, dataset: ImageFileDataset) -> tuple[torch.Tensor, torch.Tensor]:
        return drop_bad_images(batch, dataset, self.skip_bad_images, self.skipped)

    def evaluation_batches(self, dataset: ImageFileDataset, batch_size: int,
                           limit: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        first = dataset.evaluation_view().head(limit)
        for batch in self.loader(first, batch_size, train=False, trainer=None, seed=0):
            yield self.clean_batch(batch, first)

    def build_cache(self) -> Path:
        if self.cache_dir is None:
            raise UserError("Set --data.cache_dir (e.g. cache/stanford_cars): where the image cache goes.")
        return build_cache(self.cache_dir, self.root, self.files.all_files(), self.input_size,
                           self.crop_to_box, self.box_padding, self.skip_bad_images, self.num_workers)
