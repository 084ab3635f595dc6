"""Loading a training checkpoint for export and verification, with clear errors for the usual mistakes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from imgclf.checkpoints import check_finite_weights, read_checkpoint
from imgclf.data import ImageDataModule
from imgclf.errors import UserError
from imgclf.model import ImageClassifier

DEFAULT_CHECKPOINT = "runs/latest/best.ckpt"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Checkpoint:
    path: Path
    model: ImageClassifier  # in eval mode, on the CPU
    datamodule_hparams: dict  # what LightningCLI saved about the data (dataset, root, split seed, ...)
    sha256: str

    def test_metrics(self) -> dict[str, float]:
        """The run's test metrics (metrics.json next to the checkpoint), empty when absent."""
        metrics = self.path.parent / "metrics.json"
        if not metrics.is_file():
            return {}
        return {k: float(v) for k, v in json.loads(metrics.read_text()).items() if k.startswith("test/")}

    def datamodule(self, dataset: str) -> ImageDataModule:
        """The DataModule the model was trained with, for its real test split.

        `dataset` is the fallback for checkpoints saved without datamodule hyperparameters.
        """
        hparams = {k: v for k, v in self.datamodule_hparams.items() if not k.startswith("_")}
        hparams.setdefault("dataset", dataset)
        return ImageDataModule(**hparams)


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    raw = read_checkpoint(path, "Train a model first (`uv run python main.py`, which writes runs/<run>/best.ckpt "
                                "and points runs/latest at it) or pass --ckpt runs/<run>/best.ckpt.")
    hparams = raw.get("hyper_parameters") if isinstance(raw, dict) else None
    if not isinstance(hparams, dict) or "network" not in hparams or "state_dict" not in raw:
        raise UserError(f"{path} is not a checkpoint of this project's ImageClassifier (no state_dict or "
                        f"model hyperparameters in it); pass a best.ckpt written by main.py.")
    check_finite_weights(raw, path)
    try:
        model = ImageClassifier.load_from_checkpoint(path, map_location="cpu")
    except RuntimeError as e:  # load_state_dict: missing, unexpected or differently shaped weights
        first_line = str(e).strip().splitlines()[0:2]
        raise UserError(
            f"The weights in {path} do not fit the network it names ({hparams['network']!r}, "
            f"{hparams.get('num_classes')} classes, {hparams.get('in_channels')} channels): "
            f"{' '.join(first_line)[:300]}. The checkpoint is of another network or was edited; "
            f"pass the best.ckpt of the run you want to export."
        ) from e
    datamodule_hparams = dict(raw.get("datamodule_hyper_parameters") or {})
    return Checkpoint(path, model.eval(), datamodule_hparams, file_sha256(path))
