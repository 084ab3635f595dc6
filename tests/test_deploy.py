"""ONNX export, verification and prediction, end to end on models trained in this test session."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import REPO, run_in_process
from image_files import write_colour_folder
from onnx import numpy_helper
from PIL import Image
from trained import train

from imgclf.data import transforms
from imgclf.data.catalog import DATASETS, DEBIAN_FASHION_MNIST
from imgclf.data.readers import read_digits, read_fashion_mnist
from imgclf.deploy.export import export
from imgclf.deploy.from_checkpoint import file_sha256, load_checkpoint
from imgclf.deploy.metadata import ModelMetadata
from imgclf.deploy.predictor import Predictor, load_image
from imgclf.deploy.verify import verify

pytestmark = pytest.mark.slow


def test_export_writes_metadata_and_a_dynamic_batch_axis(digits_run, digits_onnx):
    model = onnx.load(str(digits_onnx))
    onnx.checker.check_model(model, full_check=True)
    metadata = ModelMetadata.from_props({p.key: p.value for p in model.metadata_props}, str(digits_onnx))
    assert metadata.class_names == list(DATASETS["digits"].classes)
    assert (metadata.image_size, metadata.in_channels) == ([8, 8], 1)
    assert metadata.base_size == 8  # in-memory images come at the input size: no base square
    assert metadata.mean == list(DATASETS["digits"].mean) and metadata.std == list(DATASETS["digits"].std)
    assert (metadata.dataset, metadata.network) == ("digits", "small_cnn")
    assert metadata.checkpoint_sha256 == file_sha256(digits_run / "best.ckpt")
    run_metrics = json.loads((digits_run / "metrics.json").read_text())
    assert metadata.test_metrics["test/acc"] == pytest.approx(run_metrics["test/acc"])
    (images,) = model.graph.input
    assert images.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    batch_dim = images.type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")


def test_verify_report_holds_the_figures(digits_onnx, digits_report):
    on_disk = json.loads((digits_onnx.parent / "report.json").read_text())
    assert on_disk == digits_report
    assert digits_report["passed"] and all(digits_report["checks"].values())
    assert digits_report["test_images"] == len(read_digits(train=False))
    assert digits_report["top1_agreement"] == 1.0
    assert digits_report["onnx_accuracy"] == digits_report["torch_accuracy"] > 0.5
    assert digits_report["max_abs_diff"] < 1e-3
    assert set(digits_report["batch_sizes"]) == {"1", "7", "64"}
    for row in digits_report["latency_ms"].values():
        assert row["torch_eager_ms"] > 0 and row["onnxruntime_ms"] > 0
    int8 = digits_report["int8"]
    assert Path(int8["model"]) != digits_onnx and Path(int8["model"]).is_file()
    assert int8["size_kib"] < int8["float_size_kib"]
    assert int8["accuracy"] == pytest.approx(digits_report["onnx_accuracy"] + int8["accuracy_change"])


def test_tampered_model_fails_verification(digits_onnx, tmp_path):
    model = onnx.load(str(digits_onnx))
    biggest = max(model.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)
    weights = numpy_helper.to_array(biggest)
    biggest.CopyFrom(numpy_helper.from_array(weights * np.float32(1.05), biggest.name))  # metadata kept
    tampered = tmp_path / "tampered.onnx"
    onnx.save(model, str(tampered))
    report = tmp_path / "report.json"
    code = run_in_process("verify_onnx.py", "--model", str(tampered), "--report", str(report))
    assert code == 1
    result = json.loads(report.read_text())
    assert not result["passed"]
    assert not result["checks"]["weights_unchanged_since_export"]
    assert not result["checks"]["logits_within_tolerance"]  # the weights hash aside, the logits moved too


def test_dynamic_batch_axis_gives_the_same_logits_as_single_images(digits_onnx):
    session = ort.InferenceSession(str(digits_onnx), providers=["CPUExecutionProvider"])
    images = read_digits(train=False).images[:100].float().numpy()
    singles = np.concatenate([session.run(None, {"images": images[i:i + 1]})[0] for i in range(100)])
    for size in (1, 7, 64, 100):
        logits = session.run(None, {"images": images[:size]})[0]
        assert logits.shape == (size, 10)
        np.testing.assert_allclose(logits, singles[:size], rtol=1e-3, atol=1e-5)


def test_export_refuses_bad_checkpoints(digits_run, tmp_path):
    output = tmp_path / "model.onnx"
    code = run_in_process("export.py", "--ckpt", str(tmp_path / "missing.ckpt"), "--output", str(output))
    assert "does not exist" in code and code.startswith("error: ")
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint")
    code = run_in_process("export.py", "--ckpt", str(corrupt), "--output", str(output))
    assert "corrupt" in code
    other = torch.load(digits_run / "best.ckpt", map_location="cpu", weights_only=False)
    other["hyper_parameters"]["network"] = "resnet18"  # its weights are small_cnn's
    torch.save(other, tmp_path / "other.ckpt")
    code = run_in_process("export.py", "--ckpt", str(tmp_path / "other.ckpt"), "--output", str(output))
    assert "do not fit the network" in code and "resnet18" in code
    assert not output.exists()


def test_verify_and_predict_refuse_bad_model_files(digits_onnx, tmp_path):
    image = tmp_path / "digit.png"
    Image.fromarray(read_digits(train=False).images[0, 0].numpy()).save(image)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(digits_onnx.read_bytes()[:1000])
    stripped = onnx.load(str(digits_onnx))
    del stripped.metadata_props[:]
    onnx.save(stripped, str(tmp_path / "stripped.onnx"))
    for model, message in [(tmp_path / "missing.onnx", "does not exist"), (corrupt, "corrupt"),
                           (tmp_path / "stripped.onnx", "not written by export.py")]:
        assert message in run_in_process("imgclf.deploy.predictor", str(image), "--model", str(model))
        report = str(tmp_path / "r.json")
        assert message in run_in_process("verify_onnx.py", "--model", str(model), "--report", report)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    code = run_in_process("imgclf.deploy.predictor", str(image), str(not_an_image), "--model", str(digits_onnx))
    assert "notes.png is not an image" in code


# --------------------------------------------------------------------------- Fashion-MNIST, real images
@pytest.fixture(scope="session")
def fashion_model(fashion_mnist_real, tmp_path_factory) -> tuple[Path, Path]:
    """A Fashion-MNIST model trained on 10 batches (enough to predict several classes) and its export."""
    run_dir = train(tmp_path_factory.mktemp("runs"), "--data.dataset", "fashion_mnist",
                    "--data.root", str(fashion_mnist_real),
                    "--data.batch_size", "128", "--data.eval_batch_size", "512", "--trainer.max_epochs", "1",
                    "--trainer.limit_train_batches", "10", "--trainer.limit_val_batches", "1",
                    "--trainer.limit_test_batches", "1")
    output = tmp_path_factory.mktemp("onnx") / "fashion.onnx"
    export(run_dir / "best.ckpt", output)
    return run_dir / "best.ckpt", output


def test_predict_classifies_fashion_mnist_pngs_like_pytorch_without_torch(fashion_model, tmp_path):
    ckpt, model = fashion_model
    test = read_fashion_mnist(DEBIAN_FASHION_MNIST, train=False)
    images = test.images[:16]
    paths = []
    (tmp_path / "folder" / "x_more").mkdir(parents=True)  # sorts after the test_*.png beside it
    for i, image in enumerate(images):  # a folder stands for every image in it, at any depth, sorted
        paths.append(tmp_path / "folder" / ("x_more" if i >= 8 else "") / f"test_{i:02d}.png")
        Image.fromarray(image[0].numpy()).save(paths[-1])
    rgb_big = tmp_path / "rgb_big.jpg"  # "any size, grayscale or RGB": must be read, not matched
    Image.fromarray(images[0, 0].numpy()).convert("RGB").resize((84, 84)).save(rgb_big)
    with torch.inference_mode():
        expected = load_checkpoint(ckpt).model(images).argmax(1).tolist()
    assert len(set(expected)) >= 2, "the tiny model predicts one class only: the comparison would be weak"

    argv = ["imgclf.deploy.predictor", str(tmp_path / "folder"), str(rgb_big), "--model", str(model), "--top-k", "3"]
    block_torch = ("import runpy, sys; sys.modules['torch'] = None; "  # any `import torch` now raises
                   f"sys.argv = {argv!r}; runpy.run_module(sys.argv[0], run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", block_torch], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4 * (len(paths) + 1)  # a path line, then 3 classes, per image
    classes = DATASETS["fashion_mnist"].classes
    for i, path in enumerate(paths):
        assert lines[4 * i] == str(path)
        top1 = lines[4 * i + 1].strip().rsplit(" ", 1)[0].strip()
        assert top1 == classes[expected[i]], f"{path}: ONNX says {top1}, PyTorch {classes[expected[i]]}"
    assert lines[-4] == str(rgb_big)


def test_verify_refuses_a_checkpoint_of_another_model(digits_onnx, fashion_model, tmp_path):
    code = run_in_process("verify_onnx.py", "--model", str(digits_onnx), "--ckpt", str(fashion_model[0]),
                      "--report", str(tmp_path / "r.json"))
    assert "was not exported from" in code


# --------------------------------------------------------------------------- image files (folder datasets)
@pytest.fixture(scope="session")
def folder_model(tmp_path_factory) -> tuple[Path, Path]:
    """A small_cnn trained for one epoch on a folder of non-square JPEGs (train/ and test/ as given), exported."""
    root = tmp_path_factory.mktemp("folder")
    write_colour_folder(root / "train", {"red": 6, "green": 6, "blue": 6})
    write_colour_folder(root / "test", {"red": 2, "green": 2, "blue": 2})
    run_dir = train(tmp_path_factory.mktemp("runs"), "--data.dataset", "folder", "--data.root", str(root),
                    "--data.input_size", "16", "--data.num_workers", "0", "--data.batch_size", "8",
                    "--data.val_fraction", "0.2", "--trainer.max_epochs", "1")
    output = tmp_path_factory.mktemp("onnx") / "folder.onnx"
    export(run_dir / "best.ckpt", output)
    return root, output


def test_verify_runs_on_image_file_test_splits(folder_model, tmp_path):
    root, model = folder_model
    result = verify(model, report=tmp_path / "report.json", quantize=True, latency_repeats=2)
    assert result["passed"] and all(result["checks"].values()), result["checks"]
    assert result["test_images"] == 6  # the files of root/test/, decoded as evaluation decodes them
    assert result["onnx_accuracy"] == result["torch_accuracy"]
    assert Path(result["int8"]["model"]).is_file()  # calibrated on decoded validation images

    broken = root / "test" / "green" / "1.jpg"
    original = broken.read_bytes()
    broken.write_bytes(b"not a jpeg")  # as at test time: named, no traceback
    try:
        code = run_in_process("verify_onnx.py", "--model", str(model), "--report", str(tmp_path / "r.json"))
    finally:
        broken.write_bytes(original)  # the folder is shared by the session's other tests
    assert code.startswith("error: 1 image file(s) cannot be read") and "green/1.jpg" in code


def test_predictor_preprocesses_image_files_as_evaluation_does(folder_model, tmp_path):
    _, model = folder_model
    predictor = Predictor(model)
    assert predictor.metadata.base_size == transforms.base_size(16) == 18
    # Wide noise: cropping to the aspect and squashing the whole image give clearly different pixels.
    path = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 70, 3), dtype=np.uint8)).save(path)
    expected = transforms.eval_view(16)(transforms.load_base(path, 16))
    pixels = load_image(path, predictor.metadata)
    # Pillow's and torchvision's antialiased bilinear resizes round a few pixels differently, by one level.
    assert np.abs(pixels - expected.numpy()).max() <= 1
    with torch.inference_mode():
        network = load_checkpoint(predictor.metadata.checkpoint).model.network_module().eval()
        reference = torch.softmax(network(expected[None].float()), 1).numpy()
    np.testing.assert_allclose(predictor.probabilities(pixels[None]), reference, atol=1e-3)
