"""Which ONNX Runtime releases load which files, and the error a deployer gets when theirs is too old.

Torch-free and onnx-free: the predictor and the app use it where only onnxruntime is installed.
"""

from __future__ import annotations

import re
from pathlib import Path

import onnxruntime as ort

from imgclf.errors import UserError

# The first onnxruntime release that implements each ONNX opset / reads each IR version (ONNX Runtime's
# compatibility table). An older release refuses the file at load time.
FIRST_ONNXRUNTIME_FOR_OPSET = {18: "1.14", 19: "1.15", 20: "1.17", 21: "1.18"}
FIRST_ONNXRUNTIME_FOR_IR = {8: "1.14", 9: "1.15", 10: "1.18"}
# export.py's default (deploy/export.py says why): onnxruntime >= 1.17 and OpenCV 5's DNN module run it.
DEFAULT_OPSET = 20
OLDEST_OPSET = 18  # the lowest opset torch's dynamo exporter writes: onnxruntime >= 1.14

# What onnxruntime says when a file is newer than it (seen with onnxruntime 1.17.3).
_IR_TOO_NEW = re.compile(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)")
_OPSET_TOO_NEW = re.compile(r"Opset (\d+) is under development.*?is till opset (\d+)", re.DOTALL)


def minimum_onnxruntime(opset: int) -> str:
    """The oldest onnxruntime release that loads a file of this opset (at its lowest IR version)."""
    return FIRST_ONNXRUNTIME_FOR_OPSET.get(opset, "a release newer than 1.18")


def too_old_runtime_error(message: str, model_path: Path | str) -> UserError | None:
    """A clear error when onnxruntime refused `model_path` because the runtime is older than the file;
    None when `message` is about something else (a corrupt or foreign file)."""
    if match := _IR_TOO_NEW.search(message):
        what = f"IR version {match[1]}; this release reads IR version {match[2]} at most"
        needed = FIRST_ONNXRUNTIME_FOR_IR.get(int(match[1]), "a newer release")
    elif match := _OPSET_TOO_NEW.search(message):
        what = f"opset {match[1]}; this release implements opset {match[2]} at most"
        needed = FIRST_ONNXRUNTIME_FOR_OPSET.get(int(match[1]), "a newer release")
    else:
        return None
    return UserError(
        f"{model_path} is a valid model written for a newer ONNX Runtime than the installed "
        f"onnxruntime {ort.__version__}: the file has {what}. Either upgrade (onnxruntime {needed} or newer "
        f"loads it: `pip install -U onnxruntime`), or export it again for this runtime: `uv run python export.py "
        f"--output {model_path}` writes opset {DEFAULT_OPSET} (onnxruntime {minimum_onnxruntime(DEFAULT_OPSET)} "
        f"and newer), and adding `--opset {OLDEST_OPSET}` reaches back to onnxruntime "
        f"{minimum_onnxruntime(OLDEST_OPSET)}."
    )
