"""The seed-style baseline: torchvision's FashionMNIST, PIL images through ToTensor, a DataLoader, the seed's
small CNN and Adam (lr 1e-3, batch 64), written as the usual plain training loop."""

from __future__ import annotations

import gzip
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import transforms
from torchvision.datasets import FashionMNIST

from imgclf.bench.curve import Curve
from imgclf.data.readers import FASHION_MNIST_FILES, find_idx_file
from imgclf.errors import UserError
from imgclf.model.networks import small_cnn

BATCH_SIZE, LR = 64, 1e-3


def torchvision_layout(source: Path, folder: Path) -> Path:
    """Copy the idx files into <folder>/FashionMNIST/raw/, uncompressed, where torchvision reads them."""
    raw = folder / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for stem in (s for pair in FASHION_MNIST_FILES.values() for s in pair):
        path = find_idx_file(source, stem)
        if path is None:
            raise UserError(f"Fashion-MNIST file {stem}[.gz] not found under {source}; pass --data-root.")
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as src, open(raw / stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return folder


@torch.no_grad()
def accuracy(net: torch.nn.Module, loader: DataLoader, device: torch.device) -> float:
    net.eval()
    correct = total = 0
    for images, labels in loader:
        correct += (net(images.to(device)).argmax(1) == labels.to(device)).sum().item()
        total += len(labels)
    net.train()
    return correct / total


def run_baseline(source: Path, device: torch.device, budget_seconds: float, stop_at: float,
                 evals_per_epoch: int, limit: tuple[int, int] | None = None, seed: int = 0) -> Curve:
    """Train until `stop_at` test accuracy or `budget_seconds` of training; evaluate `evals_per_epoch` times
    an epoch. `limit` = (train images, test images) cuts the data for a quick check."""
    torch.manual_seed(seed)
    curve = Curve("seed-style baseline")
    with tempfile.TemporaryDirectory() as tmp:
        root = torchvision_layout(source, Path(tmp))
        normalize = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.2860,), (0.3530,))])
        train = FashionMNIST(str(root), train=True, transform=normalize)
        test = FashionMNIST(str(root), train=False, transform=normalize)
        if limit:
            train, test = Subset(train, range(limit[0])), Subset(test, range(limit[1]))
        loader = DataLoader(train, batch_size=BATCH_SIZE, shuffle=True)
        test_loader = DataLoader(test, batch_size=1000)
        net = small_cnn(1, 10).to(device)
        optimizer = torch.optim.Adam(net.parameters(), lr=LR)
        eval_at = {round(len(loader) * (j + 1) / evals_per_epoch) for j in range(evals_per_epoch)}
        seconds, images = 0.0, 0
        while True:
            start = time.perf_counter()
            for step, (x, y) in enumerate(loader, start=1):
                x, y = x.to(device), y.to(device)
                loss = F.cross_entropy(net(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                images += len(y)
                if step in eval_at:
                    if device.type == "cuda":
                        torch.cuda.synchronize()  # count the queued training kernels as training time
                    seconds += time.perf_counter() - start
                    curve.add(seconds, images, accuracy(net, test_loader, device))
                    if seconds >= budget_seconds or curve.best_accuracy >= stop_at:
                        return curve
                    start = time.perf_counter()
