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
                     backbone_lr_scale: float, norm_bias_lr_scale: float | None = None) -> list[dict]:
    """Optimizer groups of `model`'s parameters: weight decay on weights only (not biases and norms), and
    lr * backbone_lr_scale for the parameters of `net` outside its classifier head. With `norm_bias_lr_scale`,
    BatchNorm shifts get their own group (airbench94's): lr times it, and weight decay divided by it, so that they
    shrink per step as much as the weights do."""
    if backbone_lr_scale <= 0:
        raise UserError(f"--model.backbone_lr_scale must be > 0 (use freeze_backbone_epochs to freeze), "
                        f"got {backbone_lr_scale}.")
    if norm_bias_lr_scale is not None and norm_bias_lr_scale <= 0:
        raise UserError(f"--model.norm_bias_lr_scale must be > 0 (or null), got {norm_bias_lr_scale}.")
    backbone = {id(p) for p in backbone_parameters(net)} if backbone_lr_scale != 1.0 else set()
    norm_biases = set()
    if norm_bias_lr_scale is not None:
        norm_biases = {id(m.bias) for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    groups = {}
    for p in model.parameters():
        key = ("norm_bias" if id(p) in norm_biases else "weight" if p.ndim > 1 else "other", id(p) in backbone)
        groups.setdefault(key, []).append(p)
    result = []
    for (kind, in_backbone), params in groups.items():
        group_lr = lr * backbone_lr_scale if in_backbone else lr
        if kind == "norm_bias":
            result.append({"params": params, "lr": group_lr * norm_bias_lr_scale,
                           "weight_decay": weight_decay / norm_bias_lr_scale})
        else:
            result.append({"params": params, "lr": group_lr, "weight_decay": weight_decay if kind == "weight" else 0.0})
    return result


def drop_backbone_grads(net: nn.Module) -> None:
    """Freeze the backbone for this step by discarding its gradients: the optimizer skips parameters without
    a gradient. (Toggling requires_grad instead would break DDP, whose reducer fixes the parameter set.)"""
    for p in backbone_parameters(net):
        p.grad = None
