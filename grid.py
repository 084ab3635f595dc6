"""Run the seed study's three experiments (lr 0.001/bs 64, lr 0.01/bs 64, lr 0.001/bs 128) and tabulate them.

    uv run python -m imgclf.train.grid                                         # on digits (configs/default.yaml)
    uv run python -m imgclf.train.grid --config configs/fashion_mnist.yaml --trainer.max_epochs 3

Any main.py argument passes through; results land in runs/grid-<time>/results.{md,csv}.
"""

import sys
from pathlib import Path

from imgclf.errors import exit_on_user_error
from imgclf.train.grid import run_grid

if __name__ == "__main__":
    with exit_on_user_error():
        run_grid(Path(__file__).parent / "main.py", sys.argv[1:])
