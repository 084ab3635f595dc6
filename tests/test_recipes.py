"""The training recipes: configs/fashion_mnist.yaml (what dvc.yaml trains) loads and learns on a slice of the
data, through the recipe benchmark's smoke mode, which also proves the benchmark's figures add up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO

from imgclf.bench.recipes import RecipeOptions, run_recipe


@pytest.mark.slow
def test_fashion_mnist_recipe_learns_on_a_slice_and_the_benchmark_reports_seeds(fashion_mnist_real: Path,
                                                                                 tmp_path: Path, capsys) -> None:
    results = run_recipe(RecipeOptions(config=REPO / "configs" / "fashion_mnist.yaml", seeds=[0, 1], smoke=True,
                                       extra_args=["--data.root", str(fashion_mnist_real),
                                                   "--data.eval_batch_size", "250"], runs_dir=tmp_path))
    accs = [run["test_acc"] for run in results["runs"]]
    # 20 steps of 256 images (a tenth of an epoch), 500 test images: chance is 0.10.
    assert min(accs) > 0.5, accs
    assert accs[0] != accs[1]  # the seed reaches the run: two seeds, two models
    assert results["test_acc"]["mean"] == pytest.approx(sum(accs) / 2)
    assert results["test_acc"]["std"] == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)
    assert all(run["fit_seconds"] > 0 for run in results["runs"])
    assert json.loads((tmp_path / "recipe.json").read_text()) == results
    assert "mean  " in capsys.readouterr().out
