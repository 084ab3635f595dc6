"""The fast recipe: batch augmentations, whitening, TTA, a short real training run, the bench's tiny mode."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO

from imgclf.data.augment import AugmentPolicy, crop_at, random_flip, random_translate, tta_logits
from imgclf.data.datamodule import ImageDataModule
from imgclf.distributed import broadcast_to_device
from imgclf.model.airbench import Whitening
from imgclf.model.classifier import ImageClassifier
from imgclf.train.run import main


def distinct_images(n: int = 64, h: int = 6, w: int = 7) -> torch.Tensor:
    """uint8 images in 1..255 (no zeros, so zero fill is visible) that differ from all their own shifts."""
    return torch.randint(1, 256, (n, 2, h, w), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def shift(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """`image` moved down by dy and right by dx pixels, zero-filled: the reference implementation."""
    out = torch.zeros_like(image)
    h, w = image.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        image[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def test_flip_mirrors_some_images_exactly_and_keeps_the_rest() -> None:
    images = distinct_images()
    torch.manual_seed(0)
    out = random_flip(images)
    mirrored = [torch.equal(o, i.flip(-1)) for o, i in zip(out, images, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, images, strict=True)]
    assert all(m != k for m, k in zip(mirrored, kept, strict=True))  # each image exactly one of the two
    assert 10 < sum(mirrored) < 54  # p = 0.5 over 64 images


def test_translate_shifts_each_image_within_range_zero_filled() -> None:
    images, max_shift = distinct_images(), 2
    torch.manual_seed(1)
    out = random_translate(images, max_shift)
    shifts = range(-max_shift, max_shift + 1)
    seen = set()
    for o, image in zip(out, images, strict=True):
        matches = [(dy, dx) for dy in shifts for dx in shifts if torch.equal(o, shift(image, dy, dx))]
        assert len(matches) == 1, "every output is its input moved by one (dy, dx) within the range"
        seen.add(matches[0])
    assert len(seen) > 10  # offsets are drawn per image, not once per batch


def test_crop_at_matches_the_reference_shift() -> None:
    images = distinct_images(3)
    padded = F.pad(images, (1,) * 4)
    dy, dx = torch.tensor([0, 1, 2]), torch.tensor([2, 1, 0])
    out = crop_at(padded, dy, dx, *images.shape[-2:])
    for k in range(3):  # a window at (dy, dx) of the 1-padded image = the image moved by (1 - dy, 1 - dx)
        assert torch.equal(out[k], shift(images[k], 1 - int(dy[k]), 1 - int(dx[k])))


def test_datamodule_augments_training_batches_only_and_keeps_labels() -> None:
    dm = ImageDataModule(dataset="fashion_mnist", root="unused")  # augment: flip + translate 2
    assert dm.spec.augment == AugmentPolicy(flip=True, translate=2)
    images, labels = distinct_images(), torch.arange(64)
    dm.trainer = SimpleNamespace(training=True)
    aug_images, aug_labels = dm.on_after_batch_transfer((images, labels), 0)
    assert torch.equal(aug_labels, labels) and aug_images.shape == images.shape
    assert not torch.equal(aug_images, images)
    dm.trainer = SimpleNamespace(training=False)
    assert dm.on_after_batch_transfer((images, labels), 0)[0] is images
    dm.augment, dm.trainer = False, SimpleNamespace(training=True)  # --data.augment false
    assert dm.on_after_batch_transfer((images, labels), 0)[0] is images


def test_tta_averages_the_six_views() -> None:
    images = distinct_images(4).float()
    views: list[torch.Tensor] = []

    def model(x: torch.Tensor) -> torch.Tensor:
        views.append(x)
        return x.mean(dim=(1, 2, 3))[:, None]

    logits = tta_logits(model, images)
    assert len(views) == 6
    up_left, down_right = shift(images, -1, -1), shift(images, 1, 1)
    expected = [images, images.flip(-1), down_right, down_right.flip(-1), up_left, up_left.flip(-1)]
    assert all(torch.equal(v, e) for v, e in zip(views, expected, strict=True))
    weights = [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]
    assert torch.allclose(logits, sum(w * model(e) for w, e in zip(weights, expected, strict=True)))


def test_whitening_decorrelates_patches() -> None:
    # Strongly correlated neighbouring pixels: a smoothed noise image.
    noise = torch.randn(64, 1, 20, 20, generator=torch.Generator().manual_seed(0))
    images = F.avg_pool2d(noise, 3, stride=1, padding=1)
    layer = Whitening(1, kernel_size=2, eps=1e-6)
    layer.init_from(images)
    with torch.no_grad():
        out = F.conv2d(images, layer.weight[:4])  # the first half: the other is its negation
    features = out.permute(0, 2, 3, 1).reshape(-1, 4)
    covariance = features.T @ features / len(features)
    assert torch.allclose(covariance, torch.eye(4), atol=0.02)
    assert torch.equal(layer.weight[4:], -layer.weight[:4])


class PicklingBroadcast:
    """Lightning's broadcast as DDP does it: the object pickled on rank 0 and unpickled on every rank, where
    a tensor lands on the device it was sent from (a CUDA tensor on rank 0's GPU)."""

    def __init__(self) -> None:
        self.sent: list[torch.Tensor] = []

    def broadcast(self, obj: torch.Tensor) -> torch.Tensor:
        self.sent.append(obj)
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        buffer.seek(0)
        return torch.load(buffer, weights_only=True)


def test_whitening_batch_is_sent_from_the_host_and_lands_on_the_local_device() -> None:
    strategy = PicklingBroadcast()
    images = distinct_images(4)
    received = broadcast_to_device(strategy, images, torch.device("meta"))  # stands in for this rank's GPU
    assert strategy.sent[0].device.type == "cpu"  # unpickles onto the host, never onto cuda:0
    assert received.device.type == "meta" and received.shape == images.shape


@pytest.fixture(scope="module")
def trained_run(fashion_mnist_real: Path, tmp_path_factory) -> Path:
    """The CPU fast recipe, cut to ~8k training images seen and 2000 test images."""
    runs = tmp_path_factory.mktemp("runs")
    return main([
        "--config", str(REPO / "configs" / "fast_fashion_mnist_cpu.yaml"), "--runs_dir", str(runs),
        "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "2",
        "--trainer.limit_train_batches", "16", "--trainer.limit_val_batches", "1",
        "--trainer.limit_test_batches", "2", "--trainer.enable_progress_bar", "false",
        "--data.batch_size", "256", "--data.eval_batch_size", "1000",
    ])


@pytest.mark.slow
def test_fast_network_learns_fashion_mnist(trained_run: Path) -> None:
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["test/acc"] > 0.70  # chance is 0.10; a full CPU run reaches 0.9+


@pytest.mark.slow
def test_tta_does_not_lower_accuracy(trained_run: Path, fashion_mnist_real: Path) -> None:
    model = ImageClassifier.load_from_checkpoint(trained_run / "best.ckpt", map_location="cpu").eval()
    dm = ImageDataModule(dataset="fashion_mnist", root=str(fashion_mnist_real))
    dm.setup("test")
    images, labels = dm.splits["test"].images[:2000], dm.splits["test"].labels[:2000]
    with torch.no_grad():
        plain = (model(images).argmax(1) == labels).float().mean().item()
        tta = (tta_logits(model, images).argmax(1) == labels).float().mean().item()
    # Noise: the two accuracies are measured on the same 2000 images; 1 point is ~2 standard errors of a
    # difference between such paired predictions.
    assert tta >= plain - 0.01, (tta, plain)


@pytest.mark.slow
def test_benchmark_tiny_mode(fashion_mnist_real: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "imgclf.bench.time_to_accuracy", "--tiny", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    # Each row's seconds are read off the curves it reports: the first evaluation at or above the threshold.
    for row in results["time_to_accuracy"]:
        for side in ("pipeline", "baseline"):
            reached = [p["train_seconds"] for p in results[side]["points"] if p["test_accuracy"] >= row["accuracy"]]
            assert row[f"{side}_seconds"] == (reached[0] if reached else None), (side, row)
    for curve in (results["pipeline"], results["baseline"]):
        assert curve["points"] and curve["images_per_second"] > 0
        assert all(0.0 <= p["test_accuracy"] <= 1.0 for p in curve["points"])
    assert results["overhead"]["plain_step_ms"] > 0 and results["overhead"]["lightning_step_ms"] > 0
    assert results["config"].endswith("fashion_mnist.yaml") and "met" in results["goals"]  # our best CPU recipe
    assert "Time to Fashion-MNIST test accuracy" in proc.stdout
