"""Decode and resize a file dataset's images once into a uint8 cache that training then reads.

    uv run python cache_images.py --config configs/stanford_cars.yaml --data.cache_dir cache/stanford_cars
    uv run python main.py --config configs/stanford_cars.yaml --data.cache_dir cache/stanford_cars
"""

import sys
from pathlib import Path

from imgclf.cache_cli import main
from imgclf.errors import UserError

if __name__ == "__main__":
    try:
        main(default_config=Path(__file__).parent / "configs" / "default.yaml")
    except UserError as e:
        sys.exit(f"error: {e}")
