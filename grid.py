"""Run the seed study's three experiments (lr 0.001/bs 64, lr 0.01/bs 64, lr 0.001/bs 128) and tabulate them.

    uv run python grid.py                                         # on digits (configs/default.yaml)
    uv run python grid.py --config configs/fashion_mnist.yaml --trainer.max_epochs 3

Any main.py argument passes through; results land in runs/grid-<time>/results.{md,csv}.
"""

import sys
from pathlib import Path

from imgclf.errors import UserError
from imgclf.grid import run_grid

if __name__ == "__main__":
    try:
        run_grid(Path(__file__).parent / "main.py", sys.argv[1:])
    except UserError as e:
        sys.exit(f"error: {e}")
