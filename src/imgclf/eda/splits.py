"""Where EDA.ipynb gets its data: the DataModule a training config builds, and its splits' images as the model
receives them at evaluation, for in-memory splits (`ImageArrays`) and splits of image files alike."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from imgclf.data.datamodule import ImageDataModule
from imgclf.data.image_files import BAD_LABEL, ImageFileDataset
from imgclf.data.readers import ImageArrays
from imgclf.errors import UserError
from imgclf.train.config import load

Split = ImageArrays | ImageFileDataset


def load_datamodule(config: str | Path) -> ImageDataModule:
    """The DataModule `main.py --config <config>` would build (over configs/default.yaml), not yet set up."""
    return load([config], build=["data"]).datamodule


def open_datasets(configs: Iterable[str | Path]) -> dict[str, ImageDataModule]:
    """The set-up DataModule of each config, by dataset name; a config whose data cannot be read (not
    fetched yet, corrupt, a bad setting) is skipped with the reason printed, so the rest still runs.

    setup() never downloads (prepare_data does): a notebook only looks at what is already on disk.
    """
    modules = {}
    for config in configs:
        try:
            datamodule = load_datamodule(config)
            datamodule.setup()
        except (UserError, OSError) as e:
            print(f"skipped {config}: {e}")
            continue
        modules[datamodule.spec.name] = datamodule
    return modules


def is_file_dataset(split: Split) -> bool:
    return isinstance(split, ImageFileDataset)


def model_input(split: Split, index: int) -> torch.Tensor:
    """Image `index` as the model receives it at evaluation (for files: decoded, resized, centre-cropped)."""
    return split.evaluation_view()[index][0] if is_file_dataset(split) else split.images[index]


def pixel_batches(split: Split, limit: int | None = None, seed: int = 0, batch_size: int = 256,
                  num_workers: int = 0) -> Iterator[torch.Tensor]:
    """The split's images as uint8 batches [B, C, H, W], as the model receives them at evaluation.

    In-memory splits give all their images. File splits are decoded, so at most `limit` of them (a fixed
    random sample) are: decoding is the slow part (about 180 images/s in one process on a 2-core machine,
    for 700x480 JPEGs, so Stanford Cars' 8,144 training images would take most of a minute). Files that
    fail to decode are left out.
    """
    if not is_file_dataset(split):
        yield from split.images.split(batch_size)
        return
    view = split.evaluation_view()
    indices = sample_indices(len(view), limit, seed)
    for images, labels, _ in DataLoader(Subset(view, indices), batch_size=batch_size, num_workers=num_workers):
        yield images[labels != BAD_LABEL]


def sample_indices(n: int, limit: int | None, seed: int = 0) -> list[int]:
    """range(n), or `limit` of its members drawn at random (sorted, the same for the same seed)."""
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, size=limit, replace=False).tolist())
