"""Batches straight from tensors held in memory (on the training device), sharded across DDP ranks.

A DataLoader would index and collate image by image; slicing a tensor gives a whole batch in one op.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

from imgclf.data.readers import ImageArrays


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
