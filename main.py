"""Train and test an image classifier.

    uv run python main.py                                   # digits, offline (configs/default.yaml)
    uv run python main.py --config configs/fashion_mnist.yaml --trainer.max_epochs 5 --model.lr 0.05
    uv run python main.py --print_config                    # the full resolved config
"""

from pathlib import Path

from imgclf.errors import exit_on_user_error
from imgclf.train.run import main

if __name__ == "__main__":
    with exit_on_user_error():
        main(default_config=Path(__file__).parent / "configs" / "default.yaml")
