"""Decode and resize a file dataset's images once into a uint8 cache that training then reads.

    uv run python -m imgclf.train.cache_images --config configs/stanford_cars.yaml --data.cache_dir cache/stanford_cars
    uv run python main.py --config configs/stanford_cars.yaml --data.cache_dir cache/stanford_cars
"""

from pathlib import Path

from imgclf.train.cache_cli import main

from imgclf.errors import exit_on_user_error

if __name__ == "__main__":
    with exit_on_user_error():
        main(default_config=Path(__file__).parent / "configs" / "default.yaml")
