"""What model.onnx tells a deployer, stored as ONNX `metadata_props` (string key -> string value).

Shared by the exporter (writes it) and the torch-free predictor (reads it), so it imports neither torch
nor onnx: values are plain strings, lists and dicts as JSON.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields

from imgclf.errors import UserError

INPUT_NAME, OUTPUT_NAME = "images", "logits"
# One line for humans who open the file in Netron or read the metadata with any ONNX tool.
INPUT_DESCRIPTION = ("images: float32 [batch, channels, height, width], RAW pixel values 0-255 (RGB or "
                     "grayscale as `in_channels` says); normalization with mean/std is inside the graph. "
                     "logits: float32 [batch, num_classes]; softmax gives probabilities.")


@dataclass(frozen=True)
class ModelMetadata:
    class_names: list[str]
    image_size: list[int]  # [height, width]
    in_channels: int
    mean: list[float]  # 0-1 scale, per channel; already applied inside the graph (for information)
    std: list[float]
    dataset: str
    network: str
    checkpoint: str  # where the weights came from, so verify_onnx.py can find it again
    checkpoint_sha256: str
    weights_sha256: str  # of the exported graph's initializers: a weight edited after export is caught
    # The preprocessing recipe. Above the input side (image-file datasets: 8/7 of it): evaluation squashes
    # the whole image to a base_size square, then takes its centre. Equal to it (in-memory datasets, whose
    # images come at the input size): centre-crop to the input's aspect, resize. None: exported before
    # this field existed, treated like the latter.
    base_size: int | None = None
    test_metrics: dict[str, float] = field(default_factory=dict)  # the run's metrics.json, when present
    input_format: str = "float32 NCHW raw pixels 0-255, normalization inside the graph"
    # The model card's provenance (deploy/card.py); absent in files exported before the card existed.
    dataset_version: dict[str, str] = field(default_factory=dict)  # {"dvc_file", "md5"}: data/<dataset>.dvc
    git_commit: str = ""  # of the code at export, "+dirty" when tracked files had uncommitted changes
    training_config: str = ""  # the run's config.yaml

    def to_props(self) -> dict[str, str]:
        return {key: value if isinstance(value, str) else json.dumps(value)
                for key, value in asdict(self).items()}

    @classmethod
    def from_props(cls, props: dict[str, str], source: str) -> ModelMetadata:
        """Parse metadata_props; `source` (the file name) only serves the error message."""
        # A field with a default may be absent: files exported before it existed still load.
        missing = [f.name for f in fields(cls) if f.name not in props
                   and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise UserError(
                f"{source} lacks the metadata this project's tools need ({', '.join(missing)}), so it was "
                f"not written by export.py (or was re-saved without its metadata). Export it again with "
                f"`uv run python export.py --ckpt runs/<run>/best.ckpt --output {source}`."
            )
        # Fields annotated str are stored as they are, the rest as JSON. f.type is the annotation's text
        # (this module has `from __future__ import annotations`), hence the comparison with "str".
        strings = {f.name for f in fields(cls) if f.type == "str"}
        try:
            values = {name: props[name] if name in strings else json.loads(props[name])
                      for name in cls.__dataclass_fields__ if name in props}
        except json.JSONDecodeError as e:
            raise UserError(f"{source} holds unreadable metadata ({e}); export it again with "
                            f"export.py.") from e
        return cls(**values)
