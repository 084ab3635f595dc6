"""Images per class and split: refused without training images, warned about without val/test images."""

import pytest

from imgclf.data.class_counts import check_class_counts
from imgclf.errors import UserError

CLASSES = ["cat", "dog", "emu"]


def test_every_class_in_every_split_passes_quietly() -> None:
    assert check_class_counts(CLASSES, {"train": [0, 1, 2], "val": [2, 1, 0], "test": [0, 1, 2]}) is None


def test_class_missing_from_test_is_named_with_its_counts() -> None:
    warning = check_class_counts(CLASSES, {"train": [0, 1, 2, 2], "val": [0, 1, 2], "test": [0, 1]})
    assert warning.startswith("1 class(es) have no image in the val or test split")
    assert "'emu' (train 2, val 1, test 0)" in warning and "'cat'" not in warning


def test_an_empty_split_is_not_a_missing_class() -> None:  # val_fraction 0: no validation at all
    assert check_class_counts(CLASSES, {"train": [0, 1, 2], "val": [], "test": [0, 1, 2]}) is None


def test_class_without_training_images_is_refused() -> None:
    with pytest.raises(UserError, match=r"1 class\(es\) have no training image.*'dog' \(train 0, val 1, test 1\)"):
        check_class_counts(CLASSES, {"train": [0, 2], "val": [1], "test": [1]})
