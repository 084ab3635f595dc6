"""The model card: what the model is, where it came from, how well it does, and where it runs.

export.py stores the provenance in the ONNX metadata (`card_fields`): the dataset's DVC version (the md5
recorded in data/<dataset>.dvc), the git commit of the code, the training config. verify_onnx.py adds what
only a test run knows (per-class accuracy, expected calibration error, confusion matrix, parity across
runtimes, latency) and writes the whole card as `<model stem>_card.md` beside the model (model_card.md for
model.onnx), with the confusion matrix picture in `<model stem>_card/`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import torch
import yaml
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError, MulticlassConfusionMatrix

from imgclf.artifacts import save_confusion_matrix
from imgclf.atomic import write_text
from imgclf.deploy.checkpoint import Checkpoint
from imgclf.deploy.metadata import ModelMetadata

CALIBRATION_BINS = 15  # torchmetrics' default, and the usual choice in the calibration literature


def dataset_version(dataset: str, root: Path) -> dict[str, str]:
    """{"dvc_file", "md5"} from DVC's pointer to the dataset, empty when the dataset has none (digits)."""
    pointer = root / "data" / f"{dataset}.dvc"
    if not pointer.is_file():
        return {}
    outs = (yaml.safe_load(pointer.read_text()) or {}).get("outs") or [{}]
    return {"dvc_file": f"data/{dataset}.dvc", "md5": str(outs[0].get("md5", ""))}


def git_commit(root: Path) -> str:
    """HEAD's commit, with "+dirty" when tracked files differ from it; empty outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        return commit + ("+dirty" if commit and git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):  # no git installed
        return ""


def card_fields(ckpt: Checkpoint, dataset: str, root: Path | None = None) -> dict:
    """The provenance export.py writes into the metadata (ModelMetadata's card fields)."""
    root = root or Path.cwd()
    config = ckpt.path.parent / "config.yaml"
    return {"dataset_version": dataset_version(dataset, root), "git_commit": git_commit(root),
            "training_config": config.read_text() if config.is_file() else ""}


def evaluation_figures(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Per-class accuracy, expected calibration error (L1, 15 bins) and the confusion matrix (torchmetrics)."""
    preds, target = torch.from_numpy(logits).float().softmax(1), torch.from_numpy(labels).long()
    per_class = MulticlassAccuracy(num_classes, average=None)(preds, target)
    ece = MulticlassCalibrationError(num_classes, n_bins=CALIBRATION_BINS, norm="l1")(preds, target)
    confusion = MulticlassConfusionMatrix(num_classes)(preds, target)
    return {"accuracy": float((logits.argmax(1) == labels).mean()), "per_class_accuracy": per_class.tolist(),
            "expected_calibration_error": float(ece), "confusion_matrix": confusion.tolist()}


def card_path(model_path: Path) -> Path:
    return model_path.with_name(f"{model_path.stem}_card.md")


def write_model_card(model_path: Path, metadata: ModelMetadata, report: dict, figures: dict) -> Path:
    """Write the card (and its confusion matrix picture) beside the model; returns the card's path."""
    card = card_path(model_path)
    assets = card.with_suffix("")
    assets.mkdir(parents=True, exist_ok=True)
    save_confusion_matrix(torch.tensor(figures["confusion_matrix"]), metadata.class_names, assets)
    write_text(card, render_card(model_path, metadata, report, figures, f"{assets.name}/confusion_matrix.png"),
               "model card")
    return card


def render_card(model_path: Path, metadata: ModelMetadata, report: dict, figures: dict, picture: str) -> str:
    (h, w), c = metadata.image_size, metadata.in_channels
    version = metadata.dataset_version
    data_line = (f"`{metadata.dataset}`, DVC version md5 `{version['md5']}` ({version['dvc_file']})" if version
                 else f"`{metadata.dataset}` (no DVC pointer: data/{metadata.dataset}.dvc does not exist)")
    lines = [
        f"# Model card: {model_path.name}", "",
        f"Classifies {c}-channel images into {len(metadata.class_names)} classes of the `{metadata.dataset}` "
        f"dataset ({', '.join(metadata.class_names)}). Network `{metadata.network}`. Intended for images like "
        f"those of its test split; on other kinds of images its probabilities mean little.", "",
        "## Input and output", "",
        f"- input `images`: float32 [batch, {c}, {h}, {w}], raw pixel values 0-255; normalization (mean "
        f"{metadata.mean}, std {metadata.std}) is inside the graph",
        "- output `logits`: float32 [batch, classes]; softmax gives probabilities",
        f"- preprocessing: {preprocessing(metadata)}",
        f"- file sha256 `{report['model_sha256']}`; opset {report['opset']}, IR version {report['ir_version']}", "",
        "## Provenance", "",
        f"- data: {data_line}",
        f"- code: git commit `{metadata.git_commit or 'unknown'}` (at export)",
        f"- checkpoint: `{metadata.checkpoint}` (sha256 `{metadata.checkpoint_sha256}`)", "",
        "Training config:", "", "```yaml", metadata.training_config.rstrip() or "(not found)", "```", "",
        "## Test results", "",
        f"On the `{metadata.dataset}` test split, {report['test_images']} images, through ONNX Runtime:", "",
        f"- accuracy: {figures['accuracy']:.4f} (PyTorch: {report['torch_accuracy']:.4f})",
        f"- expected calibration error (L1, {CALIBRATION_BINS} bins, torchmetrics): "
        f"{figures['expected_calibration_error']:.4f}",
        "- the training run's own test metrics (its metrics.json, recorded at export): "
        + (", ".join(f"{k} {v:.4f}" for k, v in metadata.test_metrics.items()) or "not recorded"), "",
        "| class | accuracy |", "|---|---|",
        *[f"| {name} | {acc:.4f} |" for name, acc in zip(metadata.class_names, figures["per_class_accuracy"],
                                                        strict=True)],
        "", f"![Test confusion matrix]({picture})", "",
        "## Parity with PyTorch", "",
        f"Rule: |onnx - torch| <= {report['atol']:g} + {report['rtol']:g} * |torch| on every logit, identical "
        f"top-1. ONNX Runtime on the whole test split: max abs diff {report['max_abs_diff']:.3g}, top-1 "
        f"agreement {report['top1_agreement']:.2%}. Other runtimes:", "",
        "| runtime | result | max abs diff | top-1 agreement | images |", "|---|---|---|---|---|",
        *[parity_row(name, r) for name, r in report["runtimes"].items()], "",
        f"## Latency (median ms per batch, CPU, {report['latency_threads']} thread(s); machine-dependent)", "",
        "| batch | " + " | ".join(next(iter(report["latency_ms"].values()))) + " |",
        "|---|" + "---|" * len(next(iter(report["latency_ms"].values()))),
        *[f"| {size.removeprefix('batch_')} | " + " | ".join(f"{v:g}" for v in row.values()) + " |"
          for size, row in report["latency_ms"].items()],
        "", f"Verification: {'PASSED' if report['passed'] else 'FAILED'} (verify_onnx.py).", "",
    ]
    return "\n".join(lines)


def preprocessing(metadata: ModelMetadata) -> str:
    (h, w) = metadata.image_size
    if metadata.base_size and metadata.base_size > max(h, w):
        return f"resize the whole image to {metadata.base_size}x{metadata.base_size}, take the centre {h}x{w}"
    return f"centre-crop to the {h}:{w} aspect ratio, resize to {h}x{w} (bilinear)"


def parity_row(name: str, r: dict) -> str:
    if "max_abs_diff" not in r:
        return f"| {name} | did not run: {r['error'].replace('|', '/')[:160]} | | | |"
    return (f"| {r['runtime']} | {'same answers' if r['ok'] else 'DIFFERENT'} | {r['max_abs_diff']:.3g} | "
            f"{r['top1_agreement']:.2%} | {r['images']} |")
