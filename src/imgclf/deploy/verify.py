"""verify_onnx.py's logic: model.onnx against its checkpoint on the model's full test split.

Passes only when: the weights are those exported (hash in the metadata), the checkpoint is the one exported,
ONNX Runtime's logits match PyTorch's within rtol 1e-3 / atol 1e-5 (numpy's allclose rule), top-1
predictions agree on every test image, both accuracies are equal, and batch sizes 1, 7 and 64 run through
the dynamic batch axis with the same results. Latency (PyTorch eager vs ONNX Runtime on CPU) is reported,
never judged: it depends on the machine and its load.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from imgclf.atomic import write_text
from imgclf.data.datamodule import ImageDataModule
from imgclf.deploy.card import evaluation_figures, write_model_card
from imgclf.deploy.export import weights_sha256
from imgclf.deploy.from_checkpoint import DEFAULT_CHECKPOINT, Checkpoint, file_sha256, load_checkpoint
from imgclf.deploy.latency import format_latency, latency_table, timing_session
from imgclf.deploy.metadata import INPUT_NAME, ModelMetadata
from imgclf.deploy.predictor import open_session, run_onnx
from imgclf.deploy.quantize import quantize_int8
from imgclf.deploy.runtimes import ATOL, RTOL, compare_logits, format_parity, runtime_parity
from imgclf.errors import UserError

DYNAMIC_BATCH_SIZES = (1, 7, 64)
LATENCY_BATCH_SIZES = (1, 64)
EVAL_BATCH = 256
CALIBRATION_IMAGES = 512
# Images for the other runtimes: 64 at up to 32x32 px, fewer (at least 4) for larger inputs, because onnx's
# reference evaluator is plain numpy and its time grows with the pixels.
PARITY_IMAGES, PARITY_PIXELS = 64, 64 * 32 * 32
OTHER_RUNTIMES = ("onnx_reference", "opencv_dnn")  # ONNX Runtime itself is checked on the whole split


def resolve_checkpoint(ckpt: str | None, metadata: ModelMetadata) -> str:
    """--ckpt, else the checkpoint recorded at export when it still exists, else runs/latest/best.ckpt."""
    if ckpt:
        return ckpt
    return metadata.checkpoint if Path(metadata.checkpoint).is_file() else DEFAULT_CHECKPOINT


def check_same_model(metadata: ModelMetadata, ckpt: Checkpoint, model_path: Path) -> None:
    """Refuse to compare against a checkpoint of another network or dataset: the figures would be noise."""
    hp = ckpt.model.hparams
    ours = (metadata.network, metadata.class_names, list(metadata.image_size), metadata.in_channels)
    theirs = (hp.network, list(ckpt.model.class_names), list(hp.image_size), hp.in_channels)
    if ours != theirs:
        # Only what differs, with both values: a renamed class leaves network, count and input alike.
        names = ("network", "class names", "input size", "input channels")
        differs = "; ".join(f"{name}: {a} in the model, {b} in the checkpoint"
                            for name, a, b in zip(names, ours, theirs, strict=True) if a != b)
        raise UserError(
            f"{model_path} was not exported from {ckpt.path} ({differs}). Pass the checkpoint it came from "
            f"with --ckpt (export recorded {metadata.checkpoint})."
        )


def evaluation_arrays(datamodule: ImageDataModule, split: str,
                      limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [N, C, H, W] raw pixels, labels) of a split as evaluation feeds them to the model (an unreadable
    image file named in a UserError or, with --data.skip_bad_images, left out). `limit`: only the first images."""
    batches = list(datamodule.evaluation_batches(split, limit))
    images = torch.cat([b[0] for b in batches]) if batches else torch.zeros(0)
    labels = torch.cat([b[1] for b in batches]) if batches else torch.zeros(0)
    if not len(labels):
        raise UserError(f"The {split} split of the {datamodule.spec.name} data in {datamodule.root} holds no "
                        f"readable images, so there is nothing to verify the model on. For an image folder, "
                        f"train with a test/ folder or --data.test_fraction above 0.")
    return images.float().numpy(), labels.numpy()


@torch.inference_mode()
def run_torch(network: torch.nn.Module, images: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
    return np.concatenate([network(torch.from_numpy(images[i:i + batch])).numpy()
                           for i in range(0, len(images), batch)])


def check_dynamic_batches(session: ort.InferenceSession, images: np.ndarray,
                          torch_logits: np.ndarray) -> dict[str, dict]:
    results = {}
    for size in DYNAMIC_BATCH_SIZES:
        index = np.arange(size) % len(images)  # wraps around when the test split is smaller
        logits, expected = session.run(None, {INPUT_NAME: images[index]})[0], torch_logits[index]
        if logits.shape != expected.shape:  # a graph whose batch axis is not really dynamic
            results[str(size)] = {"ok": False, "max_abs_diff": None}
            continue
        figures = compare_logits(logits, expected)
        results[str(size)] = {"ok": figures["values_out_of_tolerance"] == 0,
                              "max_abs_diff": figures["max_abs_diff"]}
    return results


def measure_latency(network: torch.nn.Module, models: dict[str, Path], images: np.ndarray, threads: int,
                    repeats: int) -> dict[str, dict[str, float]]:
    """PyTorch eager vs each ONNX file, all on `threads` CPU threads."""
    runners = {"torch_eager": lambda x: run_torch(network, x, batch=len(x))}
    for name, path in models.items():
        session = timing_session(str(path), threads)
        runners[name] = lambda x, session=session: session.run(None, {INPUT_NAME: x})
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return latency_table(runners, images, LATENCY_BATCH_SIZES, repeats)
    finally:
        torch.set_num_threads(previous)


def int8_figures(model_path: Path, float_logits: np.ndarray, labels: np.ndarray, images: np.ndarray,
                 calibration: np.ndarray) -> dict:
    output = model_path.with_name(model_path.stem + ".int8.onnx")
    quantize_int8(model_path, output, calibration)
    session, _ = open_session(output)
    logits = run_onnx(session, images, EVAL_BATCH)
    accuracy = float((logits.argmax(1) == labels).mean())
    float_accuracy = float((float_logits.argmax(1) == labels).mean())
    figures = {"model": str(output), "size_kib": round(output.stat().st_size / 1024, 1),
               "float_size_kib": round(model_path.stat().st_size / 1024, 1), "accuracy": accuracy,
               "accuracy_change": accuracy - float_accuracy,
               "top1_agreement_with_float": float((logits.argmax(1) == float_logits.argmax(1)).mean())}
    return figures


def verify(model: str | Path = "model.onnx", ckpt: str | None = None, report: str | Path = "onnx_report.json",
           quantize: bool = False, threads: int = 1, latency_repeats: int = 50) -> dict:
    """Run every check, print a readable report, write it as JSON; the report's `passed` says the verdict."""
    if threads < 1:
        raise UserError(f"--threads must be 1 or more, got {threads}.")
    model_path = Path(model)
    session, metadata = open_session(model_path)
    proto = onnx.load(str(model_path))
    checkpoint = load_checkpoint(resolve_checkpoint(ckpt, metadata))
    check_same_model(metadata, checkpoint, model_path)
    datamodule = checkpoint.datamodule(metadata.dataset)
    datamodule.setup("test")
    images, labels = evaluation_arrays(datamodule, "test")
    network = checkpoint.model.network_module().eval()

    torch_logits, onnx_logits = run_torch(network, images), run_onnx(session, images, EVAL_BATCH)
    torch_top1, onnx_top1 = torch_logits.argmax(1), onnx_logits.argmax(1)
    figures = compare_logits(onnx_logits, torch_logits)
    figures |= {
        "top1_agreement": float((torch_top1 == onnx_top1).mean()),
        "top1_disagreements": int((torch_top1 != onnx_top1).sum()),
        "onnx_accuracy": float((onnx_top1 == labels).mean()),
        "torch_accuracy": float((torch_top1 == labels).mean()),
    }
    batches = check_dynamic_batches(session, images, torch_logits)
    # The other runtimes on a sample: onnx's reference evaluator is plain numpy, slow on a whole split.
    sample = max(4, min(PARITY_IMAGES, PARITY_PIXELS // (images.shape[2] * images.shape[3])))
    runtimes = runtime_parity(model_path, images[:sample], torch_logits[:sample], OTHER_RUNTIMES)
    checks = {
        "weights_unchanged_since_export": weights_sha256(proto) == metadata.weights_sha256,
        "checkpoint_is_the_exported_one": checkpoint.sha256 == metadata.checkpoint_sha256,
        "logits_within_tolerance": figures["values_out_of_tolerance"] == 0,
        "top1_identical": figures["top1_disagreements"] == 0,
        "accuracy_equal": figures["onnx_accuracy"] == figures["torch_accuracy"],
        "dynamic_batch_sizes": all(b["ok"] for b in batches.values()),
        # A runtime that is not installed or lacks an operator is reported, not judged; one that runs the
        # model must give the same answers.
        "other_runtimes_agree": all(r["ok"] for r in runtimes.values() if "runtime" in r),
    }

    timed = {"onnxruntime": model_path}
    int8 = None
    if quantize:
        calibration, _ = evaluation_arrays(datamodule, "val" if len(datamodule.splits["val"]) else "train",
                                           CALIBRATION_IMAGES)
        int8 = int8_figures(model_path, onnx_logits, labels, images, calibration)
        timed["onnxruntime_int8"] = Path(int8["model"])
    latency = measure_latency(network, timed, images, threads, latency_repeats)

    test = evaluation_figures(onnx_logits, labels, len(metadata.class_names))
    result = {"passed": all(checks.values()), "model": str(model_path), "checkpoint": str(checkpoint.path),
              "model_sha256": file_sha256(model_path), "opset": opset_of(proto), "ir_version": proto.ir_version,
              "dataset": metadata.dataset, "network": metadata.network, "test_images": len(labels),
              "rtol": RTOL, "atol": ATOL, **figures, "batch_sizes": batches, "runtimes": runtimes,
              "expected_calibration_error": test["expected_calibration_error"],
              "per_class_accuracy": dict(zip(metadata.class_names, test["per_class_accuracy"], strict=True)),
              "checks": checks, "latency_ms": latency, "latency_threads": threads}
    if int8 is not None:
        result["int8"] = int8
    result["model_card"] = str(write_model_card(model_path, metadata, result, test))
    write_text(report, json.dumps(result, indent=2) + "\n", "verification report")
    print(format_report(result))
    print(f"\nReport written to {report}; model card {result['model_card']}")
    return result


def opset_of(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def format_report(r: dict) -> str:
    lines = [f"ONNX verification of {r['model']} against {r['checkpoint']}",
             f"  {r['network']} on the {r['dataset']} test split: {r['test_images']} images",
             f"  logits: max abs diff {r['max_abs_diff']:.3g}, max rel diff {r['max_rel_diff']:.3g}, "
             f"{r['values_out_of_tolerance']} values outside rtol {r['rtol']:g} / atol {r['atol']:g}",
             f"  top-1 agreement {r['top1_agreement']:.2%} ({r['top1_disagreements']} disagreements); "
             f"accuracy ONNX {r['onnx_accuracy']:.4f} vs PyTorch {r['torch_accuracy']:.4f}",
             f"  expected calibration error {r['expected_calibration_error']:.4f}; opset {r['opset']}, "
             f"IR version {r['ir_version']}",
             "  other runtimes (first images of the split):", format_parity(r["runtimes"]),
             "  batch sizes: " + ", ".join(f"{size} {'ok' if b['ok'] else 'FAILED'}"
                                           for size, b in r["batch_sizes"].items()),
             "", "Checks:"]
    lines += [f"  [{'pass' if ok else 'FAIL'}] {name.replace('_', ' ')}" for name, ok in r["checks"].items()]
    if "int8" in r:
        q = r["int8"]
        lines += ["", f"int8 copy {q['model']}: {q['size_kib']} KiB (float {q['float_size_kib']} KiB), "
                      f"accuracy {q['accuracy']:.4f} ({q['accuracy_change']:+.4f}), top-1 agreement "
                      f"with float {q['top1_agreement_with_float']:.2%} (reported, not judged)"]
    lines += ["", f"Latency, median ms per batch on CPU ({r['latency_threads']} thread(s); ratios below 1: "
                  f"faster than PyTorch eager):", format_latency(r["latency_ms"]),
              "", "PASSED" if r["passed"] else "FAILED: see the checks marked FAIL above"]
    return "\n".join(lines)
