"""A split held in memory: uint8 images [N, C, H, W] and int64 labels, the form the training loop keeps on the
device. readers.py reads them from each on-disk format; memory_loaders.py batches them. `ImageArrays` offers
the split interface of interface.py, as `ImageFileDataset` does for image files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch


def image_hashes(images: torch.Tensor) -> list[str]:
    """A digest of each image's bytes and shape: equal digests mean pixel-identical images."""
    array = np.ascontiguousarray(images.cpu().numpy())
    return [hashlib.blake2b(image.tobytes() + str(image.shape).encode(), digest_size=16).hexdigest()
            for image in array]


@dataclass(frozen=True)
class ImageArrays:
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: torch.Tensor) -> ImageArrays:
        return ImageArrays(self.images[index], self.labels[index])

    def head(self, n: int | None) -> ImageArrays:
        return self if n is None else ImageArrays(self.images[:n], self.labels[:n])

    def to(self, device: torch.device) -> ImageArrays:
        return ImageArrays(self.images.to(device), self.labels.to(device))

    def model_input(self, index: int) -> torch.Tensor:
        return self.images[index]  # evaluation feeds the stored pixels unchanged

    def stored_image(self, index: int) -> np.ndarray:
        return self.images[index].cpu().permute(1, 2, 0).numpy()

    def pixel_batches(self, limit: int | None = None, seed: int = 0, batch_size: int = 256,
                      num_workers: int = 0) -> Iterator[torch.Tensor]:
        """Every image, `batch_size` at a time: nothing to decode, so `limit` (a sample size) does not apply."""
        yield from self.images.split(batch_size)

    def content_hashes(self) -> list[str]:
        return image_hashes(self.images)

    def stored_sizes(self) -> None:
        return None  # one tensor: every image has the dataset's image size

    def boxes(self) -> None:
        return None
