"""Plain nn.Module architectures, chosen by name. No Lightning in here.

Every network takes normalized float images [N, C, H, W] and returns logits [N, num_classes];
`PixelNormalize` in front of it turns raw 0-255 pixels into that, so a deployed model takes raw pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet18

from imgclf.errors import UserError
from imgclf.model.airbench import AirbenchNet
from imgclf.model.backbones import TORCHVISION_NETWORKS


class PixelNormalize(nn.Module):
    """Raw pixels (uint8 or float, 0-255) -> (x / 255 - mean) / std, per channel."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        # Folded into one multiply-add: x * scale + shift.
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t), persistent=False)
        self.register_buffer("shift", -mean_t / std_t, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.float() * self.scale + self.shift


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def small_cnn(in_channels: int, num_classes: int, width: int = 32) -> nn.Module:
    """The seed project's small CNN, with BatchNorm: two conv-pool blocks, then a two-layer classifier.

    The classifier sees a 4x4 map rather than a global average: where a feature sits matters for
    centred images like digits and clothes, and it learns markedly faster in the first epochs.
    """
    return nn.Sequential(
        conv_bn_relu(in_channels, width), nn.MaxPool2d(2),
        conv_bn_relu(width, 2 * width), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        nn.Linear(2 * width * 16, 128), nn.ReLU(inplace=True), nn.Dropout(0.2), nn.Linear(128, num_classes),
    )


def resnet18_small(in_channels: int, num_classes: int) -> nn.Module:
    """torchvision's ResNet-18 adapted to small images (8-32 px): a 3x3 stride-1 stem and no max-pool,
    which would otherwise shrink a 32x32 image to 8x8 before the first residual block."""
    net = resnet18(weights=None, num_classes=num_classes)
    net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


def airbench(in_channels: int, num_classes: int, **options) -> nn.Module:
    """airbench94's widths: for a GPU. `options`: AirbenchNet's (layout, widths, ...), from model.network_args."""
    return AirbenchNet(in_channels, num_classes, **{"widths": (64, 256, 256), **options})


def airbench_small(in_channels: int, num_classes: int, **options) -> nn.Module:
    """A narrow variant for CPU training: about 25x fewer multiply-adds than `airbench`, and on a 2-core CPU
    about 3x the images/s of `small_cnn` (batch 512 vs 64)."""
    return AirbenchNet(in_channels, num_classes, **{"widths": (16, 32, 64), **options})


def airbench_medium(in_channels: int, num_classes: int, **options) -> nn.Module:
    """1.5x airbench_small's widths (about 2x its multiply-adds), configs/fashion_mnist.yaml's network: 93.6% on
    Fashion-MNIST in 8 epochs, where airbench_small levels off near 93.2-93.5% (BENCHMARKS.md)."""
    return AirbenchNet(in_channels, num_classes, **{"widths": (24, 48, 96), **options})


NETWORKS: dict[str, Callable[[int, int], nn.Module]] = {
    "small_cnn": small_cnn,
    "resnet18": resnet18_small,
    "airbench": airbench,
    "airbench_small": airbench_small,
    "airbench_medium": airbench_medium,
}
NETWORKS.update(TORCHVISION_NETWORKS)  # ImageNet-style networks for large images, optionally pretrained


def build_network(name: str, in_channels: int, num_classes: int, options: dict[str, Any] | None = None) -> nn.Module:
    """The network `name`; `options` (model.network_args) go to its builder as keyword arguments."""
    if name not in NETWORKS:
        raise UserError(f"Unknown network {name!r}. Choose one of: {', '.join(NETWORKS)} "
                        f"(set it with --model.network NAME or in the config's model: section).")
    if not options:
        return NETWORKS[name](in_channels, num_classes)
    try:
        return NETWORKS[name](in_channels, num_classes, **options)
    except (TypeError, ValueError) as e:  # an argument the builder does not take, or a value it refuses
        raise UserError(f"--model.network_args {options} does not fit the {name!r} network: {e}. Only the "
                        f"airbench networks take arguments (layout: ceil or airbench94, widths: [a, b, c]).") from e
