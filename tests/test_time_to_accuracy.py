"""The time-to-accuracy benchmark races our best CPU recipe (the one `dvc repro` trains) and reports the goals'
ratios. Its tiny end-to-end run is tests/test_fast.py::test_benchmark_tiny_mode."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import REPO

from imgclf.bench import run as bench
from imgclf.bench.curve import Curve


def curve(name: str, points: list[tuple[float, float]]) -> Curve:
    c = Curve(name)
    for seconds, accuracy in points:
        c.add(seconds, int(seconds * 1000), accuracy)
    return c


def test_on_a_cpu_it_races_the_recipe_dvc_repro_trains(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    trained = re.search(r"main\.py --config (\S+)", (REPO / "dvc.yaml").read_text()).group(1)
    assert bench.default_config() == REPO / trained


def test_goals_are_the_two_ratios_of_one_run() -> None:
    ours = curve("ours", [(5.0, 0.85), (10.0, 0.905), (30.0, 0.925), (50.0, 0.931)])
    baseline = curve("baseline", [(40.0, 0.88), (100.0, 0.90), (300.0, 0.91)])
    goals = bench.goals(ours, baseline)
    assert goals["speedup_at_90"] == pytest.approx(10.0)
    assert goals["baseline_90_over_pipeline_93"] == pytest.approx(2.0)
    assert goals["met"]
    slower = bench.goals(curve("ours", [(20.0, 0.90), (120.0, 0.93)]), baseline)
    assert slower["speedup_at_90"] == pytest.approx(5.0) and not slower["met"]
    assert bench.goals(curve("ours", [(10.0, 0.92)]), baseline)["baseline_90_over_pipeline_93"] is None


def test_table_prints_the_goals() -> None:
    ours, baseline = curve("ours", [(10.0, 0.905), (50.0, 0.931)]), curve("baseline", [(100.0, 0.90)])
    results = {"device": "cpu", "config": "c.yaml", "tiny": False, "budget_seconds": 300.0,
               "time_to_accuracy": [bench._row(t, ours, baseline) for t in bench.THRESHOLDS],
               "goals": bench.goals(ours, baseline), "pipeline": ours.to_dict(), "baseline": baseline.to_dict(),
               "overhead": {"batch_size": 256, "steps": 3, "plain_step_ms": 10.0, "lightning_step_ms": 10.4,
                            "overhead_ratio": 1.04, "plain_images_per_second": 1.0, "lightning_images_per_second": 1.0}}
    table = bench.format_table(results)
    assert "Goals: 90% 10.00x sooner" in table and "our 93%: 2.00 (goal > 1); met" in table
