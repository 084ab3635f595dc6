"""Optional int8 copy of model.onnx through ONNX Runtime's static quantization, written to its own file.

Static (calibrated) rather than dynamic quantization: dynamic quantization suits MatMul-heavy models
(transformers, LSTMs); for convolutions it emits ConvInteger, which ONNX Runtime's CPU kernels run slowly,
and it re-measures activation ranges on every call. Static QDQ quantization measures the ranges once on
calibration images (the validation split, never the test split it is judged on) and quantizes weights
per output channel, which keeps a CNN's accuracy close to float.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from imgclf.atomic import atomic_path
from imgclf.deploy.export import weights_sha256
from imgclf.deploy.metadata import INPUT_NAME

CALIBRATION_BATCH = 32


class ImageBatches(CalibrationDataReader):
    def __init__(self, images: np.ndarray) -> None:
        self.batches = iter(np.array_split(images, max(1, len(images) // CALIBRATION_BATCH)))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize_int8(model_path: Path, output: Path, calibration: np.ndarray) -> Path:
    """Write an int8 copy of `model_path` to `output`, with the float model's metadata (hash updated)."""
    with tempfile.TemporaryDirectory() as tmp:
        prepared, quantized_path = Path(tmp) / "prepared.onnx", Path(tmp) / "quantized.onnx"
        # Shape inference + graph optimization first, as ONNX Runtime's quantization guide asks.
        quant_pre_process(str(model_path), str(prepared))
        quantize_static(str(prepared), str(quantized_path), ImageBatches(calibration),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
        source, quantized = onnx.load(str(model_path)), onnx.load(str(quantized_path))
    props = {p.key: p.value for p in source.metadata_props}
    props["weights_sha256"] = weights_sha256(quantized)
    props["quantization"] = "int8 static QDQ (onnxruntime.quantization), per-channel weights"
    del quantized.metadata_props[:]
    onnx.helper.set_model_props(quantized, props)
    quantized.doc_string = source.doc_string
    with atomic_path(output, "int8 model") as partial:
        onnx.save(quantized, str(partial))
    return output
