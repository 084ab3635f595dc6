"""Networks and the LightningModule, without a Trainer."""

import pytest
import torch

from imgclf.errors import UserError
from imgclf.model.backbones import TORCHVISION_NETWORKS
from imgclf.model.classifier import ImageClassifier
from imgclf.model.networks import NETWORKS, PixelNormalize, build_network

SMALL_IMAGE_NETWORKS = sorted(set(NETWORKS) - set(TORCHVISION_NETWORKS))  # backbones: tests/test_transfer.py


def test_pixel_normalize():
    norm = PixelNormalize([0.5, 0.25, 0.0], [0.5, 0.25, 1.0])
    x = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    expected = torch.tensor([(0 - 0.5) / 0.5, (1 - 0.25) / 0.25, 0.2]).view(1, 3, 1, 1)
    torch.testing.assert_close(norm(x), expected.expand(1, 3, 2, 2))


@pytest.mark.parametrize("name", SMALL_IMAGE_NETWORKS)
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_networks_give_logits(name, shape):
    net = build_network(name, shape[0], 7)
    assert net(torch.randn(2, *shape)).shape == (2, 7)


def test_unknown_network():
    with pytest.raises(UserError, match="Unknown network 'vgg'.*small_cnn"):
        build_network("vgg", 1, 10)


@pytest.mark.slow
@pytest.mark.parametrize("network", ["small_cnn", "resnet18"])
def test_overfits_one_batch(network):
    torch.manual_seed(0)
    model = ImageClassifier(network=network, num_classes=10, in_channels=1, image_size=(8, 8),
                            mean=(0.3,), std=(0.4,))
    images = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8)
    labels = torch.arange(32) % 10
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = model._loss(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], losses[::10]
    model.eval()
    assert (model(images).argmax(1) == labels).float().mean() == 1.0
