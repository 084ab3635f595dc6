"""The figures EDA.ipynb shows: class distributions, sample grids, size histograms and box overlays."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from imgclf.eda.inspectable import InspectableSplit as Split


def plot_class_distribution(counts: pd.DataFrame, title: str) -> Figure:
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(counts) + 2), 3.5))
    counts.plot.bar(ax=ax, width=0.8)
    ax.set(title=title, xlabel="", ylabel="images")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, never over them
    if len(counts) > 40:  # 196 car models: names would overlap, the bars' shape is what matters
        ax.set_xticks([])
    fig.tight_layout()
    return fig


def sample_grid(split: Split, class_names: list[str], per_class: int = 8,
                max_classes: int = 20) -> Figure:
    """The first `per_class` images of each class (one row per class, at most `max_classes` rows)."""
    classes = list(range(min(len(class_names), max_classes)))
    labels = split.labels.cpu()
    height = len(classes) * 0.9 + 0.5
    fig, axes = plt.subplots(len(classes), per_class, squeeze=False, figsize=(per_class * 0.9 + 1.5, height))
    for row, c in zip(axes, classes, strict=True):
        index = torch.nonzero(labels == c).flatten()[:per_class]
        for ax, i in itertools.zip_longest(row, index.tolist()):
            ax.axis("off")
            if i is not None:
                image = split.model_input(i).cpu().permute(1, 2, 0).numpy()
                ax.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=255)
        row[0].text(-0.1, 0.5, class_names[c], transform=row[0].transAxes, ha="right", va="center")
    fig.subplots_adjust(left=0.2, right=0.98, bottom=0.02, top=1 - 0.5 / height, wspace=0.05, hspace=0.05)
    return fig


def plot_sizes(tables: Mapping[str, pd.DataFrame]) -> Figure:
    """Histograms of each column of `size_table` (width, height, aspect ratio, box area fraction), per split.

    Unreadable files (NaN sizes) and files without a box are left out of the histograms they lack data for.
    """
    panels = list(dict.fromkeys(column for table in tables.values() for column in table))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.5 * len(panels), 3))
    for name, table in tables.items():
        for ax, column in zip(axes, panels, strict=True):
            if column in table:
                ax.hist(table[column].dropna(), bins=40, alpha=0.5, label=name)
            ax.set(title=column, ylabel="images")
    axes[0].legend()
    fig.tight_layout()
    return fig


def plot_boxes(split: Split, class_names: list[str], count: int = 6) -> Figure:
    """The split's first `count` images that have a box, as stored (before any crop), with the box in red."""
    boxes = split.boxes()
    boxed = [] if boxes is None else np.flatnonzero(~np.isnan(boxes).any(axis=1))[:count].tolist()
    if not boxed:
        raise ValueError("No image in this split has a bounding box.")
    labels = split.labels.tolist()
    fig, axes = plt.subplots(1, len(boxed), squeeze=False, figsize=(3 * len(boxed), 3))
    for ax, i in zip(axes[0], boxed, strict=True):
        x1, y1, x2, y2 = boxes[i]
        ax.imshow(split.stored_image(i))
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="red", linewidth=2))
        ax.set_title(class_names[labels[i]], fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig
