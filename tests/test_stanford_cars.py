"""Stanford Cars devkit reader, box cropping, the DataLoader path, and its bad inputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import scipy.io
import torch
from image_files import CAR_COLOURS, annotation_struct, write_stanford_cars
from PIL import Image

from imgclf.data import ImageDataModule
from imgclf.data.decode import padded_box
from imgclf.data.files import SplitOptions
from imgclf.data.stanford_cars import read_stanford_cars
from imgclf.data.transforms import decode_rgb
from imgclf.errors import UserError

REPO = Path(__file__).resolve().parents[1]
OPTIONS = SplitOptions(val_fraction=0.25, test_fraction=0.0, seed=0)


@pytest.fixture
def cars(tmp_path: Path) -> Path:
    write_stanford_cars(tmp_path)
    return tmp_path


def test_reads_classes_splits_and_boxes(cars: Path) -> None:
    files = read_stanford_cars(cars, OPTIONS)
    assert files.classes == ["Maker Model0 2010", "Maker Model1 2011", "Maker Model2 2012"]
    assert {k: len(v) for k, v in files.splits.items()} == {"train": 9, "val": 3, "test": 6}
    assert sorted(f.label for f in files.splits["val"]) == [0, 1, 2]  # stratified: one per class
    raw = scipy.io.loadmat(cars / "stanford_cars/devkit/cars_train_annos.mat", squeeze_me=True)["annotations"]
    first = next(f for f in files.splits["train"] + files.splits["val"] if f.path.name == "00001.jpg")
    # MATLAB boxes are 1-based and inclusive; ours are 0-based with an exclusive end.
    assert first.box == (int(raw[0]["bbox_x1"]) - 1, int(raw[0]["bbox_y1"]) - 1,
                         int(raw[0]["bbox_x2"]), int(raw[0]["bbox_y2"]))
    assert first.label == int(raw[0]["class"]) - 1


def test_devkit_at_the_root_is_found_too(tmp_path: Path) -> None:
    write_stanford_cars(tmp_path, nested=False)
    assert len(read_stanford_cars(tmp_path, OPTIONS).splits["test"]) == 6


def test_padded_box_grows_and_clips() -> None:
    assert padded_box((100, 50, 300, 150), 0.1, 1000, 1000) == (80, 40, 320, 160)
    assert padded_box((5, 5, 95, 45), 0.5, 100, 50) == (0, 0, 100, 50)


def test_crop_to_box_crops_the_box(cars: Path) -> None:
    files = read_stanford_cars(cars, OPTIONS)
    for file in files.splits["test"]:
        x1, y1, x2, y2 = file.box
        crop = decode_rgb(file.path, file.box)
        assert crop.shape == (3, y2 - y1, x2 - x1)
        colour = torch.tensor(CAR_COLOURS[file.label], dtype=torch.float32)[:, None, None]
        # JPEG blurs the edges a little: compare the mean colour, then check the padded crop is larger
        assert (crop.float().mean(dim=(1, 2)) - colour[:, 0, 0]).abs().max() < 12
        with Image.open(file.path) as image:
            px1, py1, px2, py2 = padded_box(file.box, 0.1, image.width, image.height)
        assert decode_rgb(file.path, file.box, padding=0.1).shape == (3, py2 - py1, px2 - px1)
        assert (py2 - py1, px2 - px1) > (y2 - y1, x2 - x1)


def test_datamodule_serves_uint8_batches(cars: Path) -> None:
    dm = ImageDataModule(dataset="stanford_cars", root=str(cars), batch_size=4, eval_batch_size=3,
                         val_fraction=0.25, input_size=64, num_workers=0, crop_to_box=True)
    assert dm.num_classes == 3 and dm.class_names[1] == "Maker Model1 2011"
    assert dm.image_size == [64, 64] and dm.in_channels == 3 and dm.mean == [0.485, 0.456, 0.406]
    dm.setup("fit")
    images, labels, index = next(iter(dm.test_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (3, 3, 64, 64)
    # Cropped to the box, the centre of every image is the car's colour.
    for image, label in zip(images, labels, strict=True):
        centre = image[:, 24:40, 24:40].float().mean(dim=(1, 2))
        assert (centre - torch.tensor(CAR_COLOURS[label], dtype=torch.float32)).abs().max() < 12
    train_images, _, _ = next(iter(dm.train_dataloader()))
    assert train_images.shape == (4, 3, 64, 64)


def test_missing_dataset_names_dvc_pull(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="dvc pull data/stanford_cars.dvc"):
        ImageDataModule(dataset="stanford_cars", root=str(tmp_path))


def rewrite_annotations(base: Path, change) -> None:
    path = base / "devkit" / "cars_train_annos.mat"
    raw = scipy.io.loadmat(path, squeeze_me=True)["annotations"]
    rows = [(int(a["bbox_x1"]), int(a["bbox_y1"]), int(a["bbox_x2"]), int(a["bbox_y2"]), int(a["class"]),
             str(a["fname"])) for a in raw]
    scipy.io.savemat(path, {"annotations": annotation_struct(change(rows))})


def test_class_outside_class_list(cars: Path) -> None:
    rewrite_annotations(cars / "stanford_cars", lambda rows: [(*rows[0][:4], 7, rows[0][5]), *rows[1:]])
    with pytest.raises(UserError, match=r"00001.jpg has class 7, outside 1..3"):
        read_stanford_cars(cars, OPTIONS)


def test_annotation_of_missing_file(cars: Path) -> None:
    (cars / "stanford_cars/cars_train/00002.jpg").unlink()
    with pytest.raises(UserError, match=r"1 image\(s\) that do not exist, e.g. .*cars_train/00002.jpg"):
        read_stanford_cars(cars, OPTIONS)


def test_corrupt_mat_file(cars: Path) -> None:
    (cars / "stanford_cars/devkit/cars_meta.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(UserError, match="cars_meta.mat.*corrupt or not a MATLAB file"):
        read_stanford_cars(cars, OPTIONS)


@pytest.mark.slow
def test_corrupt_test_image_stops_the_run_before_training_naming_the_file(cars: Path, tmp_path: Path) -> None:
    """End to end through main.py: exit status 1, the file named, no traceback, no checkpoint written."""
    bad = cars / "stanford_cars/cars_test/00003.jpg"
    bad.write_bytes(bad.read_bytes()[:400])  # truncated JPEG in the test split: used only after training
    args = ["--config", "configs/stanford_cars.yaml", "--data.root", str(cars), "--data.input_size", "32",
            "--data.num_workers", "1", "--data.val_fraction", "0.25", "--model.network", "small_cnn",
            "--model.weights", "null", "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu",
            "--trainer.precision", "32", "--model.channels_last", "false",
            "--runs_dir", str(tmp_path / "runs")]
    result = subprocess.run([sys.executable, "main.py", *args], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    assert f"error: 1 image file(s) cannot be read: {bad} (OSError: " in result.stderr
    assert "--data.skip_bad_images true" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "runs").rglob("*.ckpt"))  # stopped at setup, before any training
