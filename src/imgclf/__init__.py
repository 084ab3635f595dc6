"""Image classification with PyTorch Lightning."""
