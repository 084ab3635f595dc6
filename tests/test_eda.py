"""EDA: the statistics on planted data, and EDA.ipynb run headless against the DataModule's numbers."""

import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from nbclient import NotebookClient  # noqa: E402
from PIL import Image  # noqa: E402

from imgclf import eda  # noqa: E402
from imgclf.artifacts import save_confusion_matrix  # noqa: E402
from imgclf.data import ImageArrays, ImageDataModule  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "EDA.ipynb"
CONFIGS = {"digits": "configs/default.yaml", "fashion_mnist": "configs/fashion_mnist.yaml"}


def arrays(images: list[list[int]], labels: list[int]) -> ImageArrays:
    """Tiny 1x2x2 images from flat pixel lists."""
    return ImageArrays(torch.tensor(images, dtype=torch.uint8).reshape(-1, 1, 2, 2), torch.tensor(labels))


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
    assert eda.image_hashes(flat) != eda.image_hashes(flat.reshape(1, 1, 4, 4))


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
    files = []
    for k, (w, h) in enumerate(sizes):
        files.append(tmp_path / f"{k}.jpg")
        Image.new("RGB", (int(w), int(h)), "white").save(files[-1])
    assert len(eda.plot_sizes({"train": sizes}, {"train": boxes}).axes) == 4
    assert len(eda.plot_sizes({"train": sizes}).axes) == 3
    assert len(eda.plot_boxes(files, boxes).axes[0].patches) == 1
    plt.close("all")


def test_sample_grid_shows_each_class_row():
    data = arrays([[k * 10] * 4 for k in range(6)], [0, 1, 2, 0, 1, 0])
    fig = eda.sample_grid(data, ["a", "b", "c"], per_class=2)
    shown = [len(ax.images) for ax in fig.axes]
    assert shown == [1, 1, 1, 1, 1, 0]  # rows a, b, c; class c has only one image
    plt.close(fig)


def test_load_datamodule_reads_the_configs_data_section():
    dm = eda.load_datamodule(REPO / "configs/fashion_mnist.yaml")
    assert dm.spec.name == "fashion_mnist" and dm.batch_size == 128


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
}))"""


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """EDA.ipynb run top to bottom in a fresh kernel, with a run folder holding a known confusion matrix."""
    run = tmp_path_factory.mktemp("run")
    confusion = torch.diag(torch.full((10,), 30))
    confusion[3, 8], confusion[5, 6] = 7, 2
    save_confusion_matrix(confusion, [str(i) for i in range(10)], run)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # Parameters injected papermill-style: a cell right after the tagged one overrides its values.
    params = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(params + 1, nbformat.v4.new_code_cell(f"RUN = {str(run)!r}\nSAMPLES_PER_CLASS = 3"))
    nb.cells.append(nbformat.v4.new_code_cell(REPORT))
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO)}})  # run from the repo root
    client.execute()
    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    return nb, json.loads(printed.split("EDA-JSON", 1)[1])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_notebook_statistics_match_the_datamodule(executed, name):
    dm = ImageDataModule(**yaml.safe_load((REPO / CONFIGS[name]).read_text())["data"])
    if not dm.spec.is_present(dm.root):
        pytest.skip(f"{name} files are not present at {dm.root}")
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


def test_notebook_shows_the_runs_confusion_matrix_and_worst_pair(executed):
    nb = executed[0]
    cell = next(c for c in nb.cells if c.cell_type == "code" and "most_confused_pairs" in c.source)
    assert any("image/png" in o.get("data", {}) for o in cell.outputs)
    tables = [o["data"]["text/plain"] for o in cell.outputs if "text/plain" in o.get("data", {})]
    assert any(re.search(r"^0\s+3\s+8\s+7\s+0\.189$", t, re.MULTILINE) for t in tables)  # 7 of 37 "3"s


def test_varying_size_cell_runs_for_a_datamodule_with_sizes_and_boxes(tmp_path):
    """The section that waits for Stanford Cars / image folders, run on a stand-in DataModule."""
    sizes = {"train": np.array([[120, 80], [64, 64]]), "test": np.array([[90, 60]])}
    boxes = {"train": np.array([[10, 10, 100, 70], [0, 0, 32, 32]]), "test": np.array([[0, 0, 45, 30]])}
    files = {"train": [tmp_path / "a.png", tmp_path / "b.png"]}
    for path, (w, h) in zip(files["train"], sizes["train"], strict=True):
        Image.new("RGB", (int(w), int(h))).save(path)
    cars = type("StandIn", (), {"sizes": sizes, "boxes": boxes, "files": files, "image_size": [224, 224]})()
    cell = next(c for c in nbformat.read(NOTEBOOK, as_version=4).cells if 'getattr(dm, "sizes"' in c.source)
    shown = []
    exec(cell.source, {"modules": {"cars": cars}, "eda": eda, "np": np, "plt": plt, "display": shown.append})
    assert len(shown) == 1 and len(plt.get_fignums()) == 2  # the size table; histograms and box overlays
    plt.close("all")
