"""Data: dataset readers (one per on-disk format), the catalog of datasets, and the LightningDataModule."""

from imgclf.data.catalog import DATASETS, DatasetSpec, get_dataset
from imgclf.data.readers import ImageArrays

__all__ = ["DATASETS", "DatasetSpec", "ImageArrays", "ImageDataModule", "get_dataset"]


def __getattr__(name: str):
    # The DataModule imports Lightning (seconds): loaded on first use, so the catalog and readers stay quick
    # to import for check_env.py's data check and other tools that only look at files.
    if name == "ImageDataModule":
        from imgclf.data.datamodule import ImageDataModule

        return ImageDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
