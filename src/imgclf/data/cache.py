"""A pre-resized uint8 cache of a file dataset: decoding a JPEG costs more than everything else per image.

    <cache_dir>/images.npy   uint8 [N, 3, S, S], S = base_size(input_size), read through a memory map
    <cache_dir>/index.json   fingerprint, the files (relative to the data root) in row order, unreadable rows

It is a pipeline output (imgclf.train.cache_images, a DVC stage), never written as a side effect of training. The
fingerprint covers every file's path, size and modification time plus the settings that shape the stored
pixels and decode.DECODER_VERSION, so a changed, added or removed image, another input size or box setting,
or another decoder makes it stale: training then refuses it and says how to rebuild it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from imgclf.atomic import is_storage_failure, storage_error, write_text
from imgclf.data.decode import DECODER_VERSION
from imgclf.data.image_files import ImageFile, ImageFileDataset, drop_bad_images
from imgclf.data.transforms import base_size
from imgclf.errors import UserError

IMAGES, INDEX = "images.npy", "index.json"
REBUILD = ("Build it with `uv run python -m imgclf.train.cache_images --config <your config>` (or `dvc repro`), "
           "or drop --data.cache_dir.")


def fingerprint(root: Path, files: list[ImageFile], input_size: int, crop_to_box: bool,
                box_padding: float) -> str:
    settings = {"side": base_size(input_size), "crop_to_box": crop_to_box,
                "box_padding": box_padding if crop_to_box else 0, "decoder": DECODER_VERSION}
    digest = hashlib.sha256(json.dumps(settings).encode())
    for file in files:
        stat = file.path.stat()
        box = file.box if crop_to_box else None
        line = f"{os.path.relpath(file.path, root)}|{stat.st_size}|{stat.st_mtime_ns}|{box}\n"
        digest.update(line.encode())
    return digest.hexdigest()


def unique_files(files: list[ImageFile]) -> list[ImageFile]:
    """One row per image file, in path order (the splits may list the files in any order)."""
    return sorted({f.path: f for f in files}.values(), key=lambda f: str(f.path))


class ImageCache:
    """Base images by path, from the memory-mapped array (opened lazily: once per DataLoader worker)."""

    def __init__(self, folder: Path, row_of: dict[Path, int], bad_rows: set[int]) -> None:
        self.folder, self.row_of, self.bad_rows = folder, row_of, bad_rows
        self._images: np.ndarray | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}  # workers open their own map instead of pickling the array

    def get(self, path: Path) -> torch.Tensor | None:
        row = self.row_of[path]
        if row in self.bad_rows:
            return None
        if self._images is None:
            self._images = np.load(self.folder / IMAGES, mmap_mode="r")
        return torch.from_numpy(np.array(self._images[row]))


def open_cache(folder: Path, root: Path, files: list[ImageFile], input_size: int, crop_to_box: bool,
               box_padding: float) -> ImageCache:
    """The cache in `folder` if it matches the files and settings, else a UserError saying how to rebuild."""
    index_path = folder / INDEX
    if not index_path.is_file() or not (folder / IMAGES).is_file():
        raise UserError(f"No image cache in {folder}/. {REBUILD}")
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"Cannot read {index_path} ({e}). {REBUILD}") from e
    files = unique_files(files)
    if index.get("fingerprint") != fingerprint(root, files, input_size, crop_to_box, box_padding):
        raise UserError(f"The image cache in {folder}/ is stale: images under {root} or the settings "
                        f"(input_size, crop_to_box, box_padding) changed since it was built. {REBUILD}")
    bad = set(index["bad_rows"])
    if bad:
        rank_zero_warn(f"The image cache {folder}/ leaves out {len(bad)} unreadable image(s), e.g. "
                       f"{files[min(bad)].path}.")
    return ImageCache(folder, {f.path: row for row, f in enumerate(files)}, bad)


def _reserved_memmap(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A new .npy memory map whose disk blocks are allocated up front. A memory map over a sparse file finds a
    full disk only when a page is written back, and the kernel then kills the process with SIGBUS; allocating
    first turns that into ENOSPC here, before any decoding."""
    images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        del images
        if e.errno == errno.ENOSPC:
            free = shutil.disk_usage(path.parent).free
            raise UserError(f"Cannot write the image cache {path.with_name(IMAGES)}: it needs "
                            f"{os.fstat(fd).st_size / 1e6:.1f} MB and {path.parent} has {free / 1e6:.1f} MB free. "
                            f"Free space, or set --data.cache_dir to a folder on a larger disk.") from e
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem without fallocate: write as before
            raise
    finally:
        os.close(fd)
    return images


def build_cache(folder: Path, root: Path, files: list[ImageFile], input_size: int, crop_to_box: bool,
                box_padding: float, skip_bad_images: bool, num_workers: int) -> Path:
    """Decode every file once (in `num_workers` processes) into `folder`; returns the folder."""
    files = unique_files(files)
    side = base_size(input_size)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INDEX).unlink(missing_ok=True)  # no index, no cache: a half-written cache is never used
    tmp = folder / f"{IMAGES}.tmp"
    try:
        images = _reserved_memmap(tmp, (len(files), 3, side, side))
        dataset = ImageFileDataset(files, input_size, view=None, crop_to_box=crop_to_box, box_padding=box_padding)
        skipped: set[Path] = set()
        for batch in DataLoader(dataset, batch_size=32, num_workers=num_workers):
            batch_images, _, rows = batch
            images[rows.numpy()] = batch_images.numpy()
            drop_bad_images(batch, dataset, skip_bad_images, skipped)  # raises or warns, as training does
        # unique_files above: each path is one row
        bad_rows = [row for row, f in enumerate(files) if f.path in skipped]
        images.flush()
        del images
        tmp.replace(folder / IMAGES)
    except BaseException as e:
        tmp.unlink(missing_ok=True)  # a half-written cache is never left behind, also on Ctrl-C or a bad image
        if isinstance(e, OSError) and is_storage_failure(e):
            raise storage_error(e, folder / IMAGES, "image cache") from e
        raise
    index = {"fingerprint": fingerprint(root, files, input_size, crop_to_box, box_padding), "side": side,
             "files": [os.path.relpath(f.path, root) for f in files], "bad_rows": bad_rows}
    write_text(folder / INDEX, json.dumps(index, indent=1), "image cache index")  # last: it marks the cache whole
    return folder
