"""Statistics and plots behind EDA.ipynb: look at the data before training on it.

Everything here takes what the project's own `ImageDataModule` holds (`ImageArrays` per split), so the
notebook reads data exactly as training does and stays a short list of calls with one sentence each.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import yaml
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from imgclf.data import ImageArrays, ImageDataModule

NORMALIZATION_TOLERANCE = 0.01  # on the 0-1 scale; the catalog's constants are rounded to 4 decimals


def load_datamodule(config: str | Path) -> ImageDataModule:
    """The DataModule a training run with this config would build (its `data:` section), not yet set up."""
    data = (yaml.safe_load(Path(config).read_text()) or {}).get("data") or {}
    return ImageDataModule(**data)


def is_present(datamodule: ImageDataModule) -> bool:
    """Whether the dataset's files are already there, so setup() will read them rather than download."""
    return datamodule.spec.is_present(datamodule.root)


# ----------------------------------------------------------------------------- sizes and classes
def split_sizes(splits: Mapping[str, ImageArrays]) -> pd.Series:
    return pd.Series({name: len(arrays) for name, arrays in splits.items()}, name="images")


def class_distribution(splits: Mapping[str, ImageArrays], class_names: list[str]) -> pd.DataFrame:
    """Images per class (rows) and split (columns); classes absent from a split count 0."""
    counts = {name: torch.bincount(arrays.labels.cpu(), minlength=len(class_names)).tolist()
              for name, arrays in splits.items()}
    return pd.DataFrame(counts, index=pd.Index(class_names, name="class"))


def imbalance_ratio(counts: pd.DataFrame) -> pd.Series:
    """Largest over smallest class count per split: 1.0 is balanced, inf means a class is missing."""
    return (counts.max() / counts.min()).rename("imbalance ratio")


def plot_class_distribution(counts: pd.DataFrame, title: str) -> Figure:
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(counts) + 2), 3.5))
    counts.plot.bar(ax=ax, width=0.8)
    ax.set(title=title, xlabel="", ylabel="images")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, never over them
    if len(counts) > 40:  # 196 car models: names would overlap, the bars' shape is what matters
        ax.set_xticks([])
    fig.tight_layout()
    return fig


def sample_grid(arrays: ImageArrays, class_names: list[str], per_class: int = 8,
                max_classes: int = 20) -> Figure:
    """The first `per_class` images of each class (one row per class, at most `max_classes` rows)."""
    classes = list(range(min(len(class_names), max_classes)))
    labels = arrays.labels.cpu()
    height = len(classes) * 0.9 + 0.5
    fig, axes = plt.subplots(len(classes), per_class, squeeze=False, figsize=(per_class * 0.9 + 1.5, height))
    for row, c in zip(axes, classes, strict=True):
        index = torch.nonzero(labels == c).flatten()[:per_class]
        for ax, i in itertools.zip_longest(row, index.tolist()):
            ax.axis("off")
            if i is not None:
                image = arrays.images[i].cpu().permute(1, 2, 0).numpy()
                ax.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=255)
        row[0].text(-0.1, 0.5, class_names[c], transform=row[0].transAxes, ha="right", va="center")
    fig.subplots_adjust(left=0.2, right=0.98, bottom=0.02, top=1 - 0.5 / height, wspace=0.05, hspace=0.05)
    return fig


# ----------------------------------------------------------------------------- pixel statistics
def channel_stats(images: torch.Tensor, chunk: int = 8192) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of uint8 images [N, C, H, W] on the 0-1 scale.

    Sums in float64 over chunks: one float copy of a whole dataset would cost 8x its uint8 size.
    """
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].cpu().to(torch.float64) / 255.0
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / n
    std = (squares / n - mean * mean).clamp(min=0).sqrt()
    return mean.tolist(), std.tolist()


def normalization_check(images: torch.Tensor, mean: list[float], std: list[float],
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
def image_hashes(images: torch.Tensor) -> list[str]:
    """A digest of each image's bytes and shape: equal digests mean pixel-identical images."""
    array = np.ascontiguousarray(images.cpu().numpy())
    return [hashlib.blake2b(image.tobytes() + str(image.shape).encode(), digest_size=16).hexdigest()
            for image in array]


def find_duplicates(splits: Mapping[str, ImageArrays]) -> pd.DataFrame:
    """Every image whose exact bytes occur more than once, anywhere: columns hash, split, index, label."""
    frame = pd.concat(
        [pd.DataFrame({"hash": image_hashes(arrays.images), "split": name,
                       "index": range(len(arrays)), "label": arrays.labels.cpu().numpy()})
         for name, arrays in splits.items()],
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
def size_table(sizes: np.ndarray) -> pd.DataFrame:
    """Width, height and aspect ratio (width / height) of each image, from an array [N, 2] of (w, h)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    width, height = sizes[:, 0], sizes[:, 1]
    return pd.DataFrame({"width": width, "height": height, "aspect ratio": width / height})


def box_area_fraction(sizes: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Share of each image covered by its box; sizes [N, 2] as (w, h), boxes [N, 4] as (x1, y1, x2, y2)."""
    sizes, boxes = np.asarray(sizes, dtype=np.float64), np.asarray(boxes, dtype=np.float64)
    area = (boxes[:, 2] - boxes[:, 0]).clip(min=0) * (boxes[:, 3] - boxes[:, 1]).clip(min=0)
    return area / (sizes[:, 0] * sizes[:, 1])


def plot_sizes(sizes: Mapping[str, np.ndarray], boxes: Mapping[str, np.ndarray] | None = None) -> Figure:
    """Histograms of width, height, aspect ratio and (when boxes are given) box-area fraction, per split."""
    panels = ["width", "height", "aspect ratio"] + (["box area fraction"] if boxes else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.5 * len(panels), 3))
    for name, split_sizes_ in sizes.items():
        table = size_table(split_sizes_)
        if boxes:
            table["box area fraction"] = box_area_fraction(split_sizes_, boxes[name])
        for ax, column in zip(axes, panels, strict=True):
            ax.hist(table[column], bins=40, alpha=0.5, label=name)
            ax.set(title=column, ylabel="images")
    axes[0].legend()
    fig.tight_layout()
    return fig


def plot_boxes(files: list[str | Path], boxes: np.ndarray, titles: list[str] | None = None) -> Figure:
    """Images from their files with their boxes drawn on top."""
    from PIL import Image

    fig, axes = plt.subplots(1, len(files), squeeze=False, figsize=(3 * len(files), 3))
    for k, (ax, path, (x1, y1, x2, y2)) in enumerate(zip(axes[0], files, boxes, strict=True)):
        with Image.open(path) as image:
            ax.imshow(image.convert("RGB"))
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="red", linewidth=2))
        ax.set_title(titles[k] if titles else Path(path).name, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig
