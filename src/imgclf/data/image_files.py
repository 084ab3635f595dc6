"""Datasets of image files (Stanford Cars, image folders): the file lists, their splits, the check of every
file at setup, and the torch Dataset that decodes them in DataLoader workers.

`find_bad_images` finds unreadable files at setup, in seconds, before any training. As a last line of
defence (a file that passes the quick check but fails the full decode, or changes after setup), a file that
fails to decode does not raise inside the worker (the DataLoader would wrap the message in a traceback); the
worker returns label -1 instead, and `drop_bad_images` in the main process either names the file in a
UserError or, with skip_bad_images, drops it from the batch and counts it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

from imgclf.data import transforms
from imgclf.data.decode import check_image, decode_image
from imgclf.data.transforms import Box
from imgclf.errors import UserError


class BaseImageSource(Protocol):
    """Where base images come from instead of decoding (cache.ImageCache, which imports this module: a protocol
    here keeps the import one-way)."""

    def get(self, path: Path) -> torch.Tensor | None:
        """The stored base image of `path`, or None where it could not be read when the cache was built."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the statistics torchvision's pretrained backbones were trained with
IMAGENET_STD = (0.229, 0.224, 0.225)
BAD_LABEL = -1  # what a worker returns for a file it cannot decode


@dataclass(frozen=True)
class ImageFile:
    path: Path
    label: int
    box: Box | None = None  # object bounding box (x1, y1, x2, y2), when the dataset has one


@dataclass(frozen=True)
class SplitOptions:
    val_fraction: float  # share of the training files held out for validation
    test_fraction: float  # share held out for testing, where the dataset has no test split of its own
    seed: int


@dataclass(frozen=True)
class ImageFiles:
    classes: list[str]
    splits: dict[str, list[ImageFile]]  # "train", "val", "test"

    def all_files(self) -> list[ImageFile]:
        return [f for split in self.splits.values() for f in split]

    def without(self, paths: set[Path]) -> ImageFiles:
        return ImageFiles(self.classes, {split: [f for f in files if f.path not in paths]
                                         for split, files in self.splits.items()})


def stratified_split(files: Sequence[ImageFile], fraction: float,
                     seed: int) -> tuple[list[ImageFile], list[ImageFile]]:
    """(kept, held_out): `fraction` of every class held out, at least one image of each class kept.

    Per class, so a rare class is not left out of validation by chance; depends only on the files and seed.
    """
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"Split fractions (--data.val_fraction, --data.test_fraction) must be in [0, 1), "
                        f"got {fraction}.")
    rng = np.random.default_rng(seed)
    labels = np.array([f.label for f in files])
    held = np.zeros(len(files), dtype=bool)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        held[members[: min(round(len(members) * fraction), len(members) - 1)]] = True
    kept = [f for f, h in zip(files, held, strict=True) if not h]
    return kept, [f for f, h in zip(files, held, strict=True) if h]


def file_hashes(paths: Iterable[str | Path]) -> list[str]:
    """A digest of each file's bytes: equal digests mean byte-identical files.

    Hashing the files rather than decoded pixels reads each file once and decodes nothing (hundreds of MB/s,
    against about 180 decoded JPEGs/s); the same picture saved twice with other encoder settings is not caught.
    """
    def digest(path: str | Path) -> str:
        with open(path, "rb") as file:
            return hashlib.file_digest(file, lambda: hashlib.blake2b(digest_size=16)).hexdigest()

    return [digest(path) for path in paths]


def sample_indices(n: int, limit: int | None, seed: int = 0) -> list[int]:
    """range(n), or `limit` of its members drawn at random (sorted, the same for the same seed)."""
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, size=limit, replace=False).tolist())


class ImageFileDataset(Dataset):
    """(uint8 image, label, index) per file; label -1 (and a black image) when the file is unreadable.

    `view` turns the base image (decoded, box-cropped, resized to base_size) into the network's input:
    transforms.train_view or eval_view; None returns the base image itself (what the cache stores). With a
    cache, the base image is read from it instead of decoded from the file. It offers the split interface of
    interface.py, as `ImageArrays` does for splits held in memory.
    """

    def __init__(self, files: list[ImageFile], input_size: int, view: Callable | None,
                 crop_to_box: bool = False, box_padding: float = 0.0,
                 cache: BaseImageSource | None = None) -> None:
        self.files, self.input_size, self.view = files, input_size, view
        self.crop_to_box, self.box_padding, self.cache = crop_to_box, box_padding, cache
        self.side = input_size if view is not None else transforms.base_size(input_size)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def labels(self) -> torch.Tensor:
        """Every file's label, read from the file list: nothing is decoded."""
        return torch.tensor([f.label for f in self.files], dtype=torch.long)

    def with_files(self, files: list[ImageFile], view: Callable | None) -> ImageFileDataset:
        return ImageFileDataset(files, self.input_size, view, self.crop_to_box, self.box_padding, self.cache)

    def evaluation_view(self) -> ImageFileDataset:
        """The same files as evaluation sees them (centre crop, no augmentation), whatever this split's view."""
        return self.with_files(self.files, transforms.eval_view(self.input_size))

    def head(self, n: int | None) -> ImageFileDataset:
        return self if n is None else self.with_files(self.files[:n], self.view)

    def to(self, device: torch.device) -> ImageFileDataset:
        return self  # the files are decoded on the host; their batches move to the device step by step

    def load_base(self, file: ImageFile) -> torch.Tensor | None:
        if self.cache is not None:
            return self.cache.get(file.path)
        try:
            return transforms.load_base(file.path, self.input_size, file.box if self.crop_to_box else None,
                                        self.box_padding)
        except Exception:  # Pillow raises OSError, ValueError, SyntaxError, DecompressionBombError...
            return None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        file = self.files[index]
        base = self.load_base(file)
        if base is None:
            return torch.zeros(3, self.side, self.side, dtype=torch.uint8), BAD_LABEL, index
        return (base if self.view is None else self.view(base)), file.label, index

    def model_input(self, index: int) -> torch.Tensor:
        """Image `index` as the model receives it at evaluation: decoded, resized, centre-cropped."""
        return self.evaluation_view()[index][0]

    def stored_image(self, index: int) -> np.ndarray:
        """Image `index` as stored, before any crop: the frame its box is given in (EXIF orientation not applied)."""
        return np.asarray(decode_image(self.files[index].path, "RGB", orient=False))

    def pixel_batches(self, limit: int | None = None, seed: int = 0, batch_size: int = 256,
                      num_workers: int = 0) -> Iterator[torch.Tensor]:
        """Evaluation's view of at most `limit` files (a fixed random sample), decoded in `num_workers` processes.

        Decoding is the slow part (about 180 images/s in one process on a 2-core machine, for 700x480 JPEGs, so
        Stanford Cars' 8,144 training images would take most of a minute). Files that fail to decode are left out.
        """
        view = self.evaluation_view()
        sample = Subset(view, sample_indices(len(view), limit, seed))
        for images, labels, _ in DataLoader(sample, batch_size=batch_size, num_workers=num_workers):
            yield images[labels != BAD_LABEL]

    def content_hashes(self) -> list[str]:
        return file_hashes(f.path for f in self.files)

    def stored_sizes(self) -> np.ndarray:
        """(width, height) of each file as stored, [N, 2], read from the headers only (nothing is decoded);
        NaN for a file Pillow cannot open."""
        sizes = np.full((len(self.files), 2), np.nan)
        for i, file in enumerate(self.files):
            try:
                with Image.open(file.path) as image:
                    sizes[i] = image.size
            except Exception:  # Pillow raises OSError, ValueError, SyntaxError... for broken files
                pass
        return sizes

    def boxes(self) -> np.ndarray | None:
        """Each file's object box (x1, y1, x2, y2), [N, 4], NaN where a file has none; None if no file has one."""
        if all(file.box is None for file in self.files):
            return None
        return np.array([file.box if file.box is not None else [np.nan] * 4 for file in self.files],
                        dtype=np.float64)


def check_error(path: Path) -> str | None:
    """Why `path` would not decode, from decode.check_image (quicker than decoding it), or None."""
    try:
        check_image(path)
    except Exception as e:  # Pillow raises OSError, ValueError, SyntaxError...; too large: UserError
        return f"{type(e).__name__}: {e}"
    return None


def find_bad_images(files: Sequence[ImageFile], threads: int) -> dict[Path, str]:
    """Each file that would not decode, with the reason, in path order. Threads suffice: Pillow releases
    the GIL while it decodes."""
    paths = sorted({f.path for f in files})
    with ThreadPoolExecutor(max(1, threads)) as pool:
        errors = list(pool.map(check_error, paths))
    return {path: error for path, error in zip(paths, errors, strict=True) if error is not None}


def bad_images_message(bad: dict[Path, str], limit: int = 10) -> str:
    listed = "; ".join(f"{path} ({error})" for path, error in list(bad.items())[:limit])
    more = f"; and {len(bad) - limit} more" if len(bad) > limit else ""
    return f"{len(bad)} image file(s) cannot be read: {listed}{more}"


def decode_error(path: Path) -> str:
    """Why `path` does not decode (re-tried in the main process: workers only report that it failed)."""
    try:
        transforms.decode_rgb(path)
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return "it failed to decode or resize in a DataLoader worker"


def bad_image_message(path: Path) -> str:
    return (f"Cannot read image {path} ({decode_error(path)}). The file is corrupt, truncated or not an "
            f"image: replace or delete it, or pass --data.skip_bad_images true to leave such files out.")


def drop_bad_images(batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], dataset: ImageFileDataset,
                    skip: bool, skipped: set[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) without the unreadable files: a UserError naming the first one, or, with `skip`,
    a warning naming each new one with the running count kept in `skipped`."""
    images, labels, index = batch
    bad = labels == BAD_LABEL
    if not bad.any():
        return images, labels
    from lightning.pytorch.utilities import rank_zero_warn  # here: importing Lightning costs seconds

    for i in index[bad].tolist():
        path = dataset.files[i].path
        if not skip:
            raise UserError(bad_image_message(path))
        if path not in skipped:
            skipped.add(path)
            rank_zero_warn(f"Skipping unreadable image {path} ({decode_error(path)}); "
                           f"{len(skipped)} skipped so far.")
    return images[~bad], labels[~bad]
