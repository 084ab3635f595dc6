"""Statistics and plots behind EDA.ipynb: look at the data before training on it.

Everything here takes what the project's own `ImageDataModule` holds per split: `ImageArrays` for the
datasets kept in memory, an `ImageFileDataset` for datasets of image files (Stanford Cars, folders). So the
notebook reads data exactly as training does and stays a short list of `eda.<function>` calls with one
sentence each. splits.py gets the data, statistics.py computes the numbers, plots.py draws the figures.
"""

from imgclf.eda.plots import plot_boxes, plot_class_distribution, plot_sizes, sample_grid
from imgclf.eda.splits import (
    Split,
    is_file_dataset,
    load_datamodule,
    model_input,
    open_datasets,
    pixel_batches,
    sample_indices,
)
from imgclf.eda.statistics import (
    NORMALIZATION_TOLERANCE,
    box_area_fraction,
    channel_stats,
    class_distribution,
    duplicate_summary,
    file_hashes,
    find_duplicates,
    image_boxes,
    image_hashes,
    image_sizes,
    imbalance_ratio,
    most_confused_pairs,
    normalization_check,
    size_table,
    split_hashes,
    split_sizes,
)

__all__ = [
    "NORMALIZATION_TOLERANCE", "Split", "box_area_fraction", "channel_stats", "class_distribution",
    "duplicate_summary", "file_hashes", "find_duplicates", "image_boxes", "image_hashes", "image_sizes",
    "imbalance_ratio", "is_file_dataset", "load_datamodule", "model_input", "most_confused_pairs",
    "normalization_check", "open_datasets", "pixel_batches", "plot_boxes", "plot_class_distribution",
    "plot_sizes", "sample_grid", "sample_indices", "size_table", "split_hashes", "split_sizes",
]
