"""The DataModule's path for datasets held in memory (DatasetSpec.read is set): read whole, split, kept on the
training device, and batched straight from the tensors, sharded across DDP ranks.

A DataLoader would index and collate image by image; slicing a tensor gives a whole batch in one op.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import torch

from imgclf.data.arrays import ImageArrays
from imgclf.data.catalog import DatasetSpec
from imgclf.data.interface import Batch
from imgclf.errors import UserError


def split_train_val(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic split of range(n) into (train, val) indices, both sorted; depends only on n and seed."""
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"--data.val_fraction must be in [0, 1), got {val_fraction}.")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = round(n * val_fraction)
    return order[n_val:].sort().values, order[:n_val].sort().values


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous [start, stop) of `n` items for `rank`: disjoint, covering, sizes differ by at most one."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


class InMemoryBatches:
    """Iterable of (images, labels) batches over tensors, one pass per epoch.

    Training (`shuffle=True`): every epoch draws a permutation from `seed + epoch`, identical on every rank,
    and each rank takes its own contiguous shard of it, so the ranks see disjoint parts whose union is the
    whole set. Evaluation (`shuffle=False`): each rank takes a contiguous shard of the data in order, with no
    padding, so metrics synced across ranks count every image exactly once.

    All ranks must step the same number of times (DDP all-reduces every step), so the batch count comes from
    the largest shard and each shard is cut into that many batches of near-equal size.
    """

    def __init__(
        self,
        data: ImageArrays,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        epoch: Callable[[], int] = lambda: 0,
    ) -> None:
        self.data, self.batch_size, self.shuffle = data, batch_size, shuffle
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, epoch

    def __len__(self) -> int:
        return math.ceil(math.ceil(len(self.data) / self.world_size) / self.batch_size)

    def shard_indices(self) -> torch.Tensor:
        """The indices this rank visits this epoch, in order."""
        n = len(self.data)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch())
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        start, stop = shard_bounds(n, self.rank, self.world_size)
        return order[start:stop]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        index = self.shard_indices().to(self.data.images.device)
        # Exactly len(self) batches of near-equal size (never above batch_size): every rank steps equally
        # often, and no training batch shrinks to a single image (which BatchNorm cannot normalize).
        for chunk in torch.tensor_split(index, len(self)):
            yield self.data.images[chunk], self.data.labels[chunk]


class InMemoryData:
    """A small dataset's splits as uint8 tensors, and their batches (the DataSource of interface.py)."""

    def __init__(self, spec: DatasetSpec, root: Path, val_fraction: float, split_seed: int) -> None:
        self.spec, self.root, self.val_fraction, self.split_seed = spec, root, val_fraction, split_seed

    def datasets(self, device: torch.device) -> dict[str, ImageArrays]:
        self.spec.fetch(self.root, download=False)  # a clear error if rank 0's download did not land
        full_train = self.spec.read(self.root, True)
        train_idx, val_idx = split_train_val(len(full_train), self.val_fraction, self.split_seed)
        splits = {"train": full_train.subset(train_idx), "val": full_train.subset(val_idx),
                  "test": self.spec.read(self.root, False)}
        num_classes = len(self.spec.classes)
        for name, split in splits.items():
            if split.labels.numel() and int(split.labels.max()) >= num_classes:
                raise UserError(f"The {name} split of {self.spec.name} in {self.root} holds label "
                                f"{int(split.labels.max())}, but the dataset has {num_classes} classes.")
        # Small datasets live on the training device as uint8: no host-to-device copy per step.
        return {name: split.to(device) for name, split in splits.items()}

    def loader(self, split: ImageArrays, batch_size: int, train: bool, trainer: L.Trainer | None,
               seed: int) -> InMemoryBatches:
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        return InMemoryBatches(split, batch_size, shuffle=train, seed=seed, rank=rank, world_size=world,
                               epoch=lambda: trainer.current_epoch if trainer else 0)

    def clean_batch(self, batch: Batch, split: ImageArrays) -> Batch:
        return batch  # nothing to decode, nothing unreadable

    def evaluation_batches(self, split: ImageArrays, batch_size: int,
                           limit: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        first = split.head(limit)
        return zip(first.images.split(batch_size), first.labels.split(batch_size), strict=True)

    def build_cache(self) -> Path:
        raise UserError(f"The {self.spec.name} dataset is held in memory whole; only datasets of image files "
                        f"(stanford_cars, folder) have an image cache.")
