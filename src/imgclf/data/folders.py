"""Your own labelled images: one folder per class, class names from the folder names.

    root/<class>/**/*.jpg              split automatically: stratified train/val/test shares
    root/train/<class>/...             used as given; a missing val/ or test/ is split off train/
    root/val/<class>/...  root/test/<class>/...
"""

from __future__ import annotations

from pathlib import Path

from imgclf.data.decode import IMAGE_SUFFIXES, images_in
from imgclf.data.files import ImageFile, ImageFiles, SplitOptions, stratified_split
from imgclf.errors import UserError

SPLITS = ("train", "val", "test")
LAYOUT_HINT = ("Put each class's images in its own folder: root/<class>/*.jpg, or root/train/<class>/... "
               "(with optional root/val/ and root/test/).")


def class_folders(folder: Path) -> list[Path]:
    """Sub-folders, sorted by name; hidden ones (.git, .ipynb_checkpoints) are not classes."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_class_folders(folder: Path, classes: list[str]) -> list[ImageFile]:
    files = []
    for label, name in enumerate(classes):
        if not (folder / name).is_dir():
            continue  # a val/ or test/ folder may lack a class; train/ (which defines the classes) cannot
        images = images_in(folder / name)
        if not images:
            suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
            raise UserError(f"Class folder {folder / name} holds no images ({suffixes}). "
                            f"Add images or remove the folder.")
        files += [ImageFile(path, label) for path in images]
    return files


def is_split_layout(root: Path) -> bool:
    return (root / "train").is_dir()


def folder_classes(root: Path) -> list[str]:
    """Class names: the sub-folders of root/train/ when it exists, else of root/."""
    if not root.is_dir():
        raise UserError(f"Image folder {root} does not exist. Set --data.root to your images. {LAYOUT_HINT}")
    classes_root = root / "train" if is_split_layout(root) else root
    classes = [p.name for p in class_folders(classes_root)]
    if len(classes) < 2:
        raise UserError(f"{classes_root} holds {len(classes)} class folder(s) {classes}, but classification "
                        f"needs at least 2. {LAYOUT_HINT}")
    return classes


def read_image_folder(root: Path, options: SplitOptions) -> ImageFiles:
    """Train/val/test files; val_fraction and test_fraction are shares of all images where split off."""
    classes = folder_classes(root)
    splits, train_root = {}, root
    if is_split_layout(root):
        train_root = root / "train"
        for split in SPLITS[1:]:
            if (root / split).is_dir():
                unknown = sorted({p.name for p in class_folders(root / split)} - set(classes))
                if unknown:
                    raise UserError(f"{root / split} has class folders {unknown} that {train_root} lacks; "
                                    f"the classes come from train/. Rename or add them there.")
                splits[split] = read_class_folders(root / split, classes)
    train = read_class_folders(train_root, classes)
    val_share = options.val_fraction
    if "test" not in splits:
        train, splits["test"] = stratified_split(train, options.test_fraction, options.seed)
        val_share = options.val_fraction / (1 - options.test_fraction)  # a share of all, not of the rest
    if "val" not in splits:
        train, splits["val"] = stratified_split(train, val_share, options.seed)
    return ImageFiles(classes, {"train": train, "val": splits["val"], "test": splits["test"]})
