"""Checkpoint files: reading them with one clear error per usual mistake, writing them atomically, and refusing
ones that cannot be used (non-finite weights, a checkpoint of another run's data or network).

Shared by training (`--ckpt_path`) and deployment (export.py, verify_onnx.py); each passes the sentence
that tells its own user how to fix the mistake.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from imgclf.atomic import atomic_path
from imgclf.errors import UserError, not_a_file

# What must match between a checkpoint and the run that resumes it: the model's description of its data.
RESUME_MUST_MATCH = ["network", "num_classes", "in_channels", "image_size", "class_names"]


def read_checkpoint(path: str | Path, fix: str) -> dict:
    """The checkpoint's contents (on the CPU); `fix` ends each error message."""
    if problem := not_a_file(path):
        raise UserError(f"Checkpoint {path} {problem}. {fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated zip or a random file: torch raises many types
        raise UserError(f"Cannot read checkpoint {path} ({type(e).__name__}: {e}). It is corrupt or not a "
                        f"Lightning checkpoint. {fix}") from e


def non_finite_weights(state_dict: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an infinity."""
    return [name for name, value in state_dict.items()
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not value.isfinite().all()]


def check_finite_weights(raw: dict, path: str | Path) -> None:
    """Refuse a checkpoint whose weights hold NaN or infinity: a diverged run's, useless for anything."""
    bad = non_finite_weights(raw.get("state_dict", {}))
    if bad:
        raise UserError(f"Checkpoint {path} holds non-finite weights (NaN or infinity in {len(bad)} tensors, e.g. "
                        f"{bad[:3]}): the run that wrote it diverged. Retrain with a lower --model.lr and use that "
                        f"run's best.ckpt.")


def _as_list(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value  # a YAML round trip turns tuples into lists


def _described(hparams: dict, dataset: object) -> str:
    size = "x".join(str(s) for s in hparams.get("image_size") or [])
    return (f"dataset {dataset!r}, network {hparams.get('network')!r}, {hparams.get('num_classes')} classes "
            f"{hparams.get('class_names')}, {hparams.get('in_channels')}-channel {size} images")


def check_resumable(path: str | Path, model: torch.nn.Module, dataset: str) -> dict:
    """Refuse, before training starts, a checkpoint that is missing, unreadable, diverged, or of another run:
    another dataset, class list, network or input shape. Returns the checkpoint's contents. Whether its weights
    fit the network is checked once, by the model itself as Lightning restores it (on_load_checkpoint)."""
    raw = read_checkpoint(path, "Pass a .ckpt file written by a run (for example runs/latest/last.ckpt) "
                                "to --ckpt_path.")
    raw = raw if isinstance(raw, dict) else {}
    check_finite_weights(raw, path)
    saved = dict(raw.get("hyper_parameters") or {})
    saved_dataset = (raw.get("datamodule_hyper_parameters") or {}).get("dataset", dataset)
    current = {key: model.hparams.get(key) for key in RESUME_MUST_MATCH}
    differs = [key for key in RESUME_MUST_MATCH if key in saved and _as_list(saved[key]) != _as_list(current[key])]
    if differs or saved_dataset != dataset:
        raise UserError(
            f"Checkpoint {path} belongs to another run: it was trained on {_described(saved, saved_dataset)}, "
            f"this run has {_described(current, dataset)}. A checkpoint resumes only the run it came from: resume "
            f"with that run's config (--config <its run folder>/config.yaml), or start a new run without "
            f"--ckpt_path."
        )
    check_same_optimizer(saved, model.hparams, path)
    return raw


def check_same_optimizer(saved: dict, current: dict, path: str | Path) -> None:
    """A resumed run restores the optimizer's state (momentum buffers, Adam moments): another optimizer cannot
    read it (torch's SGD fails on AdamW's state with KeyError 'momentum')."""
    if "optimizer" in saved and saved["optimizer"] != current.get("optimizer"):
        raise UserError(
            f"Checkpoint {path} was trained with --model.optimizer {saved['optimizer']}, this run asks for "
            f"{current.get('optimizer')}: resuming continues the optimizer's own state, which only the same "
            f"optimizer can read. Resume with --model.optimizer {saved['optimizer']}, or start a new run without "
            f"--ckpt_path.")


def check_max_epochs(raw: dict, max_epochs: int | None, path: str | Path) -> None:
    """Refuse resuming into a run shorter than the checkpoint's: Lightning raises a MisconfigurationException
    mid-restore, after the run folder is made."""
    epochs = raw.get("epoch")
    if max_epochs is None or max_epochs < 0 or not isinstance(epochs, int) or epochs + 1 <= max_epochs:
        return
    raise UserError(
        f"Checkpoint {path} has completed {epochs + 1} epochs, but --trainer.max_epochs is {max_epochs}: a resumed "
        f"run trains on up to max_epochs in all, so it cannot be below what the checkpoint has done. Pass "
        f"--trainer.max_epochs {epochs + 1} to only test it, or more to train further.")


class _WriteErrorRecorder:
    """A file that remembers the OSError of a failed write: torch's zip writer reports one (a full disk) only
    as "RuntimeError: unexpected pos", which loses the reason."""

    def __init__(self, file) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.file.flush()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch.save checkpointing, written beside the final name and renamed into place.

    Lightning's own writer goes through an fsspec transaction that, on a local disk, moves a file from the
    system's temporary folder (a copy across filesystems, not a rename): a SIGKILL or a full disk can then leave
    a truncated best.ckpt or last.ckpt. Here the old file stays whole until the new one is, and a full disk
    is reported as such (one UserError from imgclf.atomic).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        with atomic_path(path, "checkpoint") as temporary, open(temporary, "wb") as file:
            recorder = _WriteErrorRecorder(file)
            try:
                torch.save(checkpoint, recorder)
            except RuntimeError:
                if recorder.error is not None:
                    raise recorder.error from None
                raise
