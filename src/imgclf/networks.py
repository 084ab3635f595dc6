"""Plain nn.Module architectures, chosen by name. No Lightning in here.

Every network takes normalized float images [N, C, H, W] and returns logits [N, num_classes];
`PixelNormalize` in front of it turns raw 0-255 pixels into that, so a deployed model takes raw pixels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision.models import resnet18

from imgclf.backbones import TORCHVISION_NETWORKS
from imgclf.errors import UserError


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
    """The seed project's small CNN, with BatchNorm: two conv blocks, then global pooling and a classifier."""
    return nn.Sequential(
        conv_bn_relu(in_channels, width), conv_bn_relu(width, width), nn.MaxPool2d(2),
        conv_bn_relu(width, 2 * width), conv_bn_relu(2 * width, 2 * width), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Dropout(0.2), nn.Linear(2 * width, num_classes),
    )


def resnet18_small(in_channels: int, num_classes: int) -> nn.Module:
    """torchvision's ResNet-18 adapted to small images (8-32 px): a 3x3 stride-1 stem and no max-pool,
    which would otherwise shrink a 32x32 image to 8x8 before the first residual block."""
    net = resnet18(weights=None, num_classes=num_classes)
    net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


NETWORKS: dict[str, Callable[[int, int], nn.Module]] = {
    "small_cnn": small_cnn,
    "resnet18": resnet18_small,
}
NETWORKS.update(TORCHVISION_NETWORKS)  # ImageNet-style networks for large images, optionally pretrained


def build_network(name: str, in_channels: int, num_classes: int) -> nn.Module:
    if name not in NETWORKS:
        raise UserError(f"Unknown network {name!r}. Choose one of: {', '.join(NETWORKS)} "
                        f"(set it with --model.network NAME or in the config's model: section).")
    return NETWORKS[name](in_channels, num_classes)
