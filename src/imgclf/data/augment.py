"""Batch augmentations for uint8 images [N, C, H, W] that run on the training device.

Whole-batch tensor ops replace per-image PIL transforms: one kernel per batch instead of N Python calls,
and the images never leave the GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentPolicy:
    flip: bool = False  # horizontal flip with p=0.5 (not for digits: a mirrored 2 is no 2)
    translate: int = 0  # random shift of up to this many pixels in x and y, zero-filled (pad-and-crop)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.flip:
            images = random_flip(images)
        if self.translate:
            images = random_translate(images, self.translate)
        return images


def random_flip(images: torch.Tensor) -> torch.Tensor:
    flip = torch.rand(images.shape[0], device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def random_translate(images: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Pad by `max_shift` and crop back at a random offset per image: a shift in [-max_shift, max_shift]."""
    n, c, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), device=images.device)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), device=images.device)
    return crop_at(padded, dy, dx, h, w)


def crop_at(padded: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Crop an h x w window from each image of `padded`, its top-left corner at (dy[i], dx[i])."""
    n, c, hp, wp = padded.shape
    rows = (dy[:, None] + torch.arange(h, device=padded.device))[:, None, :, None].expand(n, c, h, wp)
    cropped = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w, device=padded.device))[:, None, None, :].expand(n, c, h, w)
    return cropped.gather(3, cols)


def tta_logits(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """Test-time augmentation (airbench): the mean logits of the image and its mirror, averaged half and half
    with those of copies shifted one pixel up-left and down-right (zero-filled, as in training)."""
    h, w = images.shape[-2:]
    padded = F.pad(images, (1,) * 4)
    # one offset for every image: a plain slice, where random_translate needs crop_at's per-image gathers
    shifted = [padded[..., o:o + h, o:o + w] for o in (0, 2)]

    def mirrored(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (model(x) + model(x.flip(-1)))

    return 0.5 * mirrored(images) + 0.25 * (mirrored(shifted[0]) + mirrored(shifted[1]))
