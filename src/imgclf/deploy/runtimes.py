"""The same ONNX file in several runtimes: ONNX Runtime, onnx's reference evaluator, OpenCV's DNN module.

A deployer may serve the model with any of them, so verification compares each with PyTorch under the
same rule (numpy's allclose: |a - b| <= ATOL + RTOL * |b|, and identical top-1). Torch-free: it also runs
in an environment holding only an older onnxruntime. A runtime that is not installed, or that cannot load
or run the graph (an operator it lacks), is reported with its own error rather than failing the others.
Each runtime runs in a child process: OpenCV 5.0's DNN module crashed (SIGSEGV) on one of our networks,
and a crash must cost one line of the report, not the whole verification.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from imgclf.deploy.metadata import INPUT_NAME

RTOL, ATOL = 1e-3, 1e-5


def compare_logits(logits: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    diff = np.abs(logits.astype(np.float64) - reference)
    scale = np.abs(reference.astype(np.float64))
    # Relative difference only where the logit is not ~0 (dividing by ~0 says nothing); the pass rule
    # is allclose's |a - b| <= atol + rtol * |b|, which covers both.
    relative = diff[scale > ATOL] / scale[scale > ATOL]
    # Counted as "not within" rather than "beyond": a NaN compares false both ways and must fail.
    return {"max_abs_diff": float(diff.max()), "max_rel_diff": float(relative.max(initial=0.0)),
            "values_out_of_tolerance": int((~(diff <= ATOL + RTOL * scale)).sum())}


def run_onnxruntime(model_path: Path, images: np.ndarray) -> tuple[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return f"onnxruntime {ort.__version__}", session.run(None, {INPUT_NAME: images})[0]


def run_onnx_reference(model_path: Path, images: np.ndarray) -> tuple[str, np.ndarray]:
    import onnx
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(str(model_path))
    return f"onnx {onnx.__version__} ReferenceEvaluator", evaluator.run(None, {INPUT_NAME: images})[0]


def run_opencv_dnn(model_path: Path, images: np.ndarray) -> tuple[str, np.ndarray]:
    import cv2

    net = cv2.dnn.readNetFromONNX(str(model_path))
    net.setInput(np.ascontiguousarray(images), INPUT_NAME)
    return f"OpenCV {cv2.__version__} DNN", np.asarray(net.forward())


RUNTIMES: dict[str, Callable[[Path, np.ndarray], tuple[str, np.ndarray]]] = {
    "onnxruntime": run_onnxruntime,
    "onnx_reference": run_onnx_reference,
    "opencv_dnn": run_opencv_dnn,
}


def run_isolated(name: str, model_path: Path, images: np.ndarray) -> tuple[str, np.ndarray]:
    # spawn, not fork: a forked child would inherit the parent's threads (ONNX Runtime's, torch's) mid-state.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(RUNTIMES[name], model_path, images).result()


def runtime_parity(model_path: Path | str, images: np.ndarray, reference: np.ndarray,
                   runtimes: tuple[str, ...] = tuple(RUNTIMES)) -> dict[str, dict]:
    """Per runtime: {"runtime": name and version, "ok", figures} or {"ok": False, "error": why it did not run}.

    `reference`: the expected logits (PyTorch's) of `images`, float32 [N, C, H, W] raw pixels.
    """
    results = {}
    for name in runtimes:
        try:
            version, logits = run_isolated(name, Path(model_path), images)
        except BrokenProcessPool:
            results[name] = {"ok": False, "error": "the runtime crashed (its process died, e.g. a segmentation "
                                                   "fault) while loading or running the model"}
            continue
        except ImportError as e:
            results[name] = {"ok": False, "error": f"not installed ({e})"}
            continue
        except Exception as e:  # each runtime raises its own types for an operator it lacks
            results[name] = {"ok": False, "error": f"{type(e).__name__}: {str(e).strip()[:300]}"}
            continue
        if logits.shape != reference.shape:
            results[name] = {"runtime": version, "ok": False, "error": f"output shape {logits.shape}, "
                             f"expected {reference.shape}"}
            continue
        figures = compare_logits(logits, reference)
        top1_agreement = float((logits.argmax(1) == reference.argmax(1)).mean())
        results[name] = {"runtime": version, "images": len(images), **figures, "top1_agreement": top1_agreement,
                         "ok": figures["values_out_of_tolerance"] == 0 and top1_agreement == 1.0}
    return results


def format_parity(results: dict[str, dict]) -> str:
    lines = []
    for name, r in results.items():
        if "error" in r:
            lines.append(f"  {name}: {'FAILED' if 'runtime' in r else 'did not run'}: {r['error']}")
        else:
            lines.append(f"  {name} ({r['runtime']}): {'ok' if r['ok'] else 'FAILED'}, max abs diff "
                         f"{r['max_abs_diff']:.3g}, top-1 agreement {r['top1_agreement']:.2%} on {r['images']} images")
    return "\n".join(lines)
