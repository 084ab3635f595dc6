"""Latency of inference runners (PyTorch eager, ONNX Runtime, ...) on the same batches: median of repeats.

The median, not the mean: on a shared machine a few runs stall behind other processes, and the median
ignores them while the mean does not. Every runner gets the same fixed thread count (default 1): with
more threads than free cores, PyTorch's OpenMP barriers wait on descheduled threads and one batch-1 call
took 140-550 ms instead of 0.5 ms here, so multi-thread figures on a busy machine measure the scheduler.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort

from imgclf.deploy.predictor import session_options

Runner = Callable[[np.ndarray], object]  # runs a float32 [N, C, H, W] batch to completion


def timing_session(model_path: str, threads: int) -> ort.InferenceSession:
    return ort.InferenceSession(model_path, session_options(threads), providers=["CPUExecutionProvider"])


def median_ms(runners: dict[str, Runner], batch: np.ndarray, repeats: int,
              warmup: int = 3) -> dict[str, float]:
    """Median milliseconds per runner. The runners take turns within each repeat, so a burst of load from
    other processes slows them alike instead of skewing whichever happened to be running."""
    for run in runners.values():
        for _ in range(warmup):  # first calls allocate buffers and pick kernels
            run(batch)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run(batch)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1000.0 for name, t in times.items()}


def latency_table(runners: dict[str, Runner], images: np.ndarray, batch_sizes: tuple[int, ...],
                  repeats: int) -> dict[str, dict[str, float]]:
    """{"batch_1": {"<runner>_ms": median, ..., "<runner>_over_<first runner>": ratio}, ...}."""
    baseline = next(iter(runners))
    table = {}
    for size in batch_sizes:
        batch = np.resize(images, (size, *images.shape[1:]))  # repeats images when the split is smaller
        medians = median_ms(runners, batch, repeats)
        row = {f"{name}_ms": round(ms, 4) for name, ms in medians.items()}
        for name in list(runners)[1:]:
            row[f"{name}_over_{baseline}"] = round(medians[name] / medians[baseline], 4)
        table[f"batch_{size}"] = row
    return table


def format_latency(table: dict[str, dict[str, float]]) -> str:
    columns = list(next(iter(table.values())))
    lines = ["batch" + "".join(f"  {c}" for c in columns)]
    for name, row in table.items():
        cells = "".join(f"  {row[c]:>{len(c)}.3f}" for c in columns)
        lines.append(name.removeprefix("batch_").rjust(5) + cells)
    return "\n".join(lines)
