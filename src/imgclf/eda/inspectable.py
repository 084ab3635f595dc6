"""What EDA asks of a split beyond what training does: every split class of imgclf.data (ImageArrays for
datasets held in memory, ImageFileDataset for image files) offers these, so the notebook never asks which kind
of dataset it has. Declared here, not in imgclf.data.interface, so that training's Split carries only what
training uses."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch

from imgclf.data.interface import Split


class InspectableSplit(Split, Protocol):
    """A split as EDA.ipynb looks at it."""

    def model_input(self, index: int) -> torch.Tensor:
        """Image `index` as the model receives it at evaluation: uint8 [C, H, W], before normalization."""

    def stored_image(self, index: int) -> np.ndarray:
        """Image `index` as stored, uint8 [H, W, C], in the frame its box (if any) is given in."""

    def pixel_batches(self, limit: int | None = None, seed: int = 0, batch_size: int = 256,
                      num_workers: int = 0) -> Iterator[torch.Tensor]:
        """The images as uint8 batches [B, C, H, W] as the model receives them at evaluation; where they must be
        decoded, only a fixed random sample of `limit`, and unreadable ones are left out."""

    def content_hashes(self) -> list[str]:
        """A digest per image: equal digests mean identical images (pixels in memory, bytes of files)."""

    def stored_sizes(self) -> np.ndarray | None:
        """(width, height) of each image as stored, [N, 2], NaN where unreadable; None when every image was
        stored at the dataset's one image size."""

    def boxes(self) -> np.ndarray | None:
        """Each image's object box (x1, y1, x2, y2), [N, 4], NaN where it has none; None if none has one."""
