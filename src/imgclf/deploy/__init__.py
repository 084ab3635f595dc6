"""Deployment: checkpoint -> ONNX export (with metadata) -> verification against PyTorch -> prediction.

Deliberately imports nothing: `imgclf.deploy.predictor` must load where torch is not installed.
"""
