"""The model: networks and pretrained backbones, batch augmentation, the LightningModule (classifier.py:
loss, metrics, optimizer, one-cycle schedule, fine-tuning groups) and EMA weight averaging."""
