"""The one way an image file becomes pixels. Training, evaluation, the cache, EDA and prediction
(deploy/predictor.py) all decode here, so a deployed model sees the pixels it was trained on:

- EXIF orientation is applied: phones store photos sideways plus a rotation tag;
- 16-bit images (Pillow modes I;16*, I) are scaled to 8 bits, not clipped at 255;
- images above Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS) are refused with a UserError
  before any pixel is decoded.

Imports only Pillow and numpy: the predictor runs where torch is not installed.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from imgclf.errors import UserError

# Part of every image cache's fingerprint: bump it when decode_image's pixels change, so caches written by an
# older decoder are refused as stale instead of serving other pixels than decoding would (2: EXIF, 16 bits).
DECODER_VERSION = 2
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}  # "I" holds 16-bit PNG/TIFF data as int32
Box = tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels, x2/y2 exclusive

# Pillow only warns between 1x and 2x its pixel limit; as an error (Pillow's documented way to make the limit
# strict) nothing is printed and open_image refuses the file. open_image also checks the size itself, so the
# limit holds where another filter setting replaced this one.
warnings.simplefilter("error", Image.DecompressionBombWarning)


def images_in(folder: Path) -> list[Path]:
    """Image files under `folder` (any depth), sorted; hidden files and folders are skipped."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def padded_box(box: Box, padding: float, width: int, height: int) -> Box:
    """`box` grown by `padding` times its width/height on each side, clipped to the image.

    A tight box cuts off mirrors and bumper edges that tell car models apart; a little context helps.
    """
    x1, y1, x2, y2 = box
    pad_x, pad_y = round((x2 - x1) * padding), round((y2 - y1) * padding)
    return max(0, x1 - pad_x), max(0, y1 - pad_y), min(width, x2 + pad_x), min(height, y2 + pad_y)


def open_image(path: str | Path) -> Image.Image:
    """The file opened lazily (header read, nothing decoded); a UserError when it is too large to decode.

    Other bad files raise Pillow's own errors (UnidentifiedImageError, OSError, SyntaxError, ValueError).
    """
    try:
        image = Image.open(path)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise UserError(too_large_message(path, str(e))) from e
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and image.width * image.height > limit:
        image.close()
        raise UserError(too_large_message(path, f"{image.width} x {image.height} pixels"))
    return image


def too_large_message(path: str | Path, size: str) -> str:
    return (f"{path} is too large to decode ({size}). Images above Pillow's limit of "
            f"{Image.MAX_IMAGE_PIXELS:,} pixels (PIL.Image.MAX_IMAGE_PIXELS) are refused, as they could exhaust "
            f"memory or be decompression bombs: downscale it (e.g. to 4000 x 4000 pixels) or leave it out.")


def to_8_bit(image: Image.Image) -> Image.Image:
    """16-bit greyscale scaled to 0-255 (65535 -> 255); Pillow's convert() would clip it at 255."""
    if image.mode not in SIXTEEN_BIT_MODES:
        return image
    pixels = np.clip(np.asarray(image), 0, 65535).astype(np.float32) / 257.0
    return Image.fromarray(np.rint(pixels).astype(np.uint8), mode="L")


def decode_image(path: str | Path, mode: str = "RGB", box: Box | None = None, padding: float = 0.0,
                 orient: bool = True) -> Image.Image:
    """The decoded image in `mode` ("RGB" or "L"), cropped to the padded `box` when given.

    The box is in the stored pixels' frame (Stanford Cars' annotations are), so the crop comes before the
    EXIF rotation; `orient=False` keeps the stored frame (to draw such boxes). Raises UserError for a too
    large image and Pillow's errors for a corrupt or truncated file; callers decide what to do.
    """
    with open_image(path) as image:
        decoded = image
        if box is not None:
            # crop() decodes the whole image (it calls load()); cropping first only spares converting
            # the pixels outside the box.
            decoded = image.crop(padded_box(box, padding, image.width, image.height))
        if orient:
            decoded = ImageOps.exif_transpose(decoded)  # reads the tag from the (copied) EXIF data
        # convert() forces the full decode inside the `with`, so a truncated file fails here.
        return to_8_bit(decoded).convert(mode)


def check_image(path: str | Path) -> None:
    """Raise if `path` would not decode, faster than decoding it: JPEGs are decoded at 1/8 scale (which still
    reads every byte of the compressed data, so truncation shows), PNGs have every chunk's CRC checked without
    inflating; other formats are decoded in full."""
    with open_image(path) as image:
        if image.format == "PNG":
            image.verify()
            return
        if image.format in ("JPEG", "MPO"):  # MPO: the multi-picture JPEG some cameras write
            image.draft(image.mode, (1, 1))
        image.load()
