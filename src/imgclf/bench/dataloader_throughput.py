"""DataLoader throughput (images/s) for Stanford-Cars-sized JPEGs, decoded per epoch vs read from the cache.

    uv run python -m imgclf.bench.dataloader_throughput --images 256 --workers 0 2

Writes synthetic 700x480-ish JPEGs (smooth colour fields plus noise, ~60-90 KB each like car photos) to a
temporary folder, then times full passes of the training DataLoader (decode, resize to 256, random crop
224, flip) without and with the pre-resized cache. The load average printed alongside says how busy the
machine was: other processes on the same cores lower these figures.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from torch.utils.data import DataLoader

from imgclf.data.cache import build_cache, open_cache
from imgclf.data.image_files import ImageFile, ImageFileDataset
from imgclf.data.transforms import train_view


def write_jpegs(folder: Path, count: int) -> list[ImageFile]:
    rng = np.random.default_rng(0)
    files = []
    for i in range(count):
        width, height = int(rng.integers(600, 800)), int(rng.integers(400, 540))
        base = Image.fromarray(rng.integers(0, 255, (height // 16, width // 16, 3), dtype=np.uint8))
        smooth = np.asarray(base.resize((width, height), Image.BICUBIC).filter(ImageFilter.GaussianBlur(3)))
        noisy = np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(noisy).save(path, quality=90)
        files.append(ImageFile(path, i % 2))
    return files


def images_per_second(dataset: ImageFileDataset, workers: int, epochs: int = 2) -> float:
    loader = DataLoader(dataset, batch_size=32, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0)
    next(iter(loader))  # start the workers before timing
    start, seen = time.perf_counter(), 0
    for _ in range(epochs):
        for images, _, _ in loader:
            seen += len(images)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--input_size", type=int, default=224)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = write_jpegs(root, args.images)
        kb = np.mean([f.path.stat().st_size for f in files]) / 1024
        print(f"{args.images} JPEGs, mean {kb:.0f} KB; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        view = train_view(args.input_size)
        for workers in args.workers:
            rate = images_per_second(ImageFileDataset(files, args.input_size, view), workers)
            print(f"decode per epoch, {workers} workers: {rate:7.0f} images/s")
        start = time.perf_counter()
        build_cache(root / "cache", root, files, args.input_size, False, 0.0, False, max(args.workers))
        rate = args.images / (time.perf_counter() - start)
        print(f"cache build ({max(args.workers)} workers): {rate:7.0f} images/s")
        cache = open_cache(root / "cache", root, files, args.input_size, False, 0.0)
        for workers in args.workers:
            rate = images_per_second(ImageFileDataset(files, args.input_size, view, cache=cache), workers)
            print(f"from the cache, {workers} workers:  {rate:7.0f} images/s")
        print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
