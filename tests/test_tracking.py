"""DVCLive glue: the confusion matrix as DVC's per-image (actual, predicted) records."""

from collections import Counter

import torch

from imgclf.train.tracking import confusion_pairs


def test_confusion_pairs_repeat_each_cell_by_its_count():
    confusion = torch.tensor([[2, 1, 0], [0, 3, 0], [4, 0, 5]])
    true, predicted = confusion_pairs(confusion, ["a", "b", "c"])
    assert len(true) == len(predicted) == int(confusion.sum())
    assert Counter(zip(true, predicted, strict=True)) == {
        ("a", "a"): 2, ("a", "b"): 1, ("b", "b"): 3, ("c", "a"): 4, ("c", "c"): 5}
