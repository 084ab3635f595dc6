"""Which runtimes run each network's ONNX export, and with the same answers as PyTorch.

Exports every network the project trains (random weights: parity does not depend on training) at the
default opset, then runs each file in every runtime installed here (ONNX Runtime, onnx's reference
evaluator, OpenCV's DNN module) and compares with PyTorch's logits (rtol 1e-3 / atol 1e-5, identical top-1):

    uv run python bench/onnx_runtimes.py --out runs/onnx_runtimes        # export + check in this environment
    # the same files in another environment (e.g. onnxruntime 1.17 + numpy<2 + OpenCV 4.8), torch-free:
    PYTHONPATH=src /tmp/ort117/bin/python bench/onnx_runtimes.py --check runs/onnx_runtimes
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from imgclf.deploy.runtimes import format_parity, runtime_parity

# (network, channels, side): small-image networks at their datasets' sizes; ImageNet-style backbones at
# 64 px, enough for every stage and quick in the reference evaluator (pure numpy).
SMALL_IMAGE = [("small_cnn", 1, 28), ("small_cnn", 3, 32), ("resnet18", 3, 32), ("airbench_small", 1, 28),
               ("airbench", 3, 32)]
IMAGE_FILES = [("resnet18_imagenet", 3, 64), ("resnet50", 3, 64), ("efficientnet_b0", 3, 64),
               ("convnext_tiny", 3, 64)]
BATCH = 4


def export_all(out: Path, opset: int) -> None:
    import onnx
    import torch
    from torch import nn

    from imgclf.deploy.export import onnx_graph
    from imgclf.networks import PixelNormalize, build_network

    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    for name, channels, side in SMALL_IMAGE + IMAGE_FILES:
        network = nn.Sequential(PixelNormalize([0.5] * channels, [0.25] * channels),
                                build_network(name, channels, 10))
        images = torch.randint(0, 256, (BATCH, channels, side, side)).float()
        with torch.inference_mode():
            # BatchNorm statistics from a few batches: with its initial ones a randomly initialised deep
            # network (efficientnet_b0) gives the same logits for every image, and parity would prove little.
            for _ in range(3):
                network(torch.randint(0, 256, (16, channels, side, side)).float())
            logits = network.eval()(images).numpy()
        stem = f"{name}_{channels}x{side}"
        onnx.save(onnx_graph(network, channels, [side, side], opset), str(out / f"{stem}.onnx"))
        np.savez(out / f"{stem}.npz", images=images.numpy(), logits=logits)
        print(f"exported {stem}.onnx", flush=True)


def check_all(out: Path) -> dict[str, dict]:
    results = {}
    for model in sorted(out.glob("*.onnx")):
        arrays = np.load(model.with_suffix(".npz"))
        results[model.stem] = runtime_parity(model, arrays["images"], arrays["logits"])
        print(f"{model.stem}:\n{format_parity(results[model.stem])}", flush=True)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder to export into, then check")
    parser.add_argument("--check", type=Path, help="only check the files already in this folder (torch-free)")
    parser.add_argument("--opset", type=int, default=None, help="default: export.py's default")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    folder = args.check or args.out
    if folder is None:
        parser.error("pass --out DIR or --check DIR")
    if args.out:
        from imgclf.deploy.compat import DEFAULT_OPSET

        export_all(args.out, args.opset or DEFAULT_OPSET)
    summary = check_all(folder)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
