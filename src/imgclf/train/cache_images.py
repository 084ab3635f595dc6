"""Decode and resize a file dataset's images once into a uint8 cache that training then reads (a DVC stage).

    uv run python -m imgclf.train.cache_images --config configs/stanford_cars.yaml --data.cache_dir cache/stanford_cars
    uv run python main.py --config configs/stanford_cars.yaml --data.cache_dir cache/stanford_cars

It reads the same configs and overrides as main.py (through imgclf.train.config, which builds only the
DataModule here), so the cache matches what training will ask for.
"""

from __future__ import annotations

import sys
from pathlib import Path

from imgclf.errors import exit_on_user_error
from imgclf.train.config import DEFAULT_CONFIG, ConfigCLI


def main(args: list[str] | None = None, default_config: Path | None = None) -> Path:
    """Build the cache named by --data.cache_dir; returns its folder."""
    data = ConfigCLI(args, build=["data"], default_config=default_config).datamodule
    folder = data.build_cache()
    print(f"Image cache of {data.describe()} written to {folder}/", file=sys.stderr)
    return folder


if __name__ == "__main__":
    with exit_on_user_error():
        main(default_config=DEFAULT_CONFIG)
