"""The one decode function: EXIF orientation, 16-bit scaling and the size limit, identical for training,
evaluation and the torch-free predictor; the fast check that finds broken files at setup."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from imgclf.data.decode import check_image, decode_image
from imgclf.data.transforms import decode_rgb
from imgclf.deploy.metadata import ModelMetadata
from imgclf.deploy.predictor import image_paths, load_image
from imgclf.errors import UserError

ROTATED_90 = 6  # EXIF orientation: the stored pixels must be turned 90 degrees clockwise for display


def metadata(side: int, channels: int = 3) -> ModelMetadata:
    """A model's metadata taking `side`-pixel squares: the predictor then resizes nothing of that size."""
    return ModelMetadata(class_names=["a", "b"], image_size=[side, side], in_channels=channels,
                         mean=[0.5] * channels, std=[0.25] * channels, dataset="folder", network="small_cnn",
                         checkpoint="best.ckpt", checkpoint_sha256="0" * 64, weights_sha256="1" * 64,
                         base_size=side)


def write_exif_rotated(path: Path, width: int = 30, height: int = 20) -> np.ndarray:
    """A PNG (lossless) tagged 'rotate 90 clockwise'; returns the upright pixels a viewer shows."""
    stored = np.zeros((height, width, 3), np.uint8)
    stored[:, :10] = (255, 0, 0)  # red on the stored left edge: at the top once upright
    stored[:5, 10:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = ROTATED_90
    Image.fromarray(stored).save(path, exif=exif)
    return np.rot90(stored, k=-1)  # 90 degrees clockwise


def test_exif_orientation_is_applied_by_training_and_prediction_alike(tmp_path: Path) -> None:
    upright = write_exif_rotated(tmp_path / "photo.png")
    assert upright.shape == (30, 20, 3)
    np.testing.assert_array_equal(decode_rgb(tmp_path / "photo.png").permute(1, 2, 0).numpy(), upright)
    # a square image at the model's size reaches the model unresized: the predictor's pixels exactly
    upright = write_exif_rotated(tmp_path / "square.png", width=20)
    np.testing.assert_array_equal(load_image(tmp_path / "square.png", metadata(20)).transpose(1, 2, 0), upright)


def test_box_is_cropped_in_the_stored_frame_then_turned_upright(tmp_path: Path) -> None:
    stored = np.rot90(write_exif_rotated(tmp_path / "photo.png"), k=1)  # back to the stored frame
    x1, y1, x2, y2 = 2, 3, 17, 11  # in the stored pixels, as Stanford Cars annotates
    expected = np.rot90(stored[y1:y2, x1:x2], k=-1)
    np.testing.assert_array_equal(np.asarray(decode_image(tmp_path / "photo.png", box=(x1, y1, x2, y2))), expected)
    assert decode_image(tmp_path / "photo.png", orient=False).size == (30, 20)


def test_16_bit_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    with Image.open(tmp_path / "ramp16.png") as image:
        assert image.mode == "I;16"
    expected = np.rint(ramp / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(decode_image(tmp_path / "ramp16.png", "L")), expected)
    training = decode_rgb(tmp_path / "ramp16.png").numpy()
    np.testing.assert_array_equal(training[0], expected)
    assert (training == 255).mean() < 0.01  # Pillow's convert() alone clips 99.6% of this ramp to 255
    served = load_image(tmp_path / "ramp16.png", metadata(64, channels=1))[0]
    np.testing.assert_array_equal(served, expected)


@pytest.mark.parametrize("side", [40, 100])  # above the limit (Pillow would only warn), above twice it (error)
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # decode's own size check must hold
def test_huge_images_are_refused_with_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   side: int) -> None:
    Image.new("RGB", (side, side)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow's real limit is 89 million pixels
    for decode in (lambda p: decode_image(p), decode_rgb, lambda p: load_image(p, metadata(16)), check_image):
        with pytest.raises(UserError, match=r"big.png is too large to decode.*1,000 pixels.*downscale it"):
            decode(tmp_path / "big.png")


def test_check_finds_truncated_jpeg_and_png(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    for name in ("a.jpg", "a.png"):
        Image.fromarray(pixels).save(tmp_path / name)
        check_image(tmp_path / name)
        data = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
        with pytest.raises(OSError, match="runcated"):
            check_image(tmp_path / name)
    (tmp_path / "b.jpg").write_text("not an image")
    with pytest.raises(OSError, match="cannot identify"):
        check_image(tmp_path / "b.jpg")


def test_predictor_takes_folders(tmp_path: Path) -> None:
    for name in ("b.png", "a.jpg", "sub/c.png", ".hidden/d.png", "notes.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert image_paths([str(tmp_path), "x.jpg"]) == [str(tmp_path / n) for n in ("a.jpg", "b.png", "sub/c.png")] + [
        "x.jpg"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty holds no image files"):
        image_paths([str(tmp_path / "empty")])


@pytest.mark.slow
def test_predictor_and_decode_import_no_torch() -> None:
    code = "import imgclf.deploy.predictor, sys; assert 'torch' not in sys.modules, 'torch was imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
