"""The checks check_env.py runs: software, GPUs and their compute, distributed all-reduce, data and DVC."""

from __future__ import annotations

import platform
import shutil
import socket
import subprocess
import sys
from importlib import metadata
from typing import Any

from imgclf.env.arch import arch_verdict
from imgclf.env.probe import TIMEOUT_ENV
from imgclf.env.report import TIMED_OUT, UV_SYNC, Check, ChildResult, start_python

PACKAGES = ["torch", "lightning", "torchvision", "torchmetrics", "jsonargparse", "onnx", "onnxruntime",
            "dvc", "scikit-learn", "pandas"]
WORLD_SIZE = 2


def software_checks() -> list[Check]:
    version = ".".join(map(str, sys.version_info[:3]))
    checks = [
        Check("software", "python", "PASS" if sys.version_info >= (3, 11) else "FAIL",
              f"{version} ({sys.executable})",
              "" if sys.version_info >= (3, 11) else "The project needs Python 3.11 or newer; " + UV_SYNC),
        Check("software", "os", "PASS", platform.platform(), info={"machine": platform.machine()}),
    ]
    for name in PACKAGES:
        try:
            found = metadata.version(name)
            checks.append(Check("software", name, "PASS", found, info={"version": found}))
        except metadata.PackageNotFoundError:
            checks.append(Check("software", name, "FAIL", "not installed", UV_SYNC, {"version": None}))
    return checks


def nvidia_smi() -> list[str]:
    """GPU names and driver versions as the driver reports them (empty without a driver)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=15).stdout
    except (subprocess.TimeoutExpired, OSError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


CPU_ONLY_FIX = ("Install the CUDA build of torch: point uv at the https://download.pytorch.org/whl/cuXYZ "
                "index matching your driver with [[tool.uv.index]] (explicit = true) and [tool.uv.sources], "
                "then run `uv sync` (see docs/environment.md).")
FAULTY_FIX = ("See the kernels line above for a build mismatch; otherwise the GPU or driver is faulty: "
              "update the driver and run `nvidia-smi -q` to look for errors.")


def _no_gpu(probe: dict[str, Any], smi: list[str], require_gpu: bool) -> Check:
    cuda, torch = probe["cuda_build"], probe["torch"]
    if cuda is None:
        seen = f", but the driver sees {smi}" if smi else ""
        return Check("gpu", "gpus", "FAIL" if smi or require_gpu else "WARN",
                     f"torch {torch} is a CPU-only build{seen}", CPU_ONLY_FIX)
    if smi:  # the machine has GPUs, torch cannot use them: training would silently run on the CPU
        notes = "".join(f": {w}" for w in probe["warnings"])
        fix = (f"Update the NVIDIA driver to one that supports CUDA {cuda} or install a torch build for the "
               f"CUDA version `nvidia-smi` shows, and check that CUDA_VISIBLE_DEVICES is set right.")
        found = f"nvidia-smi lists {smi} but torch (CUDA {cuda}) sees no GPU{notes}"
        return Check("gpu", "gpus", "FAIL", found, fix)
    fix = "Run on a machine with an NVIDIA GPU and its driver (`nvidia-smi` must list the GPU)" + (
        "." if require_gpu else ", or leave it: CPU training works, only slower.")
    found = f"no NVIDIA GPU or driver found (torch {torch}, CUDA {cuda} build); training runs on the CPU"
    return Check("gpu", "gpus", "FAIL" if require_gpu else "WARN", found, fix)


def _matmul_check(name: str, results: list[dict[str, Any]], error: str | None, unit: float) -> Check:
    label = "TFLOP/s" if unit == 1e12 else "GFLOP/s"
    parts = [f"{r['kind']} {r['n']}x{r['n']}: {r['tflops'] * 1e12 / unit:.1f} {label} "
             f"(rel err {r['rel_err']:.0e})" for r in results]
    wrong = [r for r in results if not r["rel_err"] <= r["tolerance"]]  # `not <=` also catches NaN
    if error or wrong:
        cause = error or "; ".join(f"{r['kind']} {r['n']}: rel err {r['rel_err']:.1e} > {r['tolerance']:.0e}"
                                   for r in wrong)
        return Check("gpu", name, "FAIL", f"matrix product failed: {cause}", FAULTY_FIX, {"matmul": results})
    return Check("gpu", name, "PASS", ", ".join(parts) + " vs CPU float64", info={"matmul": results})


def _cpu_bf16_check(fp32: dict[str, Any], bf16: dict[str, Any]) -> Check:
    """The CPU is the training device: say whether the bf16-mixed recipes will be fast on it."""
    units = [name.replace("_tile", "").upper() for name, found in bf16["units"].items() if found]
    speed = bf16["matmul"]["tflops"] / fp32["tflops"]  # both timed products: never zero
    detail = (f"bf16 units: {', '.join(units) or 'none'}; a bf16 1000x1000 product runs at {speed:.1f}x the "
              f"speed of fp32")
    info = {"units": bf16["units"], "bf16_over_fp32": speed, "matmul": bf16["matmul"]}
    if units:
        return Check("gpu", "cpu bf16", "PASS", detail, info=info)
    fix = ("configs/fashion_mnist.yaml trains in bf16-mixed, which pays only on a CPU with AMX or AVX512-BF16; "
           "here pass --trainer.precision 32-true (its channels_last still helps).")
    return Check("gpu", "cpu bf16", "WARN", detail, fix, info)


def _child_fix(error: str, otherwise: str) -> str:
    if TIMED_OUT in error:  # most often a busy or slow machine: importing torch alone can take tens of seconds
        return (f"Rerun with a larger limit, e.g. `uv run check_env.py --timeout 300`; if it still times out, "
                f"{otherwise[0].lower()}{otherwise[1:]}")
    return UV_SYNC if "ModuleNotFoundError" in error or "ImportError" in error else otherwise


def gpu_checks(probe: ChildResult, smi: list[str], require_gpu: bool) -> list[Check]:
    if probe.result is None:
        fix = _child_fix(probe.error, "Run `uv run python -c \"import torch; torch.cuda.init()\"` to see the "
                                      "whole error; if that hangs or crashes, reinstall the NVIDIA driver.")
        return [Check("gpu", "torch/cuda", "FAIL", f"the torch/CUDA probe {probe.error}", fix)]
    p = probe.result
    if p["cuda_build"]:
        build = f"CUDA {p['cuda_build']}, cuDNN {p['cudnn']}, kernels for {' '.join(p['arch_list'])}"
    else:
        build = f"ROCm {p['hip']}" if p["hip"] else "CPU-only build"
    checks = [Check("gpu", "cuda build", "PASS", f"torch {p['torch']}: {build}",
                    info={k: p[k] for k in ("torch", "cuda_build", "hip", "cudnn", "arch_list", "warnings")})]
    if not p["devices"]:
        checks.append(_no_gpu(p, smi, require_gpu))
        checks[-1].info = {"count": 0, "nvidia_smi": smi}
        checks.append(_matmul_check("cpu compute", [p["cpu_matmul"]], None, 1e9))
        checks.append(_cpu_bf16_check(p["cpu_matmul"], p["cpu_bf16"]))
        return checks
    driver = "; ".join(smi) or "?"
    checks.append(Check("gpu", "gpus", "PASS", f"{len(p['devices'])} visible, driver: {driver}",
                        info={"count": len(p["devices"]), "nvidia_smi": smi}))
    for d in p["devices"]:
        cap = tuple(d["capability"])
        checks.append(Check("gpu", f"gpu{d['index']}", "PASS",
                            f"{d['name']}, capability {cap[0]}.{cap[1]}, {d['memory_gib']} GiB, "
                            f"bf16 {'yes' if d['bf16'] else 'no'}, TF32 {'yes' if d['tf32'] else 'no'}",
                            info={k: d[k] for k in ("name", "capability", "memory_gib", "bf16", "tf32")}))
        status, detail, fix = arch_verdict(cap, p["arch_list"])
        checks.append(Check("gpu", f"gpu{d['index']} kernels", status, detail, fix))
        checks.append(_matmul_check(f"gpu{d['index']} compute", d["matmul"], d.get("error"), 1e12))
    return checks


def start_allreduce(timeout: float) -> list[subprocess.Popen]:
    """Start the ranks of the smoke test as separate processes that meet over TCP, as DDP's ranks do."""
    with socket.socket() as s:  # a free port, the way Lightning picks MASTER_PORT
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(WORLD_SIZE),
           TIMEOUT_ENV: str(timeout)}
    code = "from imgclf.env.probe import allreduce_worker; allreduce_worker()"
    return [start_python(code, {**env, "RANK": str(rank)}) for rank in range(WORLD_SIZE)]


def distributed_checks(probe: ChildResult, ranks: list[ChildResult]) -> list[Check]:
    checks = []
    if probe.result is not None:
        p = probe.result
        nccl = f"nccl {'available' if p['nccl_available'] else 'MISSING'}" + (
            f" ({p['nccl_version']})" if p["nccl_version"] else "")
        broken = (bool(p["devices"]) and not p["nccl_available"]) or not p["gloo_available"]
        checks.append(Check("distributed", "backends", "FAIL" if broken else "PASS",
                            f"gloo {'available' if p['gloo_available'] else 'MISSING'}, {nccl}",
                            "Install torch's Linux CUDA build (it ships NCCL and gloo) with `uv sync`."
                            if broken else "",
                            {k: p[k] for k in ("gloo_available", "nccl_available", "nccl_version")}))
    gpus = len(probe.result["devices"]) if probe.result else 0
    why_gloo = f" (nccl needs a GPU per rank, {gpus} here)" if 0 < gpus < WORLD_SIZE else ""
    errors = [f"rank {i} {r.error}" for i, r in enumerate(ranks) if r.result is None]
    results = [r.result for r in ranks if r.result is not None]
    expected = WORLD_SIZE * (WORLD_SIZE + 1) / 2  # rank r contributes r + 1
    if errors or any(r["sum"] != expected for r in results):
        detail = "; ".join(errors) or f"sums {[r['sum'] for r in results]}, expected {expected:g}"
        fix = _child_fix(detail, "Rerun with NCCL_DEBUG=INFO TORCH_DISTRIBUTED_DEBUG=DETAIL to see why; on a "
                                 "machine with several network interfaces set GLOO_SOCKET_IFNAME=lo "
                                 "(NCCL_SOCKET_IFNAME for nccl).")
        checks.append(Check("distributed", "all-reduce", "FAIL", f"{WORLD_SIZE}-process all-reduce: {detail}",
                            fix, {"ranks": results}))
    else:
        checks.append(Check("distributed", "all-reduce", "PASS",
                            f"{results[0]['backend']}{why_gloo}, {WORLD_SIZE} processes (pids "
                            f"{', '.join(str(r['pid']) for r in results)}), sum {results[0]['sum']:g} == "
                            f"{expected:g} in {max(r['seconds'] for r in results):.1f} s",
                            info={"backend": results[0]["backend"], "ranks": results}))
    return checks
