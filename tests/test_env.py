"""check_env.py: the arch-mismatch logic on cases, each check's verdicts, and the script as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO

from imgclf.data import readers
from imgclf.env import arch, checks, probe
from imgclf.env.data import dataset_checks, dvc_remote_check
from imgclf.env.report import ChildResult, exit_code, finish, start_python

# --- which torch build runs on which GPU -----------------------------------------------------------------

@pytest.mark.parametrize("capability, arch_list, status, index", [
    ((12, 0), ["sm_90"], "FAIL", "cu128"),                   # RTX 50xx under a Hopper-only build
    ((9, 0), ["sm_90"], "PASS", None),
    ((8, 6), ["sm_80"], "PASS", None),                       # SASS runs on later minors of its major
    ((8, 0), ["sm_86"], "FAIL", "cu126"),                    # ... but not on earlier ones
    ((12, 0), ["sm_80", "sm_90", "compute_90"], "WARN", "cu128"),  # PTX is JIT-compiled for newer GPUs
    ((10, 0), ["sm_90a", "compute_90a"], "FAIL", "cu128"),   # arch-specific code is not forward-compatible
    ((9, 0), ["sm_90a"], "PASS", None),
    ((10, 3), ["sm_90", "sm_100"], "PASS", None),            # B300 runs sm_100 SASS
    ((12, 1), ["sm_90"], "FAIL", "cu129"),
    ((11, 0), ["sm_90", "sm_100", "sm_120"], "FAIL", "cu130"),
    ((6, 1), ["sm_75", "sm_80", "sm_90"], "FAIL", "cu126"),  # too old for the build: go back, not forward
])
def test_arch_verdict_cases(capability, arch_list, status, index):
    got, detail, fix = arch.arch_verdict(capability, arch_list)
    assert got == status, detail
    if index is None:
        assert fix == ""
    else:
        assert f'url = "https://download.pytorch.org/whl/{index}"' in fix
        assert "[[tool.uv.index]]" in fix and "explicit = true" in fix and "[tool.uv.sources]" in fix
        assert "`uv sync`" in fix


def test_arch_fix_names_the_cuda_build_and_why():
    status, detail, fix = arch.arch_verdict((12, 0), ["sm_90"])
    assert "12.0" in detail and "no kernel image" in detail
    assert fix.startswith("Install torch built for CUDA 12.8 or newer, which has sm_120 kernels")
    assert "older CUDA build that still ships sm_61" in arch.torch_build_fix((6, 1), ["sm_75"])
    assert "newer than this checker knows" in arch.torch_build_fix((13, 0), ["sm_120"])


def test_arch_list_without_cuda_entries_is_a_warning():
    assert arch.parse_arch("gfx90a") is None
    assert arch.parse_arch("sm_100a") == ("sm", (10, 0), "a")
    assert arch.arch_verdict((9, 0), ["gfx90a"])[0] == "WARN"


# --- checks built from probe results (no GPU needed) -------------------------------------------------------

CPU_MATMUL = {"kind": "fp32", "n": 1000, "tflops": 0.02, "rel_err": 1e-7, "tolerance": 1e-4}


def fake_probe(devices: list[dict], arch_list: list[str]) -> ChildResult:
    """A probe's result; without devices the CPU gets the compute checks (AMX: bf16 at 2x fp32's speed)."""
    cpu_bf16 = {"units": {"amx_tile": True, "avx512_bf16": True}, "matmul": {**CPU_MATMUL, "kind": "bf16",
                                                                               "tflops": 0.04}}
    return ChildResult({"torch": "2.9.0+cu126", "cuda_build": "12.6", "hip": None, "cudnn": "9.5.1",
                        "arch_list": arch_list, "cuda_available": bool(devices), "warnings": [],
                        "devices": devices, "gloo_available": True, "nccl_available": True,
                        "nccl_version": "2.21.5", "cpu_matmul": None if devices else CPU_MATMUL,
                        "cpu_bf16": None if devices else cpu_bf16}, "")


def fake_gpu(capability: list[int], rel_err: float = 1e-7) -> dict:
    return {"index": 0, "name": "NVIDIA GeForce RTX 5090", "capability": capability, "memory_gib": 31.4,
            "bf16": True, "tf32": True, "matmul": [{"kind": "fp32", "n": 1000, "tflops": 50.0,
                                                    "rel_err": rel_err, "tolerance": 1e-4}]}


def by_name(found: list) -> dict:
    return {c.name: c for c in found}


def test_gpu_without_kernels_fails_the_run():
    result = fake_probe([fake_gpu([12, 0])], ["sm_80", "sm_90"])
    found = by_name(checks.gpu_checks(result, ["NVIDIA GeForce RTX 5090, 570.1"], require_gpu=False))
    assert found["gpu0 kernels"].status == "FAIL" and "cu128" in found["gpu0 kernels"].fix
    assert found["gpu0 compute"].status == "PASS" and found["gpus"].status == "PASS"
    assert exit_code(list(found.values())) == 1


@pytest.mark.parametrize("rel_err", [1e-2, float("nan")])
def test_wrong_matrix_product_fails(rel_err):
    found = by_name(checks.gpu_checks(fake_probe([fake_gpu([9, 0], rel_err)], ["sm_90"]), [], False))
    assert found["gpu0 kernels"].status == "PASS"
    assert found["gpu0 compute"].status == "FAIL"


@pytest.mark.parametrize("smi, require_gpu, status", [
    ([], False, "WARN"),                       # a laptop: CPU training works
    ([], True, "FAIL"),
    (["NVIDIA H100, 550.54"], False, "FAIL"),  # the driver sees a GPU that torch cannot use
])
def test_no_usable_gpu(smi, require_gpu, status):
    result = fake_probe([], ["sm_90"])
    found = by_name(checks.gpu_checks(result, smi, require_gpu))
    assert found["gpus"].status == status and found["gpus"].fix
    assert found["cpu compute"].status == "PASS" and "GFLOP/s" in found["cpu compute"].detail
    assert found["cpu bf16"].status == "PASS" and "AMX" in found["cpu bf16"].detail


@pytest.mark.parametrize("units, status", [
    ({"amx_tile": True, "avx512_bf16": True}, "PASS"),
    ({"amx_tile": False, "avx512_bf16": True}, "PASS"),
    ({"amx_tile": False, "avx512_bf16": False}, "WARN"),  # bf16-mixed would be emulated: slow
])
def test_cpu_without_bf16_units_says_which_precision_to_pass(units, status):
    result = fake_probe([], [])
    result.result["cpu_bf16"] = {"units": units, "matmul": {**CPU_MATMUL, "kind": "bf16", "tflops": 0.005}}
    found = by_name(checks.gpu_checks(result, [], require_gpu=False))["cpu bf16"]
    assert found.status == status and "0.2x" in found.detail
    assert ("--trainer.precision 32-true" in found.fix) == (status == "WARN")


def test_allreduce_failures_are_reported():
    rank0 = ChildResult({"rank": 0, "pid": 11, "backend": "gloo", "sum": 3.0, "seconds": 0.1}, "")
    killed = ChildResult(None, "did not finish within 5 s and was killed")
    wrong = ChildResult({"rank": 1, "pid": 12, "backend": "gloo", "sum": 2.0, "seconds": 0.1}, "")
    for ranks, expected in [([rank0, killed], "rank 1 did not finish"), ([rank0, wrong], "expected 3")]:
        found = by_name(checks.distributed_checks(fake_probe([], []), ranks))
        assert found["all-reduce"].status == "FAIL" and expected in found["all-reduce"].detail
        assert "NCCL_DEBUG=INFO" in found["all-reduce"].fix
    right = ChildResult({**wrong.result, "sum": 3.0}, "")
    found = by_name(checks.distributed_checks(fake_probe([], []), [rank0, right]))
    assert found["all-reduce"].status == "PASS"


@pytest.mark.slow
def test_hung_child_is_killed_at_the_timeout():
    start = time.perf_counter()
    result = finish(start_python("import time; time.sleep(60)"), timeout=1)
    assert result.result is None and "did not finish within 1 s" in result.error
    assert time.perf_counter() - start < 30


@pytest.mark.slow
def test_crashing_child_reports_its_error():
    result = finish(start_python("raise SystemExit('driver exploded')"), timeout=60)
    assert result.result is None and "driver exploded" in result.error


def test_matmul_error_is_measured_against_float64():
    for kind in ("fp32", "bf16"):
        r = probe._matmul(torch.device("cpu"), 64, kind, {})
        assert 0 < r["rel_err"] <= r["tolerance"] and r["tflops"] > 0


def test_missing_package_fails_naming_uv_sync(monkeypatch):
    monkeypatch.setattr(checks, "PACKAGES", ["torch", "no-such-package-imgclf"])
    found = by_name(checks.software_checks())
    assert found["torch"].status == "PASS"
    assert found["no-such-package-imgclf"].status == "FAIL"
    assert "`uv sync`" in found["no-such-package-imgclf"].fix


# --- data and DVC ------------------------------------------------------------------------------------------

def test_datasets_present_or_missing(tmp_path):
    found = by_name(dataset_checks(tmp_path))
    assert found["digits"].status == "PASS"
    assert found["cifar10"].status == "WARN" and "dvc pull data/cifar10.dvc" in found["cifar10"].fix
    assert "folder" not in found  # your own images have no DVC pointer to pull: an absent data/folder is fine
    folder = tmp_path / "cifar10" / readers.CIFAR10_FOLDER
    folder.mkdir(parents=True)
    for name in ["batches.meta", *readers.CIFAR10_BATCHES[True], *readers.CIFAR10_BATCHES[False]]:
        (folder / name).write_bytes(b"")
    (tmp_path / "folder" / "cats").mkdir(parents=True)
    found = by_name(dataset_checks(tmp_path))
    assert found["cifar10"].status == "PASS" and found["cifar10"].detail == str(tmp_path / "cifar10")
    assert found["folder"].status == "PASS"


@pytest.mark.parametrize("config, status, expected", [
    (None, "WARN", "dvc init"),
    ("", "WARN", "dvc remote add -d"),
    ("['remote \"storage\"']\n    url = s3://bucket/imgclf\n", "WARN", "dvc remote default storage"),
    ("[core]\n    remote = storage\n['remote \"storage\"']\n    url = s3://bucket/imgclf\n", "PASS",
     "storage -> s3://bucket/imgclf"),
    ((REPO / ".dvc" / "config").read_text(), "WARN", "dvc remote modify storage url s3://<your-bucket>"),
    ((REPO / ".dvc" / "config").read_text() + "    endpointurl = http://127.0.0.1:8333\n", "PASS",
     "storage -> s3://replace-with-your-bucket/imgclf at http://127.0.0.1:8333"),  # the local S3 server
])
def test_dvc_remote(tmp_path, monkeypatch, config, status, expected):
    monkeypatch.setenv("HOME", str(tmp_path))  # keep the user's global DVC config out of it
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    if config is not None:
        (tmp_path / ".dvc").mkdir()
        (tmp_path / ".dvc" / "config").write_text(config)
    check = dvc_remote_check(tmp_path)
    assert check.status == status
    assert expected in (check.detail if status == "PASS" else check.fix)


# --- the script, as a user runs it -------------------------------------------------------------------------

def run_check_env(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "check_env.py"), *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **env})


@pytest.mark.slow
def test_json_on_this_machine():
    done = run_check_env("--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True and report["exit_code"] == 0 and report["counts"]["FAIL"] == 0
    sections = report["checks"]
    assert set(sections) == {"software", "gpu", "distributed", "data"}
    for name in ["python", "os", *checks.PACKAGES]:
        assert sections["software"][name]["status"] == "PASS"
    gpus = sections["gpu"]["gpus"]
    if gpus["info"]["count"] == 0:  # CPU-only is a warning with a fix, not a failure
        assert gpus["status"] == "WARN" and gpus["fix"]
        assert sections["gpu"]["cpu compute"]["status"] == "PASS"
        bf16 = sections["gpu"]["cpu bf16"]
        assert bf16["status"] == ("PASS" if any(bf16["info"]["units"].values()) else "WARN")
        assert bf16["info"]["bf16_over_fp32"] > 0
    ranks = sections["distributed"]["all-reduce"]["info"]["ranks"]
    assert sections["distributed"]["all-reduce"]["status"] == "PASS"
    assert sorted(r["rank"] for r in ranks) == [0, 1] and all(r["sum"] == 3 for r in ranks)
    assert len({r["pid"] for r in ranks}) == 2  # two real processes
    assert {"digits", "fashion_mnist", "cifar10", "dvc remote"} <= set(sections["data"])


@pytest.mark.slow
def test_require_gpu_fails_without_a_gpu():
    done = run_check_env("--require-gpu", CUDA_VISIBLE_DEVICES="")  # hide any GPU, so this holds anywhere
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    gpus = next(line for line in lines if line.split()[1:2] == ["gpus"])
    assert gpus.split()[0] == "FAIL"
    assert "fix:" in lines[lines.index(gpus) + 1]
    assert lines[-1].startswith("summary:") and lines[-1].endswith("-> FAILED")
    check_lines = [line for line in lines if line.startswith("  ") and not line.strip().startswith("fix:")]
    statuses = {line.split()[0] for line in check_lines}
    assert statuses <= {"PASS", "WARN", "FAIL"}
    assert "Traceback" not in done.stderr
