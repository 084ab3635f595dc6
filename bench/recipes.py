"""A recipe's test accuracy and training seconds over seeds (mean, std, range), through main.py's own path.

    uv run python bench/recipes.py                                          # configs/fashion_mnist.yaml, seeds 0 1 2
    uv run python bench/recipes.py --seeds 0 -- --trainer.max_epochs 2     # any main.py argument after --
    uv run python bench/recipes.py --config configs/default.yaml
    uv run python bench/recipes.py --smoke                                  # seconds: it loads, trains, tests
"""

import argparse
import sys
from pathlib import Path

from imgclf.bench.recipes import RecipeOptions, run_recipe
from imgclf.errors import UserError

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=RecipeOptions.config, help="main.py config to measure")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seed_everything values")
    parser.add_argument("--runs-dir", type=Path, help="parent of the seeds' run folders (default runs/recipes-<time>)")
    parser.add_argument("--smoke", action="store_true", help="20 batches of one epoch per seed, 2 test batches")
    parser.add_argument("main_args", nargs="*", help="after --: extra main.py arguments")
    args = parser.parse_args()
    try:
        run_recipe(RecipeOptions(args.config, args.seeds, args.main_args, args.runs_dir, args.smoke))
    except UserError as e:
        sys.exit(f"error: {e}")
