"""Batch augmentations for uint8 images [N, C, H, W] that run on the training device.

Whole-batch tensor ops replace per-image PIL transforms: one kernel per batch instead of N Python calls,
and the images never leave the GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentPolicy:
    flip: bool = False  # horizontal flips (not for digits: a mirrored 2 is no 2)
    # False: each image flipped with p=0.5 each epoch. True: airbench94's alternating flips: a fixed random half of
    # the training set is stored mirrored (`preflip`), and every odd epoch mirrors all images, so each image shows
    # both sides within any two epochs, where random flips repeat a side for a quarter of the images.
    alternate: bool = False
    translate: int = 0  # random shift of up to this many pixels in x and y (pad-and-crop)
    padding: Literal["zeros", "reflect"] = "zeros"  # what fills the border a shift uncovers (airbench94: reflect)

    def __call__(self, images: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        if self.flip:
            if not self.alternate:
                images = random_flip(images)
            elif epoch % 2:
                images = images.flip(-1)
        if self.translate:
            images = random_translate(images, self.translate, self.padding)
        return images

    def preflip(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        """The training images as alternating flips start from: a random half (drawn from `seed`) mirrored."""
        if not (self.flip and self.alternate):
            return images
        flip = torch.rand(len(images), generator=torch.Generator().manual_seed(seed)) < 0.5
        return torch.where(flip.to(images.device)[:, None, None, None], images.flip(-1), images)


def random_flip(images: torch.Tensor) -> torch.Tensor:
    flip = torch.rand(images.shape[0], device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def pad(images: torch.Tensor, width: int, padding: Literal["zeros", "reflect"]) -> torch.Tensor:
    """`images` with `width` pixels added on each side: zeros, or the image mirrored about its edge pixels
    (F.pad's "reflect", airbench94's), here two index_selects: the same for any dtype on any device."""
    if padding == "zeros":
        return F.pad(images, (width,) * 4)
    h, w = images.shape[-2:]
    if width >= min(h, w):
        raise ValueError(f"reflect padding of {width} px needs images larger than that, got {h}x{w}")

    def mirrored(n: int) -> torch.Tensor:  # -2, -1, 0, .., n-1, n, n+1 -> 2, 1, 0, .., n-1, n-2, n-3
        index = torch.arange(-width, n + width, device=images.device).abs()
        return torch.where(index >= n, 2 * (n - 1) - index, index)

    return images.index_select(-2, mirrored(h)).index_select(-1, mirrored(w))


def random_translate(images: torch.Tensor, max_shift: int,
                     padding: Literal["zeros", "reflect"] = "zeros") -> torch.Tensor:
    """Pad by `max_shift` and crop back at a random offset per image: a shift in [-max_shift, max_shift]."""
    n, c, h, w = images.shape
    padded = pad(images, max_shift, padding)
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


def tta_logits(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
               padding: Literal["zeros", "reflect"] = "zeros") -> torch.Tensor:
    """Test-time augmentation (airbench): the mean logits of the image and its mirror, averaged half and half
    with those of copies shifted one pixel up-left and down-right (their border filled as in training)."""
    h, w = images.shape[-2:]
    padded = pad(images, 1, padding)
    # one offset for every image: a plain slice, where random_translate needs crop_at's per-image gathers
    shifted = [padded[..., o:o + h, o:o + w] for o in (0, 2)]

    def mirrored(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (model(x) + model(x.flip(-1)))

    return 0.5 * mirrored(images) + 0.25 * (mirrored(shifted[0]) + mirrored(shifted[1]))
