"""airbench94's network (Keller Jordan, KellerJordan/cifar10-airbench, legacy/airbench94.py), and the older
layout this project used first. Plain nn.Modules, no Lightning; the training-time parts of airbench94 (Lookahead,
the whitening bias frozen after a few epochs) are callbacks in airbench_training.py.

Two layouts of the same widths:
- "airbench94": each group is conv -> max-pool 2 (floor) -> BatchNorm -> GELU -> conv -> BatchNorm -> GELU, the
  BatchNorm scales frozen at 1 (eps 1e-12), the whitening bias starting at 0. A 32 px image ends at 3x3 (28 px
  too); 23% fewer multiply-adds than "ceil" at 32 px, because the second conv of each group and the next group's
  first conv see the floor-pooled, smaller map.
- "ceil" (the default, for the recipes measured with it): conv -> BatchNorm -> GELU per conv, ceil-mode pooling
  between the two convs of a group, trainable BatchNorm scales. Ceil pooling keeps 8x8 digits from pooling away
  to nothing (floor: 7 -> 3 -> 1 -> 0); a 32 px image ends at 4x4.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Layout = Literal["ceil", "airbench94"]


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


def conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    nn.init.dirac_(conv.weight[: min(c_in, c_out)])  # identity filters: signal flows at step 0
    return conv


def batch_norm(channels: int, layout: Layout) -> nn.BatchNorm2d:
    # Momentum 0.4 (PyTorch's convention; airbench94's 0.6 in its own): a run of a few hundred steps needs
    # fast statistics.
    if layout == "ceil":
        return nn.BatchNorm2d(channels, momentum=0.4)
    norm = nn.BatchNorm2d(channels, eps=1e-12, momentum=0.4)
    norm.weight.requires_grad_(False)  # airbench94 trains only the shifts (at 64x the lr: model.norm_bias_lr_scale)
    return norm


def conv_bn_gelu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(conv3x3(c_in, c_out), batch_norm(c_out, "ceil"), nn.GELU())


def conv_group(c_in: int, c_out: int) -> nn.Sequential:
    """airbench94's ConvGroup: normalizing after the pool costs a quarter of normalizing before it."""
    return nn.Sequential(conv3x3(c_in, c_out), nn.MaxPool2d(2), batch_norm(c_out, "airbench94"), nn.GELU(),
                         conv3x3(c_out, c_out), batch_norm(c_out, "airbench94"), nn.GELU())


class AirbenchNet(nn.Module):
    """A wide, shallow conv net after airbench94: whitening, then three conv groups (conv, max-pool, conv),
    max-pool to 1x1, linear, logits scaled down. `layout`: see the module's docstring.

    `init_whitening(images)` must be called once with a batch of normalized training images before training
    (ImageClassifier does it in on_fit_start).
    """

    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, int, int] = (64, 256, 256),
                 whiten_kernel: int = 2, logit_scale: float = 1 / 9, layout: Layout = "ceil") -> None:
        super().__init__()
        if layout not in ("ceil", "airbench94"):
            raise ValueError(f"layout must be 'ceil' or 'airbench94', got {layout!r}")
        self.whiten = Whitening(in_channels, whiten_kernel)
        layers: list[nn.Module] = [self.whiten, nn.GELU()]
        c_in = self.whiten.out_channels
        for width in widths:
            if layout == "airbench94":
                layers.append(conv_group(c_in, width))
            else:
                layers += [conv_bn_gelu(c_in, width), nn.MaxPool2d(2, ceil_mode=True), conv_bn_gelu(width, width)]
            c_in = width
        if layout == "airbench94":
            nn.init.zeros_(self.whiten.bias)
        # A global max: airbench94's MaxPool2d(3) of its 3x3 map, for any image size.
        layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes, bias=False)]
        self.layers = nn.Sequential(*layers)
        # Small logits at init: the softmax starts near uniform, so the first large-lr steps stay stable.
        self.logit_scale = logit_scale

    def init_whitening(self, images: torch.Tensor) -> None:
        self.whiten.init_from(images)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x) * self.logit_scale
