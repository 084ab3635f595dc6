"""Images per class and split, checked at setup: a class missing from a split is not measured there.

A class with no training image cannot be learned: refused. A class with no validation or test image is
warned about, not refused: accuracy stays exact, and small datasets are worth a first experiment; but
that class's accuracy is unknown, and torchmetrics' macro F1 counts it as 0 whenever the model predicts
it (ignoring it otherwise), so f1_macro moves with chance predictions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from imgclf.errors import UserError

SPLITS = ("train", "val", "test")


def class_counts(labels: Mapping[str, Sequence[int]], num_classes: int) -> dict[str, list[int]]:
    """Images of each class, per split."""
    counts = {}
    for split, split_labels in labels.items():
        counts[split] = [0] * num_classes
        for label in split_labels:
            counts[split][label] += 1
    return counts


def _describe(classes: Sequence[str], counts: dict[str, list[int]], short: list[int], limit: int = 10) -> str:
    listed = [f"{classes[c]!r} ({', '.join(f'{s} {counts[s][c]}' for s in SPLITS if s in counts)})"
              for c in short[:limit]]
    more = f" and {len(short) - limit} more" if len(short) > limit else ""
    return "; ".join(listed) + more


def check_class_counts(classes: Sequence[str], labels: Mapping[str, Sequence[int]]) -> str | None:
    """UserError when a class has no training image; otherwise a warning text naming each class that is
    missing from the validation or test split (a split with no image at all is left alone), or None."""
    counts = class_counts(labels, len(classes))
    untrained = [c for c, n in enumerate(counts["train"]) if n == 0]
    if untrained:
        raise UserError(f"{len(untrained)} class(es) have no training image, so the model cannot learn them: "
                        f"{_describe(classes, counts, untrained)}. Add images of them (or remove the classes).")
    measured = [s for s in ("val", "test") if sum(counts.get(s, [])) > 0]
    short = [c for c in range(len(classes)) if any(counts[s][c] == 0 for s in measured)]
    if not short:
        return None
    return (f"{len(short)} class(es) have no image in the {' or '.join(measured)} split, so they are not "
            f"measured there: {_describe(classes, counts, short)}. Their accuracy is unknown, and f1_macro "
            f"counts such a class as 0 whenever the model predicts it. Add images of these classes (a few per "
            f"split), or raise --data.val_fraction / --data.test_fraction where splits are drawn automatically.")
