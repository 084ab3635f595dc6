"""Decode and resize a file dataset's images once into a uint8 cache that training then reads (a DVC stage).

    uv run python -m imgclf.train.cache_images --config configs/stanford_cars.yaml --data.cache_dir cache/stanford_cars
    uv run python main.py --config configs/stanford_cars.yaml --data.cache_dir cache/stanford_cars

It reads the same configs and overrides as main.py, so the cache matches what training will ask for.
"""

from __future__ import annotations

import sys
from pathlib import Path

from imgclf.data.datamodule import ImageDataModule
from imgclf.errors import exit_on_user_error
from imgclf.model.classifier import ImageClassifier
from imgclf.train.run import DEFAULT_CONFIG, ImageClassificationCLI


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
    folder = data.build_cache()
    print(f"Image cache of {data.describe()} written to {folder}/", file=sys.stderr)
    return folder


if __name__ == "__main__":
    with exit_on_user_error():
        main(default_config=DEFAULT_CONFIG)
