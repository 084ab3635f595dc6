"""EDA: the statistics on planted data, and EDA.ipynb run headless against the DataModule's numbers, on
digits, Fashion-MNIST (when present) and generated Stanford Cars and image-folder datasets."""

import hashlib
import json
import re
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from conftest import REPO, real_fashion_mnist
from image_files import write_stanford_cars  # noqa: E402
from nbclient import NotebookClient  # noqa: E402
from PIL import Image  # noqa: E402

from imgclf import eda  # noqa: E402
from imgclf.data.arrays import ImageArrays, image_hashes  # noqa: E402
from imgclf.data.datamodule import ImageDataModule  # noqa: E402
from imgclf.data.image_files import ImageFile, ImageFileDataset, file_hashes, sample_indices  # noqa: E402
from imgclf.data.transforms import eval_view, load_base  # noqa: E402
from imgclf.train.artifacts import save_confusion_matrix  # noqa: E402

NOTEBOOK = REPO / "EDA.ipynb"
CONFIGS = {"digits": "configs/default.yaml", "fashion_mnist": "configs/fashion_mnist.yaml"}
FILE_DATASETS = ("stanford_cars", "folder")


def arrays(images: list[list[int]], labels: list[int]) -> ImageArrays:
    """Tiny 1x2x2 images from flat pixel lists."""
    return ImageArrays(torch.tensor(images, dtype=torch.uint8).reshape(-1, 1, 2, 2), torch.tensor(labels))


def noise_png(path: Path, size: tuple[int, int], seed: int) -> Path:
    """A random RGB image of (width, height): no two seeds give the same bytes."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def file_split(paths: list[Path], labels: list[int], boxes=None, input_size: int = 16) -> ImageFileDataset:
    boxes = boxes or [None] * len(paths)
    files = [ImageFile(*row) for row in zip(paths, labels, boxes, strict=True)]
    return ImageFileDataset(files, input_size, eval_view(input_size))


def write_folder_dataset(root: Path) -> Path:
    """root/train|val|test/<class>/*.png of varying sizes, with planted exact duplicates:
    one extra copy inside train, one train image leaked into test with its label, one leaked relabelled."""
    sizes = [(40, 30), (24, 48), (64, 64)]
    seed = 0
    for split, per_class in (("train", 4), ("val", 2), ("test", 2)):
        for name in ("a", "b", "c"):
            for i in range(per_class):
                noise_png(root / split / name / f"{i}.png", sizes[seed % len(sizes)], seed)
                seed += 1
    shutil.copy(root / "train/b/0.png", root / "train/b/copy.png")
    shutil.copy(root / "train/a/0.png", root / "test/a/leak.png")
    shutil.copy(root / "train/a/1.png", root / "test/c/relabelled.png")
    return root


# ----------------------------------------------------------------------------- statistics functions
def test_class_distribution_and_imbalance():
    splits = {"train": arrays([[0] * 4] * 5, [0, 0, 0, 0, 1]), "test": arrays([[0] * 4] * 2, [1, 1])}
    counts = eda.class_distribution(splits, ["a", "b", "c"])
    assert counts.to_dict() == {"train": {"a": 4, "b": 1, "c": 0}, "test": {"a": 0, "b": 2, "c": 0}}
    assert eda.split_sizes(splits).to_dict() == {"train": 5, "test": 2}
    ratio = eda.imbalance_ratio(counts.loc[["a", "b"]])
    assert ratio["train"] == 4.0 and ratio["test"] == np.inf


def test_channel_stats_match_torch_across_chunks():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (37, 3, 5, 4), dtype=torch.uint8, generator=generator)
    mean, std = eda.channel_stats(images, chunk=10)  # 37 images: four chunks, the last one short
    x = images.double() / 255
    assert np.allclose(mean, x.mean(dim=(0, 2, 3)).tolist(), atol=1e-12)
    assert np.allclose(std, x.std(dim=(0, 2, 3), unbiased=False).tolist(), atol=1e-12)


def test_normalization_check_flags_only_real_mismatches():
    images = torch.full((4, 2, 3, 3), 51, dtype=torch.uint8)  # 0.2 everywhere, std 0
    table = eda.normalization_check(images, mean=[0.2, 0.5], std=[0.005, 0.0])
    assert table["mismatch"].tolist() == [False, True]
    assert table["measured mean"].round(6).tolist() == [0.2, 0.2]
    with pytest.raises(ValueError, match="2 image channels but 3"):
        eda.normalization_check(images, mean=[0.2] * 3, std=[0.1] * 3)


def test_duplicates_within_and_across_splits_with_conflicting_labels():
    a, b, c, d = [1, 2, 3, 4], [5, 6, 7, 8], [9, 9, 9, 9], [0, 0, 0, 1]
    splits = {
        "train": arrays([a, a, a, b, c], [0, 0, 1, 2, 3]),  # a three times (one copy mislabelled)
        "val": arrays([d], [0]),  # unique
        "test": arrays([b, c, d[::-1]], [2, 0, 0]),  # b leaked with its label, c leaked relabelled
    }
    found = eda.find_duplicates(splits)
    assert len(found) == 3 + 2 + 2  # every image whose bytes occur twice or more
    summary = eda.duplicate_summary(found, list(splits))
    assert summary.loc["train"].tolist() == [2, 1]
    assert summary.loc["test"].tolist() == [0, 0]
    assert summary.loc["train & test"].tolist() == [2, 1]
    assert summary.loc["train & val"].tolist() == [0, 0] and summary.loc["val & test"].tolist() == [0, 0]


def test_image_hashes_tell_shapes_apart():
    flat = torch.zeros(1, 1, 2, 8, dtype=torch.uint8)
    assert image_hashes(flat) != image_hashes(flat.reshape(1, 1, 4, 4))


def test_most_confused_pairs_from_a_runs_csv(tmp_path):
    confusion = torch.diag(torch.full((3,), 10))
    confusion[2, 0], confusion[0, 1] = 5, 1
    save_confusion_matrix(confusion, ["0", "1", "2"], tmp_path)
    pairs = eda.most_confused_pairs(tmp_path / "confusion_matrix.csv", top=5)
    assert pairs[["true", "predicted", "count"]].values.tolist() == [["2", "0", 5], ["0", "1", 1]]
    assert pairs["share of true class"].tolist() == pytest.approx([5 / 15, 1 / 11])


def test_sizes_boxes_and_their_plots(tmp_path):
    sizes = np.array([[200, 100], [50, 100]])
    boxes = np.array([[0, 0, 100, 50], [10, 10, 60, 110]])  # the second one reaches past the image
    table = eda.size_table(sizes)
    assert table["aspect ratio"].tolist() == [2.0, 0.5]
    assert eda.box_area_fraction(sizes, boxes).tolist() == [0.25, 1.0]
    assert eda.size_table(sizes, boxes)["box area fraction"].tolist() == [0.25, 1.0]
    assert len(eda.plot_sizes({"train": eda.size_table(sizes, boxes)}).axes) == 4
    assert len(eda.plot_sizes({"train": table}).axes) == 3
    unreadable = np.array([[np.nan, np.nan], [50, 100]])  # a broken file must not break the histograms
    assert len(eda.plot_sizes({"train": eda.size_table(unreadable, boxes)}).axes[3].patches) == 40
    plt.close("all")


# ----------------------------------------------------------------------------- splits of image files
def test_file_split_sizes_boxes_and_overlays(tmp_path):
    paths = [noise_png(tmp_path / f"{k}.png", size, k) for k, size in enumerate([(60, 40), (30, 50), (20, 20)])]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    boxes = [(10, 5, 40, 25), None, (0, 0, 20, 20), None]
    split = file_split([*paths, broken], [1, 0, 1, 0], boxes)
    assert split.labels.tolist() == [1, 0, 1, 0]
    sizes = split.stored_sizes()
    assert sizes[:3].tolist() == [[60, 40], [30, 50], [20, 20]] and np.isnan(sizes[3]).all()
    found = split.boxes()
    assert found[0].tolist() == [10, 5, 40, 25] and np.isnan(found[1]).all() and np.isnan(found[3]).all()
    assert eda.box_area_fraction(sizes, found)[[0, 2]].tolist() == [0.25, 1.0]
    assert file_split(paths, [0, 0, 0]).boxes() is None
    fig = eda.plot_boxes(split, ["car", "truck"], count=6)  # only the two files that have a box
    assert [ax.get_title() for ax in fig.axes] == ["truck", "truck"]
    assert [p.get_width() for ax in fig.axes for p in ax.patches] == [30, 20]
    with pytest.raises(ValueError, match="bounding box"):
        eda.plot_boxes(file_split(paths, [0, 0, 0]), ["car"])
    plt.close("all")


def test_file_split_pixels_are_the_models_evaluation_view(tmp_path):
    paths = [noise_png(tmp_path / f"{k}.png", (40 + k, 30), k) for k in range(5)]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG truncated")
    split = file_split([*paths, broken], [0, 1, 0, 1, 0, 1])
    split.view = None  # a training split's view is random; statistics must not depend on it
    expected = torch.stack([eval_view(16)(load_base(p, 16)) for p in paths])
    assert torch.equal(split.model_input(3), expected[3])
    batches = list(split.pixel_batches(batch_size=4))
    assert torch.equal(torch.cat(batches), expected)  # the broken file is left out, nothing else
    mean, std = eda.channel_stats(split.pixel_batches())
    x = expected.double() / 255
    assert np.allclose(mean, x.mean(dim=(0, 2, 3)).tolist()) and np.allclose(std, x.std(dim=(0, 2, 3),
                                                                                          unbiased=False).tolist())
    sample = sample_indices(6, 3, seed=1)
    assert len(set(sample)) == 3 and sample == sorted(sample) and sample == sample_indices(6, 3, seed=1)
    assert torch.cat(list(split.pixel_batches(limit=3, seed=1))).shape[0] == 3 - (5 in sample)
    with pytest.raises(ValueError, match="No images"):
        eda.channel_stats(file_split([broken], [0]).pixel_batches())


def test_duplicate_files_found_by_their_bytes(tmp_path):
    a, b = noise_png(tmp_path / "a.png", (8, 8), 0), noise_png(tmp_path / "b.png", (8, 8), 1)
    copy = tmp_path / "copy.png"
    shutil.copy(a, copy)
    splits = {"train": file_split([a, b], [0, 1]), "test": file_split([copy], [1])}
    assert file_hashes([a, copy, b])[0] == file_hashes([copy])[0] != file_hashes([b])[0]
    summary = eda.duplicate_summary(eda.find_duplicates(splits), list(splits))
    assert summary.loc["train & test"].tolist() == [1, 1] and summary.loc["train"].tolist() == [0, 0]


def test_open_datasets_skips_what_it_cannot_read_and_says_why(tmp_path, capsys):
    missing = tmp_path / "cars.yaml"
    missing.write_text(yaml.safe_dump({"data": {"dataset": "stanford_cars", "root": str(tmp_path / "none")}}))
    wrong_key = tmp_path / "typo.yaml"
    wrong_key.write_text(yaml.safe_dump({"data": {"dataset": "digits", "batchsize": 8}}))
    modules = eda.open_datasets([missing, REPO / "configs/default.yaml", wrong_key])
    assert list(modules) == ["digits"] and len(modules["digits"].splits["test"]) == 360
    printed = capsys.readouterr().out
    assert f"skipped {missing}: Stanford Cars was not found" in printed and "dvc pull" in printed
    assert f"skipped {wrong_key}:" in printed and "batchsize" in printed


def test_sample_grid_shows_each_class_row():
    data = arrays([[k * 10] * 4 for k in range(6)], [0, 1, 2, 0, 1, 0])
    fig = eda.sample_grid(data, ["a", "b", "c"], per_class=2)
    shown = [len(ax.images) for ax in fig.axes]
    assert shown == [1, 1, 1, 1, 1, 0]  # rows a, b, c; class c has only one image
    plt.close(fig)


def test_load_datamodule_reads_the_configs_data_section():
    config = REPO / "configs/fashion_mnist.yaml"
    dm = eda.load_datamodule(config)
    data = yaml.safe_load(config.read_text())["data"]
    assert dm.spec.name == "fashion_mnist" and dm.batch_size == data["global_batch_size"] != 64  # 1 process: all of it
    assert dm.val_fraction == data["val_fraction"]


# ----------------------------------------------------------------------------- the notebook itself
def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    assert any("parameters" in cell.metadata.get("tags", []) for cell in code)


REPORT = """import json
print("EDA-JSON" + json.dumps({
    "sizes": sizes.to_dict(orient="index"),
    "counts": {name: table.to_dict() for name, table in counts.items()},
    "channels": {name: channels.loc[name].to_dict(orient="list") for name in modules},
    "duplicates": {name: eda.duplicate_summary(found, list(modules[name].splits)).to_dict()
                   for name, found in duplicates.items()},
    "size_tables": {name: table.to_dict() for name, table in size_tables.items()},
}))"""


@pytest.fixture(scope="module")
def file_configs(tmp_path_factory) -> dict[str, Path]:
    """Training configs for a generated Stanford Cars (devkit layout, JPEGs of 4 sizes, boxes) and a
    generated image folder (train/val/test, PNGs of 3 sizes, planted duplicates)."""
    root = tmp_path_factory.mktemp("file_datasets")
    data = {"stanford_cars": {"dataset": "stanford_cars", "root": str(write_stanford_cars(root / "cars"))},
            "folder": {"dataset": "folder", "root": str(write_folder_dataset(root / "folder"))}}
    configs = {}
    for name, section in data.items():
        configs[name] = root / f"{name}.yaml"
        section.update(input_size=24, num_workers=0, val_fraction=0.25)
        configs[name].write_text(yaml.safe_dump({"data": section}))
    return configs


@pytest.fixture(scope="module")
def executed(tmp_path_factory, file_configs):
    """EDA.ipynb run top to bottom in a fresh kernel, on its own configs plus the generated file datasets,
    with a run folder holding a known confusion matrix."""
    run = tmp_path_factory.mktemp("run")
    confusion = torch.diag(torch.full((10,), 30))
    confusion[3, 8], confusion[5, 6] = 7, 2
    save_confusion_matrix(confusion, [str(i) for i in range(10)], run)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # Parameters injected papermill-style: a cell right after the tagged one overrides its values.
    params = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    extra = [str(path) for path in file_configs.values()]
    nb.cells.insert(params + 1, nbformat.v4.new_code_cell(
        f"RUN = {str(run)!r}\nSAMPLES_PER_CLASS = 3\nCONFIGS = CONFIGS + {extra!r}"))
    nb.cells.append(nbformat.v4.new_code_cell(REPORT))
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO)}})  # run from the repo root
    client.execute()
    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    return nb, json.loads(printed.split("EDA-JSON", 1)[1])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
def test_notebook_statistics_match_the_datamodule(executed, name):
    if name == "fashion_mnist":
        real_fashion_mnist()  # skipped (or failed, in CI) without it
    dm = ImageDataModule(**yaml.safe_load((REPO / CONFIGS[name]).read_text())["data"])
    dm.setup()
    report = executed[1]
    assert report["sizes"][name] == {**{s: len(a) for s, a in dm.splits.items()}, "classes": dm.num_classes}
    for split, data in dm.splits.items():
        expected = torch.bincount(data.labels, minlength=dm.num_classes).tolist()
        assert list(report["counts"][name][split].values()) == expected
        distinct = len(torch.unique(data.images.flatten(1), dim=0))
        assert report["duplicates"][name]["duplicates"][split] == len(data) - distinct
    train = dm.splits["train"].images.double() / 255
    channels = report["channels"][name]
    assert channels["measured mean"] == pytest.approx([train.mean().item()], abs=1e-9)
    assert channels["measured std"] == pytest.approx([train.std(unbiased=False).item()], abs=1e-9)
    assert channels["config mean"] == dm.mean and channels["mismatch"] == [False]


@pytest.mark.slow
@pytest.mark.parametrize("name", FILE_DATASETS)
def test_notebook_statistics_match_the_datamodule_for_image_files(executed, file_configs, name):
    dm = ImageDataModule(**yaml.safe_load(file_configs[name].read_text())["data"])
    dm.setup()
    report = executed[1]
    assert report["sizes"][name] == {**{s: len(f) for s, f in dm.splits.items()}, "classes": dm.num_classes}
    for split, files in dm.splits.items():
        labels = [f.label for f in files.files]
        assert list(report["counts"][name][split].values()) == np.bincount(labels, minlength=dm.num_classes).tolist()
    # Pixel statistics: every training image as evaluation sees it (the sample limit is above these sizes).
    train = torch.stack([eval_view(24)(load_base(f.path, 24)) for f in dm.splits["train"].files]).double() / 255
    channels = report["channels"][name]
    assert channels["measured mean"] == pytest.approx(train.mean(dim=(0, 2, 3)).tolist(), abs=1e-9)
    assert channels["measured std"] == pytest.approx(train.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-9)
    assert channels["config mean"] == dm.mean
    columns = ("measured mean", "config mean", "measured std", "config std")
    assert channels["mismatch"] == [abs(m - c) > 0.01 or abs(s - d) > 0.01
                                    for m, c, s, d in zip(*(channels[k] for k in columns), strict=True)]
    # Duplicates: the same file bytes, counted independently with md5.
    digests = {split: [hashlib.md5(f.path.read_bytes()).hexdigest() for f in files.files]
               for split, files in dm.splits.items()}
    for split, found in digests.items():
        assert report["duplicates"][name]["duplicates"][split] == len(found) - len(set(found))
    assert report["duplicates"][name]["duplicates"]["train & test"] == len(set(digests["train"]) & set(digests["test"]))
    # Sizes as stored, read here with Pillow.
    stored = []
    for files in dm.splits.values():
        for f in files.files:
            with Image.open(f.path) as image:
                stored.append(image.size)
    table = report["size_tables"][name]
    assert table["width"]["count"] == len(stored)
    assert (table["width"]["min"], table["width"]["max"]) == (min(w for w, _ in stored), max(w for w, _ in stored))
    assert table["aspect ratio"]["max"] == pytest.approx(max(w / h for w, h in stored), abs=1e-3)


@pytest.mark.slow
def test_notebook_finds_the_planted_duplicate_files(executed):
    found = executed[1]["duplicates"]["folder"]
    assert (found["duplicates"]["train"], found["conflicting labels"]["train"]) == (1, 0)
    assert (found["duplicates"]["train & test"], found["conflicting labels"]["train & test"]) == (2, 1)
    assert executed[1]["duplicates"]["stanford_cars"]["duplicates"] == {
        "train": 0, "val": 0, "test": 0, "train & val": 0, "train & test": 0, "val & test": 0}


@pytest.mark.slow
def test_notebook_shows_box_areas_and_overlays_for_stanford_cars(executed, file_configs):
    dm = ImageDataModule(**yaml.safe_load(file_configs["stanford_cars"].read_text())["data"])
    dm.setup()
    fractions = []
    for files in dm.splits.values():
        for f in files.files:
            with Image.open(f.path) as image:
                x1, y1, x2, y2 = f.box
                fractions.append((x2 - x1) * (y2 - y1) / (image.width * image.height))
    table = executed[1]["size_tables"]["stanford_cars"]
    assert table["box area fraction"]["mean"] == pytest.approx(np.mean(fractions), abs=1e-3)
    assert "box area fraction" not in executed[1]["size_tables"]["folder"]  # folders have no boxes
    cell = next(c for c in executed[0].cells if c.cell_type == "code" and "plot_boxes" in c.source)
    figures = [o for o in cell.outputs if "image/png" in o.get("data", {})]
    assert len(figures) == 3  # size histograms of both datasets, box overlays for Stanford Cars only


@pytest.mark.slow
def test_notebook_shows_the_runs_confusion_matrix_and_worst_pair(executed):
    nb = executed[0]
    cell = next(c for c in nb.cells if c.cell_type == "code" and "most_confused_pairs" in c.source)
    assert any("image/png" in o.get("data", {}) for o in cell.outputs)
    tables = [o["data"]["text/plain"] for o in cell.outputs if "text/plain" in o.get("data", {})]
    assert any(re.search(r"^0\s+3\s+8\s+7\s+0\.189$", t, re.MULTILINE) for t in tables)  # 7 of 37 "3"s
