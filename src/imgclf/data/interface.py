"""The one interface to a dataset, whichever of the two kinds holds it.

- Held in memory (digits, Fashion-MNIST, CIFAR-10): readers.py reads each format into `ImageArrays`
  (arrays.py), kept on the training device as uint8; memory_loaders.py slices batches from them.
- Image files (Stanford Cars, folders): folders.py and stanford_cars.py list them, `ImageFileDataset`
  (image_files.py) decodes them with transforms.py or reads them from cache.py, file_loaders.py batches them
  in DataLoader workers.

The DataModule (datamodule.py) picks the kind once, from the catalog; the rest of the project (training, EDA,
export, verification, the benchmarks) calls the methods below and never asks which kind it has.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import lightning as L
import torch

from imgclf.data.catalog import DatasetSpec

# What a loader yields before `DataSource.clean_batch`: (images, labels), or (images, labels, indices) for files.
Batch = Sequence[torch.Tensor]


class Split(Protocol):
    """One split (train, val or test) of a dataset: its images and labels, as training uses it. What EDA looks
    at besides (hashes, sizes as stored, boxes) is imgclf.eda.inspectable.InspectableSplit."""

    def __len__(self) -> int: ...

    @property
    def labels(self) -> torch.Tensor:
        """int64 [N], read without decoding any image."""

    def head(self, n: int | None) -> Split:
        """The first `n` images (all for None)."""

    def to(self, device: torch.device) -> Split:
        """The split with its pixels on `device` where they are held in memory (files stay on disk)."""


class DataSource(Protocol):
    """How the DataModule reads, batches and caches one kind of dataset."""

    spec: DatasetSpec  # the catalog's spec, completed with what only the data tells (class names, input size)

    def datasets(self, device: torch.device) -> dict[str, Split]:
        """The train, val and test splits; `device`: where splits held in memory are kept."""

    def loader(self, split: Split, batch_size: int, train: bool, trainer: L.Trainer | None,
               seed: int) -> Iterable[Batch]:
        """One pass over `split` (shuffled when `train`), this rank's share under DDP; `seed`: the shuffle seed
        every rank shares."""

    def clean_batch(self, batch: Batch, split: Split) -> Batch:
        """(images, labels) of a batch that `loader` gave for `split`, unreadable images named in a UserError or
        left out."""

    def evaluation_batches(self, split: Split, batch_size: int,
                           limit: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Clean (images, labels) of the first `limit` images of `split` as evaluation sees them, all in this
        process (no DDP shards)."""

    def build_cache(self) -> Path:
        """Write the pre-resized image cache; returns its folder. A UserError where there is nothing to cache."""
