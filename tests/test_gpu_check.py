"""python -m imgclf.bench.gpu_check: refuses within seconds when the data is missing (no download), keeps to
its budget, and runs every stage end to end in its CPU smoke mode, leaving one JSON and one log in --out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from imgclf.bench.gpu_check import CARRY_LIMIT, fashion_mnist_in, prepare


def gpu_check(*args: str, timeout: float = 1500, env: dict | None = None) -> tuple[subprocess.CompletedProcess,
                                                                                  float]:
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "imgclf.bench.gpu_check", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env)
    return done, time.monotonic() - start


def carried_only(carry: Path) -> dict[str, str]:
    """The environment of a machine that has jsonargparse & co. only where `carry` brings them."""
    hook = str(Path(__file__).parent / "carried_only")
    return {**os.environ, "CARRIED_ONLY": str(carry),
            "PYTHONPATH": os.pathsep.join([hook, os.environ.get("PYTHONPATH", "")])}


@pytest.mark.slow  # starts a Python process
def test_missing_data_is_one_message_within_seconds_and_no_download(tmp_path: Path) -> None:
    empty, out = tmp_path / "no_data", tmp_path / "out"
    empty.mkdir()
    done, seconds = gpu_check("--data", str(empty), "--out", str(out))  # the GPU mode: data is checked first
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Fashion-MNIST is not in"), done.stderr
    assert "--prepare" in lines[0]
    assert seconds < 15, f"{seconds:.1f} s"  # measured about 0.1 s: nothing heavy is imported before the check
    assert not any(empty.iterdir())  # nothing was downloaded
    assert [p.name for p in out.iterdir()] == ["gpu_check.json"]
    assert "Fashion-MNIST" in json.loads((out / "gpu_check.json").read_text())["refused"]


def test_prepare_carries_the_data_and_packages_within_the_limit(tmp_path: Path) -> None:
    prepare(tmp_path / "carry")
    assert fashion_mnist_in(tmp_path / "carry" / "fashion_mnist")
    site = tmp_path / "carry" / "site"
    assert {p.name for p in site.iterdir() if not p.name.endswith(".dist-info")} == {
        "jsonargparse", "docstring_parser", "typeshed_client"}
    assert sum(p.stat().st_size for p in (tmp_path / "carry").rglob("*") if p.is_file()) < CARRY_LIMIT


@pytest.mark.slow
def test_a_spent_budget_stops_stages_and_keeps_the_json(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done, _ = gpu_check("--smoke", "--budget-s", "6", "--stages", "env,plain", "--out", str(out),
                        "--work", str(tmp_path / "work"))
    assert done.returncode == 1, done.stdout + done.stderr
    stages = json.loads((out / "gpu_check.json").read_text())["stages"]
    assert stages["env"]["status"] == "timeout" and stages["env"]["limit_s"] <= 6  # killed, not waited for
    assert stages["plain"] == {"status": "skipped", "reason": "the budget of 6 s is spent"}
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log"]


@pytest.mark.slow
def test_smoke_run_end_to_end(tmp_path: Path) -> None:
    """As on the GPU machine: jsonargparse & co. import only from the carried folder (tests/carried_only)."""
    out, carry = tmp_path / "out", tmp_path / "carry"
    prepare(carry)
    env = carried_only(carry)
    done, _ = gpu_check("--smoke", "--budget-s", "1400", "--carry", str(carry), "--out", str(out),
                        "--work", str(tmp_path / "work"), env=env)
    results = json.loads((out / "gpu_check.json").read_text())
    stages = results["stages"]
    assert done.returncode == 0, json.dumps(stages, indent=1)[:3000] + (out / "gpu_check.log").read_text()[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log"]
    assert {name: s["status"] for name, s in stages.items()} == {
        "env": "ok", "syncs": "ok", "plain": "ok", "saved_weights": "ok", "onnx": "ok", "ddp_2ranks": "ok",
        "seeds": "ok", "compile": "skipped"}
    assert "not checked" in results["cifar10"]
    ddp = stages["ddp_2ranks"]["result"]
    assert ddp["world_size"] == 2 and ddp["whitening_equal"] and len(ddp["ranks"]) == 2
    assert stages["saved_weights"]["result"]["precision"] == "32-true"  # the run's own, on both sides
    assert stages["plain"]["result"]["metrics"]["test/acc"] > 0.1
    assert results["data"] == str(carry / "fashion_mnist")


@pytest.mark.slow  # starts a Python process
def test_without_the_carried_packages_it_refuses_before_any_stage(tmp_path: Path) -> None:
    env = carried_only(tmp_path / "carry")
    done, seconds = gpu_check("--smoke", "--carry", str(tmp_path / "carry"), "--out", str(tmp_path / "out"),
                              env=env)
    assert done.returncode == 2 and done.stderr.startswith("error: jsonargparse"), done.stderr
    assert "--prepare" in done.stderr and seconds < 15
