"""torchvision's ImageNet networks for large images (~224 px), their classifier head sized to the dataset.

Built without weights; `load_pretrained` then fills everything but the head from torchvision's ImageNet
weights (`weights: imagenet`, downloaded once into torch's cache, needs the network) or from a local
state_dict file (`weights: path.pth`, e.g. `torch.save(resnet50(weights="DEFAULT").state_dict(), path)`).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
import torchvision.models
from torch import nn

from imgclf.errors import UserError
from imgclf.model.weights import misfit

# our name -> (torchvision's name, attribute path of the final Linear layer)
BACKBONES = {
    "resnet18_imagenet": ("resnet18", "fc"),  # "resnet18" is already the small-image variant
    "resnet50": ("resnet50", "fc"),
    "convnext_tiny": ("convnext_tiny", "classifier.2"),
    "efficientnet_b0": ("efficientnet_b0", "classifier.1"),
}


def build_backbone(name: str, in_channels: int, num_classes: int) -> nn.Module:
    if in_channels != 3:
        raise UserError(f"Network {name!r} takes RGB images (3 channels), but the data has {in_channels}. "
                        f"Use a dataset of image files (they are converted to RGB) or another network.")
    tv_name, head_path = BACKBONES[name]
    net = torchvision.models.get_model(tv_name, weights=None)
    parent_path, _, attr = head_path.rpartition(".")
    parent = net.get_submodule(parent_path) if parent_path else net
    head: nn.Linear = getattr(parent, attr)
    setattr(parent, attr, nn.Linear(head.in_features, num_classes))
    return net


TORCHVISION_NETWORKS = {name: partial(build_backbone, name) for name in BACKBONES}


def imagenet_state_dict(name: str) -> dict[str, torch.Tensor]:
    tv_name = BACKBONES[name][0]
    try:
        return torchvision.models.get_model_weights(tv_name).DEFAULT.get_state_dict(progress=False)
    except Exception as e:  # offline: URLError, socket errors; a broken download: RuntimeError
        raise UserError(
            f"Cannot fetch torchvision's ImageNet weights for {name} ({type(e).__name__}: {e}). Without "
            f"network access, save them on a machine that has it (`torch.save(torchvision.models.{tv_name}"
            f"(weights='DEFAULT').state_dict(), '{tv_name}.pth')`) and pass --model.weights {tv_name}.pth."
        ) from e


def file_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"Weights file {path} does not exist. Pass a torchvision state_dict saved with "
                        f"torch.save(model.state_dict(), path), or --model.weights imagenet.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"Cannot read weights file {path} ({type(e).__name__}: {e}). Pass a state_dict saved "
                        f"with torch.save(model.state_dict(), path).") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} does not hold a state_dict (a dict of tensors). Save the weights with "
                        f"torch.save(model.state_dict(), path).")
    return state


def load_pretrained(net: nn.Module, name: str, weights: str) -> None:
    """Copy `weights` ("imagenet" or a file) into everything but the head, which keeps its fresh init."""
    if name not in BACKBONES:
        raise UserError(f"--model.weights works with the torchvision networks ({', '.join(BACKBONES)}), "
                        f"not {name!r}.")
    state = imagenet_state_dict(name) if weights == "imagenet" else file_state_dict(Path(weights))
    head = BACKBONES[name][1] + "."
    expected = {k: v for k, v in net.state_dict().items() if not k.startswith(head)}
    given = {k: v for k, v in state.items() if not k.startswith(head)}
    differs = misfit(expected, given)
    if differs:
        raise UserError(
            f"The weights in {weights} do not fit the network {name!r}: {differs}. Pass weights of torchvision's "
            f"{BACKBONES[name][0]}, or choose the network they belong to with --model.network."
        )
    net.load_state_dict(given, strict=False)  # the head is left out on purpose: it is sized to our classes
