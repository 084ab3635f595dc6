"""Plain nn.Module architectures, chosen by name. No Lightning in here.

Every network takes normalized float images [N, C, H, W] and returns logits [N, num_classes];
`PixelNormalize` in front of it turns raw 0-255 pixels into that, so a deployed model takes raw pixels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision.models import resnet18

from imgclf.errors import UserError
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


class Whitening(nn.Conv2d):
    """A frozen first conv whose filters whiten the training set's k x k patches (airbench).

    Its filters are the eigenvectors of the patch covariance scaled by 1/sqrt(eigenvalue), each also negated
    (so a ReLU-like activation keeps both signs): the next layer sees decorrelated, unit-variance input, which
    is what makes a few epochs of SGD enough. `init_from` sets them from a batch of normalized images.
    """

    def __init__(self, in_channels: int, kernel_size: int = 2, eps: float = 5e-4) -> None:
        super().__init__(in_channels, 2 * in_channels * kernel_size**2, kernel_size, bias=True)
        self.weight.requires_grad_(False)  # fixed by the data; only the bias trains
        self.eps = eps

    @torch.no_grad()
    def init_from(self, images: torch.Tensor) -> None:
        c, k = self.in_channels, self.kernel_size[0]
        patches = images.float().unfold(2, k, 1).unfold(3, k, 1)  # [N, C, H', W', k, k]
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k)  # a row per patch, (C, k, k) order
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + self.eps)[:, None]).reshape(-1, c, k, k)
        self.weight.copy_(torch.cat([filters, -filters]).to(self.weight))


def conv_bn_gelu(c_in: int, c_out: int) -> nn.Sequential:
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    nn.init.dirac_(conv.weight[: min(c_in, c_out)])  # identity filters: signal flows at step 0
    # BatchNorm momentum 0.4 (PyTorch's convention): a run of a few hundred steps needs fast statistics.
    return nn.Sequential(conv, nn.BatchNorm2d(c_out, momentum=0.4), nn.GELU())


class AirbenchNet(nn.Module):
    """A wide, shallow conv net after airbench94 (Keller Jordan): whitening, then three conv groups
    (conv, max-pool, conv), max-pool to 1x1, linear, logits scaled down.

    `init_whitening(images)` must be called once with a batch of normalized training images before training
    (ImageClassifier does it in on_fit_start).
    """

    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, int, int] = (64, 256, 256),
                 whiten_kernel: int = 2, logit_scale: float = 1 / 9) -> None:
        super().__init__()
        self.whiten = Whitening(in_channels, whiten_kernel)
        layers: list[nn.Module] = [self.whiten, nn.GELU()]
        c_in = self.whiten.out_channels
        for width in widths:
            # ceil_mode keeps 8x8 digits from pooling down to nothing; for 28-32 px it changes little.
            layers += [conv_bn_gelu(c_in, width), nn.MaxPool2d(2, ceil_mode=True), conv_bn_gelu(width, width)]
            c_in = width
        layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes, bias=False)]
        self.layers = nn.Sequential(*layers)
        # Small logits at init: the softmax starts near uniform, so the first large-lr steps stay stable.
        self.logit_scale = logit_scale

    def init_whitening(self, images: torch.Tensor) -> None:
        self.whiten.init_from(images)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x) * self.logit_scale


def airbench(in_channels: int, num_classes: int) -> nn.Module:
    """airbench94's widths: for a GPU."""
    return AirbenchNet(in_channels, num_classes, widths=(64, 256, 256))


def airbench_small(in_channels: int, num_classes: int) -> nn.Module:
    """A narrow variant for CPU training: about 25x fewer multiply-adds than `airbench`, and on a 2-core CPU
    about 3x the images/s of `small_cnn` (batch 512 vs 64)."""
    return AirbenchNet(in_channels, num_classes, widths=(16, 32, 64))


def airbench_medium(in_channels: int, num_classes: int) -> nn.Module:
    """1.5x airbench_small's widths (about 2x its multiply-adds), configs/fashion_mnist.yaml's network: 93.6% on
    Fashion-MNIST in 8 epochs, where airbench_small levels off near 93.2-93.5% (BENCHMARKS.md)."""
    return AirbenchNet(in_channels, num_classes, widths=(24, 48, 96))


NETWORKS: dict[str, Callable[[int, int], nn.Module]] = {
    "small_cnn": small_cnn,
    "resnet18": resnet18_small,
    "airbench": airbench,
    "airbench_small": airbench_small,
    "airbench_medium": airbench_medium,
}
NETWORKS.update(TORCHVISION_NETWORKS)  # ImageNet-style networks for large images, optionally pretrained


def build_network(name: str, in_channels: int, num_classes: int) -> nn.Module:
    if name not in NETWORKS:
        raise UserError(f"Unknown network {name!r}. Choose one of: {', '.join(NETWORKS)} "
                        f"(set it with --model.network NAME or in the config's model: section).")
    return NETWORKS[name](in_channels, num_classes)
