"""Data: dataset readers (one per on-disk format), the catalog of datasets, and the LightningDataModule."""

from imgclf.data.catalog import DATASETS, DatasetSpec, get_dataset
from imgclf.data.datamodule import ImageDataModule
from imgclf.data.readers import ImageArrays

__all__ = ["DATASETS", "DatasetSpec", "ImageArrays", "ImageDataModule", "get_dataset"]
