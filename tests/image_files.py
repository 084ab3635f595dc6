"""Generated image-file fixtures: the Stanford Cars devkit layout (real .mat files, JPEGs of several sizes,
boxes) and image-folder trees, including ones built from real Fashion-MNIST images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from imgclf.data.catalog import DEBIAN_FASHION_MNIST as FASHION_MNIST
from imgclf.data.readers import read_fashion_mnist

SIZES = [(700, 480), (520, 390), (640, 360), (300, 400)]  # (width, height): landscape and portrait
CAR_COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 230), (230, 210, 30)]  # one per class


def car_image(width: int, height: int, box: tuple[int, int, int, int], colour: tuple[int, int, int],
              rng: np.random.Generator) -> Image.Image:
    """A grey noisy background with the 'car' (box, MATLAB-style 1-based inclusive) painted in `colour`."""
    pixels = rng.integers(90, 130, size=(height, width, 3), dtype=np.uint8)
    x1, y1, x2, y2 = box
    pixels[y1 - 1:y2, x1 - 1:x2] = colour
    return Image.fromarray(pixels)


def annotation_struct(rows: list[tuple[int, int, int, int, int, str]]) -> np.ndarray:
    """A (1, N) MATLAB struct array laid out like the devkit's: every field a 2-d array, fname a string."""
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    struct = np.empty((1, len(rows)), dtype=[(f, object) for f in fields])
    for i, (x1, y1, x2, y2, label, fname) in enumerate(rows):
        struct[0, i] = (np.array([[x1]], np.uint16), np.array([[y1]], np.uint16), np.array([[x2]], np.uint16),
                        np.array([[y2]], np.uint16), np.array([[label]], np.uint8), np.array([fname]))
    return struct


def write_stanford_cars(root: Path, num_classes: int = 3, train_per_class: int = 4, test_per_class: int = 2,
                        nested: bool = True) -> Path:
    """The devkit layout in root/stanford_cars/ (torchvision's) or root/ itself; returns the base folder."""
    base = root / "stanford_cars" if nested else root
    rng = np.random.default_rng(0)
    (base / "devkit").mkdir(parents=True)
    names = np.empty((1, num_classes), dtype=object)
    for c in range(num_classes):
        names[0, c] = f"Maker Model{c} 20{10 + c}"
    scipy.io.savemat(base / "devkit" / "cars_meta.mat", {"class_names": names})
    splits = [("cars_train", train_per_class, base / "devkit" / "cars_train_annos.mat"),
              ("cars_test", test_per_class, base / "cars_test_annos_withlabels.mat")]
    for split, per_class, annotation_file in splits:
        (base / split).mkdir()
        rows = []
        for i in range(num_classes * per_class):
            label = i % num_classes + 1
            width, height = SIZES[i % len(SIZES)]
            x1, y1 = int(rng.integers(1, width // 4)), int(rng.integers(1, height // 4))
            x2, y2 = int(rng.integers(width // 2, width)), int(rng.integers(height // 2, height))
            fname = f"{i + 1:05d}.jpg"
            car_image(width, height, (x1, y1, x2, y2), CAR_COLOURS[label - 1], rng).save(base / split / fname,
                                                                                           quality=90)
            rows.append((x1, y1, x2, y2, label, fname))
        scipy.io.savemat(annotation_file, {"annotations": annotation_struct(rows)})
    return base


def write_fashion_mnist_folder(root: Path, per_class: int, train: bool = True, classes: int = 10) -> Path:
    """root/<class name>/<i>.png from the first `per_class` real Fashion-MNIST images of each class."""
    data = read_fashion_mnist(FASHION_MNIST, train)
    images, labels = data.images[:, 0].numpy(), data.labels.numpy()
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(labels == c)[:per_class]):
            Image.fromarray(images[index]).save(folder / f"{i}.png")
    return root


def write_colour_folder(root: Path, counts: dict[str, int], size: tuple[int, int] = (48, 40)) -> Path:
    """root/<class>/<i>.jpg: small JPEGs, one flat colour per class."""
    for c, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", size, CAR_COLOURS[c % len(CAR_COLOURS)]).save(root / name / f"{i}.jpg")
    return root
