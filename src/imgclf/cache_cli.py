"""cache_images.py's logic: write the pre-resized image cache of a file dataset (a DVC pipeline stage).

It reads the same configs and overrides as main.py, so the cache matches what training will ask for.
"""

from __future__ import annotations

import sys
from pathlib import Path

from imgclf.cli import ImageClassificationCLI
from imgclf.data import ImageDataModule
from imgclf.errors import UserError
from imgclf.model import ImageClassifier


class CacheCLI(ImageClassificationCLI):
    """main.py's command line, but only the DataModule is built: no run folder, no model, no trainer."""

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        self.datamodule = ImageDataModule(**self.config.data.as_dict())


def main(args: list[str] | None = None, default_config: Path | None = None) -> Path:
    """Build the cache named by --data.cache_dir; returns its folder."""
    cli = CacheCLI(ImageClassifier, ImageDataModule, run=False, args=args,
                   parser_kwargs={"default_config_files": [str(default_config)] if default_config else []})
    data = cli.datamodule
    if data.file_data is None:
        raise UserError(f"The {data.spec.name} dataset is held in memory whole; only datasets of image files "
                        f"(stanford_cars, folder) have an image cache.")
    folder = data.file_data.build_cache()
    print(f"Image cache of {data.describe()} written to {folder}/", file=sys.stderr)
    return folder
