"""Data: dataset readers (one per on-disk format), the catalog of datasets, and the LightningDataModule."""

__all__ = ["DATASETS", "DatasetSpec", "ImageArrays", "ImageDataModule", "get_dataset"]

_HOMES = {"DATASETS": "catalog", "DatasetSpec": "catalog", "get_dataset": "catalog", "ImageArrays": "readers",
          "ImageDataModule": "datamodule"}


def __getattr__(name: str):
    # Loaded on first use: the DataModule imports Lightning (seconds) and the catalog imports torch, while
    # check_env.py's data check needs only the catalog and the torch-free predictor only decode.py.
    if name in _HOMES:
        from importlib import import_module

        return getattr(import_module(f"imgclf.data.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
