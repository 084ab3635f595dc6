"""Where EDA.ipynb gets its data: the DataModule a training config builds, set up. Its splits, whichever kind
of dataset holds them, offer the methods of imgclf.eda.inspectable.InspectableSplit (images as the model
receives them at evaluation, content hashes, sizes as stored, boxes)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from imgclf.data.datamodule import ImageDataModule
from imgclf.errors import UserError
from imgclf.train.config import load


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
