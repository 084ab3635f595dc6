"""The numbers EDA.ipynb shows: split sizes, class counts, pixel statistics, exact duplicates, image sizes
and boxes, and the most confused class pairs of a trained run."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from imgclf.eda.inspectable import InspectableSplit as Split

NORMALIZATION_TOLERANCE = 0.01  # on the 0-1 scale; the catalog's constants are rounded to 4 decimals


# ----------------------------------------------------------------------------- sizes and classes
def split_sizes(splits: Mapping[str, Split]) -> pd.Series:
    return pd.Series({name: len(arrays) for name, arrays in splits.items()}, name="images")


def class_distribution(splits: Mapping[str, Split], class_names: list[str]) -> pd.DataFrame:
    """Images per class (rows) and split (columns); classes absent from a split count 0."""
    counts = {name: torch.bincount(arrays.labels.cpu(), minlength=len(class_names)).tolist()
              for name, arrays in splits.items()}
    return pd.DataFrame(counts, index=pd.Index(class_names, name="class"))


def imbalance_ratio(counts: pd.DataFrame) -> pd.Series:
    """Largest over smallest class count per split: 1.0 is balanced, inf means a class is missing."""
    return (counts.max() / counts.min()).rename("imbalance ratio")


# ----------------------------------------------------------------------------- pixel statistics
def channel_stats(images: torch.Tensor | Iterable[torch.Tensor],
                  chunk: int = 8192) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std on the 0-1 scale of uint8 images [N, C, H, W], or of all the
    images in an iterable of such batches (a split's `pixel_batches()`).

    Sums in float64 over chunks: one float copy of a whole dataset would cost 8x its uint8 size.
    """
    batches = images.split(chunk) if isinstance(images, torch.Tensor) else images
    total = squares = None
    n = 0
    for batch in batches:
        x = batch.cpu().to(torch.float64) / 255.0
        if total is None:
            total, squares = x.new_zeros(x.shape[1]), x.new_zeros(x.shape[1])
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
        n += x.shape[0] * x.shape[2] * x.shape[3]
    if not n:
        raise ValueError("No images to measure: the split is empty or none of its files decodes.")
    mean = total / n
    std = (squares / n - mean * mean).clamp(min=0).sqrt()
    return mean.tolist(), std.tolist()


def normalization_check(images: torch.Tensor | Iterable[torch.Tensor], mean: list[float], std: list[float],
                        tolerance: float = NORMALIZATION_TOLERANCE) -> pd.DataFrame:
    """Measured per-channel mean/std next to the constants the model normalizes with, and a mismatch flag.

    A mismatch is not always a bug (pretrained backbones keep ImageNet's constants on purpose), but for a
    model trained from scratch it means the inputs are not centred as the config believes.
    """
    measured_mean, measured_std = channel_stats(images)
    if len(mean) != len(measured_mean):
        raise ValueError(f"{len(measured_mean)} image channels but {len(mean)} normalization constants")
    frame = pd.DataFrame({"measured mean": measured_mean, "config mean": mean,
                          "measured std": measured_std, "config std": std},
                         index=pd.Index(range(len(mean)), name="channel"))
    frame["mismatch"] = ((frame["measured mean"] - frame["config mean"]).abs() > tolerance) | (
        (frame["measured std"] - frame["config std"]).abs() > tolerance)
    return frame


# ----------------------------------------------------------------------------- exact duplicates
def find_duplicates(splits: Mapping[str, Split]) -> pd.DataFrame:
    """Every image whose exact bytes (pixels in memory, file bytes for image files) occur more than once,
    anywhere: columns hash, split, index, label."""
    frame = pd.concat(
        [pd.DataFrame({"hash": split.content_hashes(), "split": name,
                       "index": range(len(split)), "label": split.labels.cpu().numpy()})
         for name, split in splits.items()],
        ignore_index=True,
    )
    return frame[frame.duplicated("hash", keep=False)].sort_values(["hash", "split", "index"],
                                                                   ignore_index=True)


def duplicate_summary(duplicates: pd.DataFrame, split_names: list[str]) -> pd.DataFrame:
    """Counts per split and split pair.

    Within a split: redundant copies (images minus distinct images). Across two splits: distinct images
    present in both, the leak that inflates test accuracy. `conflicting labels`: of those, how many
    carry different labels in different places.
    """
    def conflicting(part: pd.DataFrame) -> set[str]:
        labels = part.groupby("hash")["label"].nunique()
        return set(labels[labels > 1].index)

    rows = {}
    for name in split_names:
        part = duplicates[duplicates["split"] == name]
        copies = len(part) - part["hash"].nunique()
        rows[name] = (copies, len(conflicting(part)))
    for a, b in itertools.combinations(split_names, 2):
        part = duplicates[duplicates["split"].isin([a, b])]
        shared = (set(part.loc[part["split"] == a, "hash"]) & set(part.loc[part["split"] == b, "hash"]))
        rows[f"{a} & {b}"] = (len(shared), len(shared & conflicting(part)))
    return pd.DataFrame.from_dict(rows, orient="index", columns=["duplicates", "conflicting labels"])


# ----------------------------------------------------------------------------- a trained run
def most_confused_pairs(confusion_csv: str | Path, top: int = 10) -> pd.DataFrame:
    """The largest off-diagonal cells of a run's confusion_matrix.csv (rows true, columns predicted)."""
    matrix = pd.read_csv(confusion_csv, index_col=0)
    matrix.index = matrix.index.astype(str)  # class names "0".."9" would otherwise come back as integers
    counts = matrix.to_numpy()
    per_class = counts.sum(axis=1)
    pairs = [(matrix.index[i], matrix.columns[j], int(counts[i, j]), counts[i, j] / per_class[i])
             for i in range(len(counts)) for j in range(len(counts)) if i != j and counts[i, j] > 0]
    frame = pd.DataFrame(pairs, columns=["true", "predicted", "count", "share of true class"])
    return frame.sort_values("count", ascending=False, kind="stable", ignore_index=True).head(top)


# ----------------------------------------------------------------------------- images of varying sizes
def size_table(sizes: np.ndarray, boxes: np.ndarray | None = None) -> pd.DataFrame:
    """Width, height and aspect ratio (width / height) of each image, from an array [N, 2] of (w, h); with
    boxes [N, 4], also the share of each image its box covers ("box area fraction")."""
    sizes = np.asarray(sizes, dtype=np.float64)
    width, height = sizes[:, 0], sizes[:, 1]
    table = pd.DataFrame({"width": width, "height": height, "aspect ratio": width / height})
    if boxes is not None:
        table["box area fraction"] = box_area_fraction(sizes, boxes)
    return table


def box_area_fraction(sizes: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Share of each image covered by its box; sizes [N, 2] as (w, h), boxes [N, 4] as (x1, y1, x2, y2)."""
    sizes, boxes = np.asarray(sizes, dtype=np.float64), np.asarray(boxes, dtype=np.float64)
    area = (boxes[:, 2] - boxes[:, 0]).clip(min=0) * (boxes[:, 3] - boxes[:, 1]).clip(min=0)
    return area / (sizes[:, 0] * sizes[:, 1])
