"""Stanford Cars in the original devkit layout (the one torchvision reads), with class names and boxes.

    <root>/[stanford_cars/]devkit/cars_meta.mat            class_names: 196 strings
    <root>/[stanford_cars/]devkit/cars_train_annos.mat     annotations: bbox_x1, bbox_y1, bbox_x2, bbox_y2,
    <root>/[stanford_cars/]cars_train/*.jpg                              class (1-based), fname
    <root>/[stanford_cars/]cars_test_annos_withlabels.mat  the same fields for the test images
    <root>/[stanford_cars/]cars_test/*.jpg

torchvision's StanfordCars drops the boxes; cropping to them matters for fine-grained accuracy, so this
reader keeps them. Boxes are MATLAB-style (1-based, inclusive) and become 0-based, end-exclusive here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imgclf.data.image_files import ImageFile, ImageFiles, SplitOptions, stratified_split
from imgclf.errors import UserError

META = "devkit/cars_meta.mat"
TRAIN_ANNOTATIONS = "devkit/cars_train_annos.mat"
TEST_ANNOTATIONS = ("cars_test_annos_withlabels.mat", "devkit/cars_test_annos_withlabels.mat")
IMAGE_FOLDERS = {True: "cars_train", False: "cars_test"}
FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
FETCH_HINT = ("Fetch the dataset with `dvc pull data/stanford_cars.dvc`, or point --data.root at the devkit "
              "layout.")


def base_folder(root: Path) -> Path:
    """torchvision puts the files in <root>/stanford_cars/; accept that and the devkit layout at the root."""
    nested = root / "stanford_cars"
    return nested if (nested / META).is_file() else root


def is_present(root: Path) -> bool:
    base = base_folder(root)
    return (base / META).is_file() and (base / TRAIN_ANNOTATIONS).is_file()


def load_mat(path: Path, key: str) -> np.ndarray:
    import scipy.io  # here: the catalog imports this module; importing scipy.io costs most of a second

    try:
        content = scipy.io.loadmat(path, squeeze_me=True)
    except Exception as e:  # scipy raises ValueError, TypeError, MatReadError... for damaged files
        raise UserError(f"Cannot read {path} ({type(e).__name__}: {e}): it is corrupt or not a MATLAB file. "
                        f"{FETCH_HINT}") from e
    if key not in content:
        raise UserError(f"{path} has no {key!r} variable: it is not the Stanford Cars devkit file. "
                        f"{FETCH_HINT}")
    return np.atleast_1d(content[key])  # squeeze_me turns a one-element array into a scalar


def read_class_names(root: Path) -> list[str]:
    path = base_folder(root) / META
    if not path.is_file():
        raise UserError(f"Stanford Cars was not found in {root}/ ({META} is missing). {FETCH_HINT}")
    return [str(name) for name in load_mat(path, "class_names")]


def read_annotations(path: Path, image_folder: Path, num_classes: int) -> list[ImageFile]:
    annotations = load_mat(path, "annotations")
    missing_fields = [f for f in FIELDS if f not in (annotations.dtype.names or ())]
    if missing_fields:
        raise UserError(f"{path} lacks the annotation fields {missing_fields} (expected {list(FIELDS)}). "
                        f"{FETCH_HINT}")
    files, missing = [], []
    for a in annotations:
        label = int(a["class"])
        if not 1 <= label <= num_classes:
            raise UserError(f"{path}: the annotation of {a['fname']} has class {label}, outside "
                            f"1..{num_classes} (cars_meta.mat lists {num_classes} classes). The annotation "
                            f"file and the class list do not belong together; fetch both again.")
        image = image_folder / str(a["fname"])
        if not image.is_file():
            missing.append(image)
        box = (int(a["bbox_x1"]) - 1, int(a["bbox_y1"]) - 1, int(a["bbox_x2"]), int(a["bbox_y2"]))
        files.append(ImageFile(image, label - 1, box))
    if missing:
        raise UserError(f"{path} names {len(missing)} image(s) that do not exist, e.g. {missing[0]}. "
                        f"The image folder is incomplete: {FETCH_HINT}")
    return files


def read_stanford_cars(root: Path, options: SplitOptions) -> ImageFiles:
    """Train/val/test files with labels and boxes; val is a stratified share of the official training set."""
    classes = read_class_names(root)
    base = base_folder(root)
    test_annotations = next((base / name for name in TEST_ANNOTATIONS if (base / name).is_file()), None)
    if not (base / TRAIN_ANNOTATIONS).is_file() or test_annotations is None:
        raise UserError(f"Stanford Cars in {base}/ lacks {TRAIN_ANNOTATIONS} or {TEST_ANNOTATIONS[0]}. "
                        f"{FETCH_HINT}")
    train = read_annotations(base / TRAIN_ANNOTATIONS, base / IMAGE_FOLDERS[True], len(classes))
    test = read_annotations(test_annotations, base / IMAGE_FOLDERS[False], len(classes))
    train, val = stratified_split(train, options.val_fraction, options.seed)
    return ImageFiles(classes, {"train": train, "val": val, "test": test})
