"""Deployment helpers on hand-made arrays: no training, no model files."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest

from imgclf.deploy.metadata import ModelMetadata
from imgclf.deploy.predictor import run_onnx
from imgclf.deploy.verify import check_dynamic_batches, compare_logits
from imgclf.errors import UserError


class FixedSession:
    """Stands in for an ONNX Runtime session: returns `logits` for the first len(input) images."""

    def __init__(self, logits: np.ndarray) -> None:
        self.logits = logits

    def run(self, outputs, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        (images,) = feeds.values()
        return [self.logits[np.arange(len(images)) % len(self.logits)]]


def test_nan_logits_are_out_of_tolerance() -> None:
    reference = np.array([[0.5, -1.0, 2.0], [0.0, 3.0, 1.0]], dtype=np.float32)
    assert compare_logits(reference.copy(), reference)["values_out_of_tolerance"] == 0
    broken = reference.copy()
    broken[1, 2] = np.nan
    assert compare_logits(broken, reference)["values_out_of_tolerance"] == 1
    # The dynamic batch check applies the same rule: batch 1 takes row 0 only, the others reach the NaN.
    batches = check_dynamic_batches(FixedSession(broken), np.zeros((2, 1, 4, 4), np.float32), reference)
    assert {size: b["ok"] for size, b in batches.items()} == {"1": True, "7": False, "64": False}


class RecordingSession:
    """Logits = each image's pixel sum, and the batch sizes it was run with."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def run(self, outputs, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        (images,) = feeds.values()
        self.batch_sizes.append(len(images))
        return [images.sum(axis=(1, 2, 3))[:, None]]


def test_run_onnx_runs_in_batches_and_keeps_the_order() -> None:
    images = np.arange(7 * 2 * 3 * 3, dtype=np.float32).reshape(7, 2, 3, 3)
    session = RecordingSession()
    logits = run_onnx(session, images, 3)
    assert session.batch_sizes == [3, 3, 1]
    np.testing.assert_array_equal(logits[:, 0], images.sum(axis=(1, 2, 3)))


def test_metadata_string_fields_survive_json_lookalike_values() -> None:
    """Every str field comes back as the same string, even one that would parse as JSON ("42", "null")."""
    values = dict(class_names=["a", "b"], image_size=[8, 8], in_channels=1, mean=[0.5], std=[0.25],
                  base_size=9, test_metrics={"test/acc": 0.5}, dataset_version={"md5": "0123.dir"})
    strings = [f.name for f in fields(ModelMetadata) if f.name not in values]
    values |= {name: ["42", "null", "[1]", '"quoted"'][i % 4] for i, name in enumerate(strings)}
    metadata = ModelMetadata(**values)
    assert ModelMetadata.from_props(metadata.to_props(), "model.onnx") == metadata


def test_metadata_of_files_exported_before_base_size_still_loads() -> None:
    metadata = ModelMetadata(class_names=["a", "b"], image_size=[8, 8], in_channels=1, mean=[0.5], std=[0.25],
                             dataset="digits", network="small_cnn", checkpoint="best.ckpt",
                             checkpoint_sha256="0" * 64, weights_sha256="1" * 64, base_size=8)
    props = metadata.to_props()
    del props["base_size"]
    assert ModelMetadata.from_props(props, "old.onnx").base_size is None  # the predictor's old recipe
    del props["network"]
    with pytest.raises(UserError, match=r"old.onnx lacks .*\(network\)"):
        ModelMetadata.from_props(props, "old.onnx")
