"""The image cache on a full disk: one `error:` before decoding, no images.npy.tmp left (issue 25, point 4).
It was a memory map over a sparse file, so the full disk showed only as SIGBUS (exit 135)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from image_files import write_colour_folder

BUILD = """
import sys
from pathlib import Path
from imgclf.data.cache import build_cache
from imgclf.data.image_files import ImageFile
from imgclf.errors import exit_on_user_error
root, cache = Path(sys.argv[1]), Path(sys.argv[2])
files = [ImageFile(path, 0) for path in sorted(root.rglob("*.jpg"))]
with exit_on_user_error():
    build_cache(cache, root, files, 224, False, 0.1, skip_bad_images=False, num_workers=0)
"""


@pytest.mark.slow  # starts a Python process
def test_a_full_disk_gives_one_error_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    root = write_colour_folder(tmp_path / "images", {"a": 4, "b": 4}, size=(70, 50))  # 8 x 196 KB at 224
    cache = tmp_path / "cache"
    cache.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(cache)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root (mount -t tmpfs)")
    try:
        done = subprocess.run([sys.executable, "-c", BUILD, str(root), str(cache)], cwd=REPO, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 1, (done.returncode, done.stderr[-3000:])
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
        assert done.stderr.count("error: ") == 1 and "--data.cache_dir" in done.stderr, done.stderr
        assert sorted(p.name for p in cache.iterdir()) == []  # no images.npy.tmp, no index
    finally:
        subprocess.run(["umount", str(cache)])
