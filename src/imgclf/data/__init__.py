"""Data: dataset readers (one per on-disk format), the catalog of datasets, image files and their cache, and
the LightningDataModule. Import from the modules themselves (imgclf.data.datamodule, .catalog, ...): this
package imports nothing, so the torch-free predictor can use imgclf.data.decode alone."""
