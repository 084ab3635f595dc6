"""Train and test an image classifier.

    uv run python main.py                                   # digits, offline (configs/default.yaml)
    uv run python main.py --config configs/fashion_mnist.yaml --trainer.max_epochs 5 --model.lr 0.05
    uv run python main.py --print_config                    # the full resolved config
"""

import sys
from pathlib import Path

from imgclf.cli import main
from imgclf.errors import UserError

if __name__ == "__main__":
    try:
        main(default_config=Path(__file__).parent / "configs" / "default.yaml")
    except UserError as e:
        sys.exit(f"error: {e}")
