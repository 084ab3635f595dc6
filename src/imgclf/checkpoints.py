"""Reading a Lightning checkpoint file, with one clear error for each usual mistake (missing, unreadable).

Shared by training (`--ckpt_path`) and deployment (export.py, verify_onnx.py); each passes the sentence
that tells its own user how to fix the mistake.
"""

from __future__ import annotations

from pathlib import Path

import torch

from imgclf.errors import UserError


def read_checkpoint(path: str | Path, fix: str) -> dict:
    """The checkpoint's contents (on the CPU); `fix` ends each error message."""
    if not Path(path).is_file():
        raise UserError(f"Checkpoint {path} does not exist. {fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated zip or a random file: torch raises many types
        raise UserError(f"Cannot read checkpoint {path} ({type(e).__name__}: {e}). It is corrupt or not a "
                        f"Lightning checkpoint. {fix}") from e
