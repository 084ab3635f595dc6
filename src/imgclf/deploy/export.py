"""Checkpoint -> model.onnx: the whole inference path (normalization + network), a dynamic batch axis, and
the metadata a deployer needs.

Exporter: the dynamo exporter (`torch.onnx.export(..., dynamo=True)`), on purpose. It is PyTorch's default
and maintained path since 2.9 (the TorchScript exporter is deprecated with torch.jit); it captures the graph
with torch.export, which checks that the trace holds for every batch size we declare dynamic rather than
specializing silently; and its onnxscript optimizer folds BatchNorm into the convolutions, so ONNX
Runtime runs fewer ops. Its cost is a slower export (seconds, not milliseconds), paid once per model.

Opset and IR version are chosen, not inherited from the installed torch: left alone, torch 2.15 writes IR
version 10, which onnxruntime up to 1.17 (early 2024, still in many serving images) refuses. The file is
stamped with the lowest IR version its opset allows. Default opset 20 (IR version 9): onnxruntime 1.17 and
newer load it, and every network the project trains gave PyTorch's answers in onnxruntime 1.17 and 1.31,
onnx's reference evaluator and OpenCV 5.0's DNN module (src/imgclf/bench/onnx_runtimes.py). Opset 18 (the lowest the
dynamo exporter writes; asked for 17 it falls back to 18) reaches back to onnxruntime 1.14, but it spells
GELU (airbench, ConvNeXt) as Erf arithmetic, on which OpenCV 5.0 crashed; opset 20 has a Gelu operator.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
import torch
from onnx import numpy_helper

from imgclf.atomic import atomic_path, storage_error
from imgclf.data.catalog import DATASETS
from imgclf.deploy.card import card_fields
from imgclf.deploy.compat import DEFAULT_OPSET, OLDEST_OPSET, minimum_onnxruntime
from imgclf.deploy.from_checkpoint import Checkpoint, load_checkpoint
from imgclf.deploy.metadata import INPUT_DESCRIPTION, INPUT_NAME, OUTPUT_NAME, ModelMetadata
from imgclf.errors import UserError


def weights_sha256(model: onnx.ModelProto) -> str:
    """Hash of every initializer (name, dtype, shape, values), independent of their order in the file."""
    digest = hashlib.sha256()
    for init in sorted(model.graph.initializer, key=lambda t: t.name):
        array = numpy_helper.to_array(init)
        digest.update(f"{init.name}|{array.dtype}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def recorded_path(path: Path) -> str:
    """The checkpoint's real path (runs/latest moves on with the next run), relative to here when inside."""
    real = path.resolve()
    try:
        return str(real.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(real)


def ir_version_for(opset: int) -> int:
    """The lowest IR version that allows `opset`: the widest range of runtimes that load the file."""
    return onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)], ignore_unknown=True)


def onnx_graph(network: torch.nn.Module, in_channels: int, image_size: list[int], opset: int) -> onnx.ModelProto:
    """The network (raw pixels in, logits out, dynamic batch axis) as ONNX at exactly `opset`."""
    newest = onnx.defs.onnx_opset_version()
    if not OLDEST_OPSET <= opset <= newest:
        raise UserError(f"--opset {opset} is outside what this exporter writes: {OLDEST_OPSET} (torch's dynamo "
                        f"exporter writes nothing lower; onnxruntime {minimum_onnxruntime(OLDEST_OPSET)} and later "
                        f"load it) to {newest} (the installed onnx). The default, {DEFAULT_OPSET}, loads in "
                        f"onnxruntime {minimum_onnxruntime(DEFAULT_OPSET)} and later.")
    # float32 raw pixels: what image libraries hand a deployer (PIL/numpy/OpenCV after resizing give
    # floats or uint8 that casts losslessly); a uint8 input would force them to round and clip.
    example = torch.randint(0, 256, (2, in_channels, *image_size)).float()
    program = torch.onnx.export(
        network, (example,), dynamo=True, verbose=False, external_data=False, opset_version=opset,
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    model = program.model_proto
    written = {o.domain: o.version for o in model.opset_import}.get("", opset)
    if written != opset:  # the exporter's version converter gave up and kept its own opset
        raise UserError(f"torch's exporter could not write this network at opset {opset} (it wrote {written}); "
                        f"export with --opset {written}.")
    model.ir_version = ir_version_for(opset)
    return model


def save_checked(model: onnx.ModelProto, output: Path) -> None:
    """Write beside `output` and rename only once the checker passed: a failed export (checker, full disk,
    read-only folder) never leaves a half-written model.onnx behind, nor destroys the previous one."""
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise storage_error(e, output, "ONNX model") from e
    with atomic_path(output, "ONNX model") as partial:
        onnx.save(model, partial)
        onnx.checker.check_model(str(partial), full_check=True)


def export_checkpoint(ckpt: Checkpoint, output: Path, opset: int = DEFAULT_OPSET) -> ModelMetadata:
    """Write `output` from a loaded checkpoint; returns the metadata stored in it."""
    hp = ckpt.model.hparams
    model = onnx_graph(ckpt.model.network_module().eval(), hp.in_channels, list(hp.image_size), opset)
    dataset = ckpt.datamodule_hparams.get("dataset", "unknown")
    spec = DATASETS.get(dataset)
    # The predictor must rebuild the square evaluation resized each image to, so its side goes into the metadata.
    base_size = spec.base_size(hp.image_size) if spec is not None else max(hp.image_size)
    metadata = ModelMetadata(
        class_names=list(ckpt.model.class_names), image_size=list(hp.image_size), in_channels=hp.in_channels,
        mean=list(hp.mean), std=list(hp.std), dataset=dataset, network=hp.network,
        checkpoint=recorded_path(ckpt.path), checkpoint_sha256=ckpt.sha256,
        weights_sha256=weights_sha256(model), base_size=base_size, test_metrics=ckpt.test_metrics(),
        **card_fields(ckpt, dataset),
    )
    del model.metadata_props[:]  # torch.export's internal bookkeeping means nothing to a deployer
    onnx.helper.set_model_props(model, metadata.to_props())
    model.producer_name, model.doc_string = "imgclf export.py", INPUT_DESCRIPTION
    save_checked(model, output)
    return metadata


def export(ckpt_path: str | Path, output: str | Path, opset: int = DEFAULT_OPSET) -> ModelMetadata:
    """export.py: load the checkpoint, export it, print what was written."""
    ckpt = load_checkpoint(ckpt_path)
    output = Path(output)
    metadata = export_checkpoint(ckpt, output, opset)
    c, (h, w) = metadata.in_channels, metadata.image_size
    accuracy = metadata.test_metrics.get("test/acc")
    print(f"Wrote {output} ({output.stat().st_size / 1024:.0f} KiB) from {ckpt.path} "
          f"(sha256 {ckpt.sha256[:12]}...)\n"
          f"  input  {INPUT_NAME}: float32 [batch, {c}, {h}, {w}], raw pixels 0-255 (normalized inside)\n"
          f"  opset {opset}, IR version {ir_version_for(opset)} (onnxruntime {minimum_onnxruntime(opset)} or newer)\n"
          f"  output {OUTPUT_NAME}: float32 [batch, {len(metadata.class_names)}] for classes "
          f"{', '.join(metadata.class_names)}\n"
          f"  {metadata.network} on {metadata.dataset}"
          + (f", test accuracy {accuracy:.4f}" if accuracy is not None else "")
          + f"\nNext: uv run python verify_onnx.py --model {output}")
    return metadata
