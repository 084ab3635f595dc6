"""torchvision backbones: heads sized to the data, pretrained weights from a file, fine-tuning controls."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import torchvision
from conftest import REPO, quiet_trainer
from image_files import write_colour_folder

from imgclf.data.datamodule import ImageDataModule
from imgclf.errors import UserError
from imgclf.model.backbones import BACKBONES, load_pretrained
from imgclf.model.classifier import ImageClassifier
from imgclf.model.finetune import backbone_parameters, classifier_head, parameter_groups
from imgclf.model.networks import build_network
from imgclf.train.run import RUN_DIR_ENV, main


@pytest.fixture(autouse=True)
def fresh_run_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() keeps its run folder in the environment (for DDP ranks): each in-process run needs its own."""
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_backbones_have_a_head_for_the_classes(name: str) -> None:
    net = build_network(name, 3, 7).eval()
    assert classifier_head(net).out_features == 7
    assert net(torch.zeros(2, 3, 64, 64)).shape == (2, 7)


def test_backbones_need_rgb() -> None:
    with pytest.raises(UserError, match="takes RGB images"):
        build_network("resnet50", 1, 10)


@pytest.fixture
def resnet18_weights(tmp_path: Path) -> Path:
    """A stand-in for torchvision's ImageNet file (no network here): a random ResNet-18's state_dict."""
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def test_weights_file_fills_everything_but_the_head(resnet18_weights: Path) -> None:
    net = build_network("resnet18_imagenet", 3, 5)
    head_before = net.fc.weight.clone()
    load_pretrained(net, "resnet18_imagenet", str(resnet18_weights))
    saved = torch.load(resnet18_weights)
    assert torch.equal(net.conv1.weight, saved["conv1.weight"])
    assert torch.equal(net.layer4[1].bn2.running_var, saved["layer4.1.bn2.running_var"])
    assert torch.equal(net.fc.weight, head_before) and net.fc.out_features == 5


def test_weights_that_do_not_fit(tmp_path: Path, resnet18_weights: Path) -> None:
    net = build_network("resnet50", 3, 5)
    with pytest.raises(UserError, match=r"do not fit the network 'resnet50'.*torchvision's resnet50"):
        load_pretrained(net, "resnet50", str(resnet18_weights))
    with pytest.raises(UserError, match="does not exist"):
        load_pretrained(net, "resnet50", str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"junk" * 100)
    with pytest.raises(UserError, match="Cannot read weights file"):
        load_pretrained(net, "resnet50", str(tmp_path / "junk.pth"))
    with pytest.raises(UserError, match="works with the torchvision networks"):
        load_pretrained(build_network("small_cnn", 3, 5), "small_cnn", str(resnet18_weights))


def test_backbone_gets_the_smaller_learning_rate() -> None:
    model = ImageClassifier(network="resnet18_imagenet", num_classes=4, in_channels=3, lr=0.1,
                            backbone_lr_scale=0.1)
    groups = parameter_groups(model, model.net, 0.1, 5e-4, 0.1)
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert len(by_id) == sum(1 for _ in model.parameters())  # every parameter in exactly one group
    head = by_id[id(model.net.fc.weight)]
    assert head["lr"] == 0.1 and head["weight_decay"] == 5e-4
    assert by_id[id(model.net.fc.bias)]["weight_decay"] == 0.0
    assert by_id[id(model.net.conv1.weight)]["lr"] == pytest.approx(0.01)
    assert by_id[id(model.net.layer1[0].bn1.bias)]["lr"] == pytest.approx(0.01)


@pytest.mark.slow
def test_frozen_backbone_does_not_move_in_the_first_epoch() -> None:
    L.seed_everything(0)
    data = ImageDataModule(dataset="digits", batch_size=64, val_fraction=0.0)
    model = ImageClassifier(network="small_cnn", num_classes=10, in_channels=1, image_size=(8, 8),
                            freeze_backbone_epochs=1, schedule="constant", lr=0.01)
    before = [p.detach().clone() for p in backbone_parameters(model.net)]
    head_before = classifier_head(model.net).weight.detach().clone()
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=3)
    trainer.fit(model, datamodule=data)
    assert all(torch.equal(a, b) for a, b in zip(before, backbone_parameters(model.net), strict=True))
    assert not torch.equal(head_before, classifier_head(model.net).weight)
    trainer = quiet_trainer(max_epochs=2, limit_train_batches=3)
    trainer.fit(model, datamodule=data)  # epochs 0 and 1 again: epoch 1 trains the backbone
    assert not all(torch.equal(a, b) for a, b in zip(before, backbone_parameters(model.net), strict=True))


def test_channels_last_is_applied_when_the_model_is_built() -> None:
    """At construction, not in setup(): callbacks' setup (the EMA's copy of the weights) runs before the model's."""
    def nhwc(model):
        return model.net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert nhwc(ImageClassifier(network="resnet18_imagenet", num_classes=3, in_channels=3, channels_last=True))
    assert not nhwc(ImageClassifier(network="resnet18_imagenet", num_classes=3, in_channels=3))


def folder_args(root: Path, tmp_path: Path, weights: Path) -> list[str]:
    return ["--config", str(REPO / "configs/folder.yaml"), "--data.root", str(root),
            "--runs_dir", str(tmp_path / "runs"), "--model.weights", str(weights),
            "--data.input_size", "32", "--data.num_workers", "0", "--data.batch_size", "4",
            "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu",
            "--trainer.enable_progress_bar", "false"]


@pytest.mark.slow
def test_fine_tunes_from_a_weights_file_end_to_end(tmp_path: Path, resnet18_weights: Path) -> None:
    root = write_colour_folder(tmp_path / "images", {"red": 6, "green": 6, "blue": 6})
    run_dir = main(folder_args(root, tmp_path, resnet18_weights))
    hparams = torch.load(run_dir / "best.ckpt", map_location="cpu", weights_only=False)["hyper_parameters"]
    assert hparams["class_names"] == ["blue", "green", "red"] and hparams["network"] == "resnet18_imagenet"
    assert (run_dir / "metrics.json").is_file()
    # Resuming needs only the checkpoint: the pretrained weights are in it, the weights file may be gone.
    resnet18_weights.unlink()
    resumed = main([*folder_args(root, tmp_path, resnet18_weights), "--ckpt_path", str(run_dir / "last.ckpt")])
    assert (resumed / "metrics.json").is_file()


def test_weights_of_another_network_stop_the_run(tmp_path: Path) -> None:
    root = write_colour_folder(tmp_path / "images", {"red": 3, "green": 3})
    wrong = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), wrong)
    with pytest.raises(UserError, match="do not fit the network 'resnet18_imagenet'"):
        main(folder_args(root, tmp_path, wrong))
