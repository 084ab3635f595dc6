"""What the project knows about each dataset: classes, normalization, augmentation, where its files live.

Lookup order for files: the data folder, then torchvision's download where the dataset
allows it, then a `UserError` naming the `dvc pull` to run.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from imgclf.data import folders, readers, stanford_cars, transforms
from imgclf.data.arrays import ImageArrays
from imgclf.data.augment import AugmentPolicy
from imgclf.data.image_files import IMAGENET_MEAN, IMAGENET_STD, ImageFiles, SplitOptions
from imgclf.data.readers import DEBIAN_FASHION_MNIST
from imgclf.errors import UserError


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    classes: tuple[str, ...]
    mean: tuple[float, ...]  # per channel, on the 0-1 scale
    std: tuple[float, ...]
    image_size: tuple[int, int]  # (height, width)
    augment: AugmentPolicy
    read: Callable[[Path, bool], ImageArrays] | None  # None for datasets of image files (list_files)
    is_present: Callable[[Path], bool]
    download: Callable[[Path], None] | None = None
    extra_roots: tuple[Path, ...] = field(default_factory=tuple)  # searched after data/<name>
    # Datasets of image files too large for memory: the DataModule lists the files (and learns the classes)
    # with this, then decodes them in DataLoader workers. `classes` stays empty in the catalog.
    list_files: Callable[[Path, SplitOptions], ImageFiles] | None = None
    # False for the user's own images: there is no data/<name>.dvc pointer, so no `dvc pull` to suggest,
    # and an absent data/<name> is not a problem until someone trains on it without --data.root.
    dvc_tracked: bool = True

    @property
    def channels(self) -> int:
        return len(self.mean)

    def base_size(self, image_size: tuple[int, int] | list[int]) -> int:
        """Side of the square evaluation resizes a whole image to before taking the centre `image_size`: 8/7 of
        it for image files (transforms.base_size), the image size itself for datasets held in memory."""
        return transforms.base_size(image_size[0]) if self.list_files is not None else max(image_size)

    @property
    def pull_command(self) -> str:
        """The command that fetches a DVC-tracked dataset (check_env and `fetch_hint` both name it)."""
        return f"`dvc pull data/{self.name}.dvc`"

    @property
    def fetch_hint(self) -> str:
        """The sentence telling what to do when the files are missing."""
        if not self.dvc_tracked:
            return "Set --data.root to the folder holding your images."
        return f"Fetch it with {self.pull_command} (or put the files there, or set --data.root)."

    def locate(self, root: str | Path | None, data_dir: str | Path = "data") -> Path:
        """The folder to read: `root` when given, else data/<name>, else a known system location."""
        if root is not None:
            return Path(root)
        default = Path(data_dir) / self.name
        for candidate in (default, *self.extra_roots):
            if self.is_present(candidate):
                return candidate
        return default

    def fetch(self, root: Path, download: bool = True) -> None:
        """Make sure the files are under `root`: download them where allowed, else explain what to do.

        The download lands in a folder beside `root` and moves in only when complete, so a failed one (no
        network) leaves nothing behind; a system folder (`extra_roots`, a package's) is never written to."""
        if self.is_present(root):
            return
        missing = f"The {self.name} dataset was not found in {root}/."
        if any(root.resolve().is_relative_to(system.resolve()) for system in self.extra_roots):
            raise UserError(f"{missing} It is a system folder that this project does not write to: "
                            f"{readers.restore_hint(root, self.name)}")
        if self.download is None or not download:
            raise UserError(f"{missing} {self.fetch_hint}")
        created = [folder for folder in (root, *root.parents) if not folder.exists()]
        staging = root.parent / f".{root.name}.download"
        shutil.rmtree(staging, ignore_errors=True)  # what an interrupted earlier try left
        try:
            self.download(staging)
            if not self.is_present(staging):
                raise UserError(f"{missing} The download finished but the files are still missing. "
                                f"{self.fetch_hint}")
            root.mkdir(parents=True, exist_ok=True)
            for entry in staging.iterdir():
                shutil.rmtree(root / entry.name, ignore_errors=True)  # a partial copy from before
                entry.rename(root / entry.name)
        except UserError:
            _remove_created(staging, created)
            raise
        except Exception as e:  # no network, DNS failure, HTTP error, checksum mismatch...
            _remove_created(staging, created)
            raise UserError(f"{missing} Downloading it through torchvision failed ({type(e).__name__}: "
                            f"{_one_line(e)}). {self.fetch_hint}") from e
        staging.rmdir()


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())  # torchvision's message spans lines; an error here is one paragraph


def _remove_created(staging: Path, created: list[Path]) -> None:
    """Undo a failed download: the staging folder, and the (now empty) folders made on the way to it."""
    shutil.rmtree(staging, ignore_errors=True)
    for folder in created:  # deepest first
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _digits_present(root: Path) -> bool:
    return True  # ships inside scikit-learn


def _fashion_mnist_present(root: Path) -> bool:
    return all(readers.find_idx_file(root, stem) is not None
               for pair in readers.FASHION_MNIST_FILES.values() for stem in pair)


def _cifar10_present(root: Path) -> bool:
    folder = root / readers.CIFAR10_FOLDER
    return all((folder / name).is_file()
               for name in ["batches.meta", *readers.CIFAR10_BATCHES[True], *readers.CIFAR10_BATCHES[False]])


def _download_fashion_mnist(root: Path) -> None:
    from torchvision.datasets import FashionMNIST

    FashionMNIST(str(root), download=True)  # writes root/FashionMNIST/raw/*, which find_idx_file reads


def _download_cifar10(root: Path) -> None:
    from torchvision.datasets import CIFAR10

    CIFAR10(str(root), download=True)  # writes root/cifar-10-batches-py/, md5-checked by torchvision


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec(
            name="digits",
            classes=tuple(str(i) for i in range(10)),
            mean=(0.3053,), std=(0.3759,),
            image_size=(8, 8),
            augment=AugmentPolicy(translate=1),
            read=lambda root, train: readers.read_digits(train),
            is_present=_digits_present,
        ),
        DatasetSpec(
            name="fashion_mnist",
            classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
            mean=(0.2860,), std=(0.3530,),
            image_size=(28, 28),
            augment=AugmentPolicy(flip=True, translate=2),
            read=readers.read_fashion_mnist,
            is_present=_fashion_mnist_present,
            download=_download_fashion_mnist,
            extra_roots=(DEBIAN_FASHION_MNIST,),
        ),
        DatasetSpec(
            name="cifar10",
            classes=("airplane", "automobile", "bird", "cat", "deer",
                     "dog", "frog", "horse", "ship", "truck"),
            mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
            image_size=(32, 32),
            augment=AugmentPolicy(flip=True, translate=4),
            read=readers.read_cifar10,
            is_present=_cifar10_present,
            download=_download_cifar10,
        ),
        DatasetSpec(
            name="stanford_cars",
            classes=(),  # 196 names, read from devkit/cars_meta.mat
            mean=IMAGENET_MEAN, std=IMAGENET_STD,  # what pretrained backbones expect
            image_size=(224, 224),  # replaced by --data.input_size
            augment=AugmentPolicy(),  # random crops and flips happen in the DataLoader workers
            read=None,
            is_present=stanford_cars.is_present,  # torchvision cannot download it any more
            list_files=stanford_cars.read_stanford_cars,
        ),
        DatasetSpec(
            name="folder",
            classes=(),  # the class folders' names
            mean=IMAGENET_MEAN, std=IMAGENET_STD,
            image_size=(224, 224),
            augment=AugmentPolicy(),
            read=None,
            is_present=lambda root: root.is_dir(),
            list_files=folders.read_image_folder,
            dvc_tracked=False,
        ),
    ]
}


def get_dataset(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise UserError(f"Unknown dataset {name!r}. Choose one of: {', '.join(DATASETS)} "
                        f"(set it with --data.dataset NAME or in the config's data: section).")
    return DATASETS[name]
