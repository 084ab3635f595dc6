"""Per-image work for image-file datasets, run in DataLoader workers: decode, crop to box, resize, augment.

Split in two so the deterministic half can be cached: `load_base` (decode + optional box crop + resize to a
square of `base_size(input_size)` pixels) and the views (random crop + flip for training, centre crop for
evaluation). Everything stays uint8 [3, H, W]: the model's PixelNormalize does the float maths on the device.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from imgclf.data.decode import Box, decode_image

if TYPE_CHECKING:
    from torchvision.transforms import v2

def base_size(input_size: int) -> int:
    """Side of the stored square image: 8/7 of the input (256 for 224), the margin random crops move in."""
    return round(input_size * 8 / 7)


def decode_rgb(path: Path, box: Box | None = None, padding: float = 0.0) -> torch.Tensor:
    """decode.decode_image as uint8 RGB [3, H, W]: the file decoded (EXIF orientation applied, 16 bits scaled),
    cropped to the padded `box` when given. Raises for a corrupt, truncated or too large file."""
    array = np.asarray(decode_image(path, "RGB", box, padding))
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def load_base(path: Path, input_size: int, box: Box | None = None, padding: float = 0.0) -> torch.Tensor:
    """The deterministic part: decode, crop to box, resize (squash) to base_size x base_size, uint8."""
    from torchvision.transforms import v2  # here: the catalog imports this module; importing torchvision costs seconds

    image = decode_rgb(path, box, padding)
    side = base_size(input_size)
    # Squash rather than crop the long side: a centre square would cut the front or back off a car.
    return v2.functional.resize(image, [side, side], antialias=True)


def train_view(input_size: int) -> v2.Transform:
    """A random part (35-100% of the area, aspect 3:4-4:3) at input_size, flipped half the time."""
    from torchvision.transforms import v2  # here: the catalog imports this module; importing torchvision costs seconds

    return v2.Compose([
        v2.RandomResizedCrop(input_size, scale=(0.35, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),  # a mirrored car is the same model
    ])


def eval_view(input_size: int) -> v2.Transform:
    """The centre input_size square of the base image: the same view every time."""
    from torchvision.transforms import v2  # here: the catalog imports this module; importing torchvision costs seconds

    return v2.CenterCrop(input_size)
