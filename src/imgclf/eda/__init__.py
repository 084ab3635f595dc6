"""Statistics and plots behind EDA.ipynb: look at the data before training on it.

Everything here takes what the project's own `ImageDataModule` holds per split, through the methods every
split offers (imgclf.eda.inspectable.InspectableSplit), whether held in memory or read from image files. So the notebook
reads data exactly as training does and stays a short list of `eda.<function>` calls with one sentence each.
splits.py gets the data, statistics.py computes the numbers, plots.py draws the figures.
"""

from imgclf.eda.plots import plot_boxes, plot_class_distribution, plot_sizes, sample_grid
from imgclf.eda.splits import load_datamodule, open_datasets
from imgclf.eda.statistics import (
    NORMALIZATION_TOLERANCE,
    box_area_fraction,
    channel_stats,
    class_distribution,
    duplicate_summary,
    find_duplicates,
    imbalance_ratio,
    most_confused_pairs,
    normalization_check,
    size_table,
    split_sizes,
)

__all__ = [
    "NORMALIZATION_TOLERANCE", "box_area_fraction", "channel_stats", "class_distribution", "duplicate_summary",
    "find_duplicates", "imbalance_ratio", "load_datamodule", "most_confused_pairs", "normalization_check",
    "open_datasets", "plot_boxes", "plot_class_distribution", "plot_sizes", "sample_grid", "size_table",
    "split_sizes",
]
