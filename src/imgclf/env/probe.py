"""What runs inside the child processes: the torch/CUDA probe and one rank of the all-reduce smoke test.

Everything that touches CUDA or NCCL lives here, so a broken driver can only hang a child, which the
parent kills at its timeout.
"""

from __future__ import annotations

import os
import time
import warnings
from datetime import timedelta
from typing import Any

from imgclf.env.report import emit

TIMEOUT_ENV = "IMGCLF_ENV_TIMEOUT"
# Relative error (Frobenius norm) allowed against a float64 CPU product: fp32 is exact to ~1e-6 here;
# TF32 keeps 10 mantissa bits and bf16 rounds its output to 8, so both land near 1e-3.
TOLERANCE = {"fp32": 1e-4, "tf32": 1e-2, "bf16": 1e-2}


def _matmul(device: Any, n: int, kind: str, references: dict) -> dict[str, Any]:
    """Throughput of an n x n product of `kind` on `device`, and its error against the CPU in float64."""
    import torch

    gen = torch.Generator().manual_seed(n)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    dtype = torch.bfloat16 if kind == "bf16" else torch.float32
    a, b = a.to(dtype).float(), b.to(dtype).float()  # the reference gets exactly the numbers the device sees
    key = (n, dtype)
    if key not in references:
        references[key] = a.double() @ b.double()
    reference = references[key]
    torch.backends.cuda.matmul.allow_tf32 = kind == "tf32"  # off by default; the checker sets it per product
    da, db = a.to(device, dtype), b.to(device, dtype)

    def run(repeats: int) -> float:
        start = time.perf_counter()
        for _ in range(repeats):
            torch.mm(da, db)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    run(1)  # warm-up: cuBLAS handle and kernel selection
    repeats = max(3, min(50, int(0.2 / max(run(1), 1e-6))))  # about 0.2 s of work per measurement
    seconds = run(repeats) / repeats
    error = ((da @ db).double().cpu() - reference).norm() / reference.norm()
    return {"kind": kind, "n": n, "tflops": 2 * n**3 / seconds / 1e12, "rel_err": error.item(),
            "tolerance": TOLERANCE[kind]}


def _device(index: int, references: dict) -> dict[str, Any]:
    import torch

    props = torch.cuda.get_device_properties(index)
    modern = props.major >= 8  # bf16 and TF32 tensor cores arrived with Ampere (8.0)
    info: dict[str, Any] = {"index": index, "name": props.name, "capability": [props.major, props.minor],
                            "memory_gib": round(props.total_memory / 2**30, 1),
                            "bf16": modern, "tf32": modern, "matmul": []}
    device = torch.device("cuda", index)
    kinds = [(1000, "fp32"), (4096, "fp32")] + [(4096, k) for k in ("tf32", "bf16") if modern]
    try:
        for n, kind in kinds:
            info["matmul"].append(_matmul(device, n, kind, references))
    except Exception as e:  # e.g. "no kernel image is available for execution on the device"
        info["error"] = f"{type(e).__name__}: {e}"
    return info


def _cpu_bf16() -> dict[str, Any]:
    """Whether the CPU has bf16 units (AMX tiles or AVX512-BF16), and a bf16 product timed beside fp32's: the
    recipes that train in bf16-mixed on a CPU (configs/fashion_mnist.yaml) are fast only with those units."""
    import torch

    def has(unit: str) -> bool:  # torch.cpu's probes are private: a torch without one reports "no"
        probe = getattr(torch.cpu, f"_is_{unit}_supported", None)
        return bool(probe()) if probe else False

    return {"units": {unit: has(unit) for unit in ("amx_tile", "avx512_bf16")},
            "matmul": _matmul(torch.device("cpu"), 1000, "bf16", {})}


def probe_torch() -> None:
    """The child's job: torch's CUDA build, the devices it sees, and a compute check on each."""
    import torch
    import torch.distributed as dist

    with warnings.catch_warnings(record=True) as caught:  # torch explains driver/arch problems as warnings
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
        references: dict = {}
        devices = [_device(i, references) for i in range(torch.cuda.device_count())] if available else []
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    result = {
        "torch": torch.__version__, "cuda_build": torch.version.cuda, "hip": torch.version.hip,
        "cudnn": f"{cudnn // 10000}.{cudnn // 100 % 100}.{cudnn % 100}" if cudnn else None,
        "arch_list": torch.cuda.get_arch_list() if torch.version.cuda else [],
        "cuda_available": available, "warnings": sorted({str(w.message) for w in caught}),
        "devices": devices,
        "gloo_available": dist.is_gloo_available(), "nccl_available": dist.is_nccl_available(),
        "nccl_version": ".".join(map(str, torch.cuda.nccl.version())) if devices else None,
        # with no GPU the CPU is the training device, so it gets the compute check
        "cpu_matmul": None if devices else _matmul(torch.device("cpu"), 1000, "fp32", {}),
        "cpu_bf16": None if devices else _cpu_bf16(),
    }
    emit(result)


def allreduce_worker() -> None:
    """One rank of a real 2-process all-reduce; RANK, WORLD_SIZE, MASTER_ADDR/PORT come from the env."""
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    # Lightning's DDP uses nccl on GPUs and gloo on CPUs; nccl needs a GPU per rank.
    backend = "nccl" if torch.cuda.device_count() >= world else "gloo"
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    start = time.perf_counter()
    dist.init_process_group(backend, rank=rank, world_size=world,
                            timeout=timedelta(seconds=float(os.environ[TIMEOUT_ENV])))
    value = torch.tensor([float(rank + 1)], device=device)
    dist.all_reduce(value)
    dist.destroy_process_group()
    emit({"rank": rank, "pid": os.getpid(), "backend": backend, "sum": value.item(),
          "seconds": time.perf_counter() - start})
