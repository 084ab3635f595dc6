"""Fine-tuning a pretrained network: a smaller learning rate for the backbone than for the new head, and
an optional frozen backbone for the first epochs, so the randomly initialised head cannot wreck the
pretrained features with its large early gradients.
"""

from __future__ import annotations

from torch import nn

from imgclf.errors import UserError


def classifier_head(net: nn.Module) -> nn.Module:
    """The head: the network's last nn.Linear (true for torchvision's networks and for small_cnn)."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError("--model.backbone_lr_scale and --model.freeze_backbone_epochs need a network that "
                        "ends in a Linear classifier; this one has none. Leave them at 1.0 and 0.")
    return linears[-1]


def backbone_parameters(net: nn.Module) -> list[nn.Parameter]:
    head = {id(p) for p in classifier_head(net).parameters()}
    return [p for p in net.parameters() if id(p) not in head]


def parameter_groups(model: nn.Module, net: nn.Module, lr: float, weight_decay: float,
                     backbone_lr_scale: float) -> list[dict]:
    """Optimizer groups of `model`'s parameters: weight decay on weights only (not biases and norms), and
    lr * backbone_lr_scale for the parameters of `net` outside its classifier head."""
    if backbone_lr_scale <= 0:
        raise UserError(f"--model.backbone_lr_scale must be > 0 (use freeze_backbone_epochs to freeze), "
                        f"got {backbone_lr_scale}.")
    backbone = {id(p) for p in backbone_parameters(net)} if backbone_lr_scale != 1.0 else set()
    groups = {}
    for p in model.parameters():
        key = (p.ndim > 1, id(p) in backbone)
        groups.setdefault(key, []).append(p)
    return [{"params": params, "weight_decay": weight_decay if decay else 0.0,
             "lr": lr * backbone_lr_scale if in_backbone else lr}
            for (decay, in_backbone), params in groups.items()]


def drop_backbone_grads(net: nn.Module) -> None:
    """Freeze the backbone for this step by discarding its gradients: the optimizer skips parameters without
    a gradient. (Toggling requires_grad instead would break DDP, whose reducer fixes the parameter set.)"""
    for p in backbone_parameters(net):
        p.grad = None
