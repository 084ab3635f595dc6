"""Speed of the setup check of image files (decode.check_image) against a full decode, in images/s.

    uv run python bench/image_check.py --images 2000 --threads 1 2

Writes the same synthetic Stanford-Cars-sized JPEGs as dataloader_throughput.py, truncates every 100th,
then times find_bad_images (JPEGs decoded at 1/8 scale, in threads) and a full decode (decode_image) of
each file in one thread. The load average printed alongside says how busy the machine was.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

from dataloader_throughput import write_jpegs

from imgclf.data.decode import decode_image
from imgclf.data.files import find_bad_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = write_jpegs(Path(tmp), args.images)
        truncated = {f.path for f in files[::100]}
        for path in truncated:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        print(f"{len(files)} JPEGs ({len(truncated)} truncated); load average {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} cores")
        for threads in args.threads:
            start = time.perf_counter()
            bad = find_bad_images(files, threads)
            rate = len(files) / (time.perf_counter() - start)
            found = "all" if set(bad) == truncated else f"{len(set(bad) & truncated)} of {len(truncated)}"
            print(f"check, {threads} thread(s): {rate:7.0f} images/s, found {found} truncated files")
        start, failed = time.perf_counter(), 0
        for f in files:
            try:
                decode_image(f.path)
            except OSError:
                failed += 1
        rate = len(files) / (time.perf_counter() - start)
        print(f"full decode, 1 thread: {rate:7.0f} images/s, {failed} failed")
        print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
