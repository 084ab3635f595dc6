"""The exported file: opset and IR version chosen on purpose, the same answers in other runtimes, a clear
error for a too-old ONNX Runtime, no truncated file on a storage error, and the model card's numbers."""

from __future__ import annotations

import errno
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import REPO
from torchmetrics.classification import MulticlassCalibrationError

from imgclf.data.readers import read_digits
from imgclf.deploy import export as export_module
from imgclf.deploy.card import dataset_version
from imgclf.deploy.compat import too_old_runtime_error
from imgclf.deploy.export import onnx_graph, save_checked
from imgclf.deploy.from_checkpoint import load_checkpoint
from imgclf.deploy.predictor import open_session
from imgclf.deploy.runtimes import runtime_parity
from imgclf.errors import UserError

pytestmark = pytest.mark.slow  # every test uses the model the shared digits run trains

# onnxruntime 1.17.3's own words for a file newer than it (seen in a venv with onnxruntime==1.17.3).
ORT_117_IR = ("[ONNXRuntimeError] : 1 : FAIL : Load model from m.onnx failed:/onnxruntime_src/onnxruntime/core/"
              "graph/model.cc:179 onnxruntime::Model::Model(...) Unsupported model IR version: 10, max supported "
              "IR version: 9\n")
ORT_117_OPSET = ("[ONNXRuntimeError] : 1 : FAIL : Load model from m.onnx failed: ValidateOpsetForDomain ONNX Runtime "
                 "only *guarantees* support for models stamped with official released onnx opset versions. Opset "
                 "21 is under development and support for this is limited. The operator schemas and or other "
                 "functionality may change before next ONNX release and in this case ONNX Runtime will not "
                 "guarantee backward compatibility. Current official support for domain ai.onnx is till opset 20.")


@pytest.fixture(scope="module")
def torch_logits(digits_run) -> tuple[np.ndarray, np.ndarray]:
    images = read_digits(train=False).images[:64].float()
    with torch.inference_mode():
        logits = load_checkpoint(digits_run / "best.ckpt").model.network_module().eval()(images)
    return images.numpy(), logits.numpy()


def test_export_stamps_opset_20_and_ir_version_9(digits_onnx):
    model = onnx.load(str(digits_onnx))
    assert model.ir_version == 9  # onnxruntime 1.17 refuses IR 10, what torch 2.15 writes by default
    assert {o.domain: o.version for o in model.opset_import}[""] == 20
    onnx.checker.check_model(model, full_check=True)


def test_other_runtimes_give_the_same_answers(digits_onnx, torch_logits):
    images, expected = torch_logits
    results = runtime_parity(digits_onnx, images, expected, ("onnx_reference", "opencv_dnn"))
    for name in ("onnx_reference", "opencv_dnn"):
        assert results[name]["ok"], (name, results[name])
        assert results[name]["top1_agreement"] == 1.0 and results[name]["images"] == 64
    shifted = expected.copy()
    shifted[:, 0] += 1.0  # moves logits, and top-1 where class 0 was close to the best
    broken = runtime_parity(digits_onnx, images, shifted, ("onnxruntime",))["onnxruntime"]
    assert not broken["ok"] and broken["values_out_of_tolerance"] == 64  # the comparison can fail


def test_export_at_the_oldest_opset_and_refuse_lower(digits_run):
    network = load_checkpoint(digits_run / "best.ckpt").model.network_module().eval()
    with pytest.raises(UserError, match="--opset 17 is outside"):
        onnx_graph(network, 1, [8, 8], 17)
    oldest = onnx_graph(network, 1, [8, 8], 18)  # for onnxruntime 1.14-1.16
    assert oldest.ir_version == 8 and {o.domain: o.version for o in oldest.opset_import}[""] == 18
    onnx.checker.check_model(oldest, full_check=True)


def test_too_old_runtime_says_what_to_do_and_never_calls_the_file_corrupt(digits_onnx, tmp_path):
    for message, what in [(ORT_117_IR, "IR version 10"), (ORT_117_OPSET, "opset 21")]:
        error = str(too_old_runtime_error(message, "m.onnx"))
        assert what in error and "corrupt" not in error
        assert "onnxruntime 1.18 or newer" in error and "export.py --output m.onnx` writes opset 20" in error
        assert "--opset 18` reaches back to onnxruntime 1.14" in error
    assert too_old_runtime_error("InvalidProtobuf: Protobuf parsing failed.", "m.onnx") is None
    # The installed onnxruntime, given a file stamped newer than any release: the same clear error.
    model = onnx.load(str(digits_onnx))
    model.ir_version = 99
    future = tmp_path / "future.onnx"
    onnx.save(model, str(future))
    with pytest.raises(UserError) as error:
        open_session(future)
    assert "IR version 99" in str(error.value) and "corrupt" not in str(error.value)


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "disk is full"), (errno.EROFS, "read-only")])
def test_storage_errors_leave_no_truncated_model(digits_onnx, tmp_path, monkeypatch, code, words):
    output = tmp_path / "model.onnx"
    output.write_bytes(b"the previous model")
    model = onnx.load(str(digits_onnx))

    def save_half_then_fail(proto, path):
        if code == errno.ENOSPC:  # a full disk takes part of the file; a read-only one refuses to open it
            Path(path).write_bytes(proto.SerializeToString()[:1000])
        raise OSError(code, "simulated")

    real_unlink = Path.unlink

    def unlink(path, missing_ok=False):
        if code == errno.EROFS and path.parent == tmp_path:  # as Linux does, even for a file that is absent
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        real_unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(export_module.onnx, "save", save_half_then_fail)
    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(UserError, match=words) as error:
        save_checked(model, output)
    assert str(output) in str(error.value) and "\n" not in str(error.value)
    assert output.read_bytes() == b"the previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary left behind


def test_dataset_version_is_the_md5_in_the_dvc_pointer(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "things.dvc").write_text("outs:\n- md5: 0123456789abcdef.dir\n  path: things\n")
    assert dataset_version("things", tmp_path) == {"dvc_file": "data/things.dvc", "md5": "0123456789abcdef.dir"}
    assert dataset_version("digits", tmp_path) == {}


def test_model_card_holds_the_numbers_of_its_run(digits_run, digits_onnx, digits_report):
    report = digits_report
    assert report["passed"] and report["checks"]["other_runtimes_agree"]
    card = (digits_onnx.parent / "model_card.md").read_text()
    assert report["model_card"] == str(digits_onnx.parent / "model_card.md")
    assert (digits_onnx.parent / "model_card" / "confusion_matrix.png").is_file()

    # Recomputed here from the checkpoint, independently of verify's ONNX path.
    test = read_digits(train=False)
    with torch.inference_mode():
        logits = load_checkpoint(digits_run / "best.ckpt").model.network_module().eval()(test.images.float())
    accuracy = float((logits.argmax(1) == test.labels).float().mean())
    run_metrics = json.loads((digits_run / "metrics.json").read_text())
    assert accuracy == pytest.approx(run_metrics["test/acc"])
    assert f"- accuracy: {accuracy:.4f}" in card
    assert f"test/acc {run_metrics['test/acc']:.4f}" in card and f"test/loss {run_metrics['test/loss']:.4f}" in card
    ece = MulticlassCalibrationError(10, n_bins=15, norm="l1")(logits.softmax(1), test.labels)
    assert f"expected calibration error (L1, 15 bins, torchmetrics): {float(ece):.4f}" in card
    for digit in range(10):
        mine = test.labels == digit
        per_class = float((logits.argmax(1)[mine] == digit).float().mean())
        assert f"| {digit} | {per_class:.4f} |" in card
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert re.search(rf"git commit `{commit}(\+dirty)?`", card)
    assert (digits_run / "config.yaml").read_text().strip() in card
    assert report["model_sha256"] in card and "opset 20, IR version 9" in card
    assert "onnx 1." in card and "ReferenceEvaluator | same answers" in card and "OpenCV" in card
    assert "| 1 |" in card and "| 64 |" in card  # the latency table, batches 1 and 64
