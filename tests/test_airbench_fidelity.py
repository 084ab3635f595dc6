"""Our airbench networks, optimizer groups and callbacks against a transcription of airbench94
(KellerJordan/cifar10-airbench, legacy/airbench94.py): its network (make_net) and Lookahead, moved to the CPU and
to float32, otherwise as written there."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import REPO
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from imgclf.errors import UserError
from imgclf.model.airbench_training import FreezeWhiteningBias, Lookahead
from imgclf.model.classifier import ImageClassifier
from imgclf.model.networks import build_network
from imgclf.train.config import load

# ---- airbench94's network, transcribed -------------------------------------------------------------------------
WIDTHS = {"block1": 64, "block2": 256, "block3": 256}
BATCHNORM_MOMENTUM, SCALING_FACTOR = 0.6, 1 / 9


class Flatten(nn.Module):
    def forward(self, x):
        return x.view(x.size(0), -1)


class Mul(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return x * self.scale


class BatchNorm(nn.BatchNorm2d):
    def __init__(self, num_features, momentum, eps=1e-12, weight=False, bias=True):
        super().__init__(num_features, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad = weight
        self.bias.requires_grad = bias


class Conv(nn.Conv2d):
    def __init__(self, in_channels, out_channels, kernel_size=3, padding="same", bias=False):
        super().__init__(in_channels, out_channels, kernel_size=kernel_size, padding=padding, bias=bias)

    def reset_parameters(self):
        super().reset_parameters()
        if self.bias is not None:
            self.bias.data.zero_()
        w = self.weight.data
        torch.nn.init.dirac_(w[:w.size(1)])


class ConvGroup(nn.Module):
    def __init__(self, channels_in, channels_out, batchnorm_momentum):
        super().__init__()
        self.conv1 = Conv(channels_in, channels_out)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = BatchNorm(channels_out, batchnorm_momentum)
        self.conv2 = Conv(channels_out, channels_out)
        self.norm2 = BatchNorm(channels_out, batchnorm_momentum)
        self.activ = nn.GELU()

    def forward(self, x):
        x = self.conv1(x)
        x = self.pool(x)
        x = self.norm1(x)
        x = self.activ(x)
        x = self.conv2(x)
        x = self.norm2(x)
        x = self.activ(x)
        return x


def make_net(in_channels: int = 3):
    whiten_kernel_size = 2
    whiten_width = 2 * in_channels * whiten_kernel_size**2
    net = nn.Sequential(
        Conv(in_channels, whiten_width, whiten_kernel_size, padding=0, bias=True),
        nn.GELU(),
        ConvGroup(whiten_width, WIDTHS["block1"], BATCHNORM_MOMENTUM),
        ConvGroup(WIDTHS["block1"], WIDTHS["block2"], BATCHNORM_MOMENTUM),
        ConvGroup(WIDTHS["block2"], WIDTHS["block3"], BATCHNORM_MOMENTUM),
        nn.MaxPool2d(3),
        Flatten(),
        nn.Linear(WIDTHS["block3"], 10, bias=False),
        Mul(SCALING_FACTOR),
    )
    net[0].weight.requires_grad = False
    return net


class LookaheadState:
    def __init__(self, net):
        self.net_ema = {k: v.clone() for k, v in net.state_dict().items()}

    def update(self, net, decay):
        for ema_param, net_param in zip(self.net_ema.values(), net.state_dict().values(), strict=True):
            if net_param.dtype in (torch.half, torch.float):
                ema_param.lerp_(net_param, 1 - decay)
                net_param.copy_(ema_param)


# ---- what the tests compare ------------------------------------------------------------------------------------
KINDS = {nn.Conv2d: "conv", nn.MaxPool2d: "maxpool", nn.AdaptiveMaxPool2d: "maxpool", nn.BatchNorm2d: "batchnorm",
         nn.GELU: "gelu", nn.Linear: "linear", nn.Flatten: "flatten", Flatten: "flatten"}


def kind(module: nn.Module) -> str | None:
    return next((name for cls, name in KINDS.items() if isinstance(module, cls)), None)


def layer_trace(net: nn.Module, x: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """(kind, output shape) of every layer call in forward order (a module called twice appears twice)."""
    trace: list[tuple[str, tuple[int, ...]]] = []
    hooks = [m.register_forward_hook(lambda m, i, o: trace.append((kind(m), tuple(o.shape))))
             for m in net.modules() if kind(m)]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return trace


def flops(net: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x)
    return counter.get_total_flops()


def counts(net: nn.Module) -> tuple[int, int]:
    return sum(p.numel() for p in net.parameters()), sum(p.numel() for p in net.parameters() if p.requires_grad)


def ours(layout: str = "airbench94", in_channels: int = 3) -> nn.Module:
    return build_network("airbench", in_channels, 10, {"layout": layout})


def test_network_matches_airbench94_layer_by_layer() -> None:
    x = torch.randn(2, 3, 32, 32)
    theirs, mine = make_net(), ours()
    their_trace, my_trace = layer_trace(theirs, x), layer_trace(mine, x)
    assert my_trace == their_trace
    # the blocks' outputs: whitening 31x31, then 15, 7 and 3 after each group's pool; the last map 3x3
    assert [shape for k, shape in their_trace if k == "gelu"][::2] == [
        (2, 24, 31, 31), (2, 64, 15, 15), (2, 256, 7, 7), (2, 256, 3, 3)]
    assert counts(mine) == counts(theirs)
    assert abs(flops(mine, x) / flops(theirs, x) - 1) < 0.01


def test_same_weights_give_airbench94s_logits() -> None:
    """Loaded with the transcription's weights and statistics, ours computes the same function (logit scale, BatchNorm
    eps, conv padding, pooling), in training mode (batch statistics) and in evaluation mode."""
    torch.manual_seed(0)
    theirs, mine = make_net(), ours()
    names = [k for k in mine.state_dict() if not k.startswith("whiten.")]  # `whiten` is also layers.0
    assert [v.shape for v in theirs.state_dict().values()] == [mine.state_dict()[k].shape for k in names]
    mine.load_state_dict(dict(zip(names, theirs.state_dict().values(), strict=True)), strict=False)
    assert torch.equal(mine.whiten.weight, theirs[0].weight)
    x = torch.randn(4, 3, 32, 32)
    for train in (True, False):
        theirs.train(train), mine.train(train)
        with torch.no_grad():
            assert torch.allclose(mine(x), theirs(x), atol=1e-5, rtol=1e-4)


def test_initialisation_matches_airbench94() -> None:
    mine, theirs = ours(), make_net()
    assert torch.equal(mine.whiten.bias, torch.zeros(24))  # Conv.reset_parameters zeroes biases
    my_convs = [m for m in mine.modules() if type(m) is nn.Conv2d]
    their_convs = [m for m in theirs.modules() if type(m) is Conv][1:]  # past the whitening conv
    for a, b in zip(my_convs, their_convs, strict=True):
        n = a.weight.shape[1]
        assert torch.equal(a.weight[:n], b.weight[:n])  # the dirac part: identical, not random
    trainable = [(n, p.requires_grad) for n, p in mine.named_parameters()]
    assert [r for _, r in trainable] == [p.requires_grad for p in theirs.parameters()]


def test_the_older_ceil_layout_differs_where_the_config_comment_says() -> None:
    x = torch.randn(2, 3, 32, 32)
    legacy, theirs = ours("ceil"), make_net()
    assert layer_trace(legacy, x) != layer_trace(theirs, x)
    ratio = flops(legacy, x) / flops(theirs, x)
    assert 1.2 < ratio < 1.26  # ceil pooling's larger maps: ~23% more multiply-adds
    assert [s for k, s in layer_trace(legacy, x) if k == "maxpool"][-2] == (2, 256, 4, 4)  # its last map


def test_fashion_mnist_ends_at_airbench94s_3x3_map() -> None:
    trace = layer_trace(ours(in_channels=1), torch.randn(2, 1, 28, 28))
    assert [s for k, s in trace if k == "maxpool"] == [(2, 64, 13, 13), (2, 256, 6, 6), (2, 256, 3, 3),
                                                       (2, 256, 1, 1)]


def test_network_args_reach_the_network_and_bad_ones_are_user_errors() -> None:
    model = ImageClassifier(network="airbench_medium", network_args={"layout": "airbench94", "widths": [8, 16, 32]},
                            in_channels=1, image_size=(28, 28))
    assert model.net.layers[-1].in_features == 32
    with pytest.raises(UserError, match="network_args"):
        build_network("small_cnn", 1, 10, {"layout": "airbench94"})
    with pytest.raises(UserError, match="network_args"):
        build_network("airbench", 1, 10, {"layout": "floor"})


def test_norm_biases_train_at_64x_the_lr_and_shrink_as_the_weights_do() -> None:
    model = ImageClassifier(network="airbench", network_args={"layout": "airbench94"}, optimizer="sgd", lr=1.5,
                            weight_decay=0.00133, norm_bias_lr_scale=64, in_channels=3, image_size=(32, 32))
    optimizer, _ = model.optimizer_and_scheduler(total_steps=100)
    norm_biases = {id(m.bias) for m in model.net.modules() if isinstance(m, nn.BatchNorm2d)}
    group = next(g for g in optimizer.param_groups if id(g["params"][0]) in norm_biases)
    assert {id(p) for p in group["params"]} == norm_biases
    weights = next(g for g in optimizer.param_groups if g["params"][0].ndim > 1)
    # airbench94: lr_biases = 64 lr, weight_decay = wd / lr_biases, so lr x weight_decay is the same in both groups
    assert group["initial_lr"] == pytest.approx(64 * weights["initial_lr"])
    assert group["initial_lr"] * group["weight_decay"] == pytest.approx(weights["initial_lr"] * weights["weight_decay"])


def test_without_the_scale_norm_biases_stay_with_the_other_biases() -> None:
    model = ImageClassifier(network="airbench_small", in_channels=1, image_size=(28, 28))
    optimizer, _ = model.optimizer_and_scheduler(total_steps=100)
    assert sorted(g["weight_decay"] for g in optimizer.param_groups) == [0.0, model.hparams.weight_decay]


def fake_trainer(step: int, total: int, epoch: int = 0) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, estimated_stepping_batches=total, current_epoch=epoch)


def test_lookahead_follows_airbench94() -> None:
    """The same sequence of weight changes through airbench94's LookaheadState and through our callback."""
    torch.manual_seed(0)
    total = 23
    theirs, mine = make_net(), make_net()
    mine.load_state_dict(theirs.state_dict())
    state, callback = LookaheadState(theirs), Lookahead()
    callback.on_train_start(fake_trainer(0, total), mine)
    alpha_schedule = 0.95**5 * (torch.arange(total + 1) / total) ** 3
    for step in range(1, total + 1):
        noise = {k: torch.randn_like(v) for k, v in theirs.state_dict().items() if v.is_floating_point()}
        for net in (theirs, mine):  # a training step: the same change to both
            for k, v in net.state_dict().items():
                if k in noise:
                    v.add_(noise[k])
        if step % 5 == 0:
            state.update(theirs, decay=alpha_schedule[step].item())
        if step >= total:
            state.update(theirs, decay=1.0)
        callback.on_train_batch_end(fake_trainer(step, total), mine, None, None, step - 1)
        for (k, a), b in zip(mine.state_dict().items(), theirs.state_dict().values(), strict=True):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-5), (step, k)  # airbench94 rounds decay to fp32


def test_lookahead_keeps_the_trained_weights_of_a_run_shorter_than_one_interval() -> None:
    net = make_net()
    callback = Lookahead(every_n_steps=5)
    callback.on_train_start(fake_trainer(0, 3), net)
    for step in (1, 2, 3):
        with torch.no_grad():
            net[-2].weight.add_(1.0)
        callback.on_train_batch_end(fake_trainer(step, 3), net, None, None, step - 1)
    assert torch.allclose(net[-2].weight, callback.average["7.weight"] + 3.0)  # trained, not reset to the start


def test_lookahead_resumes_from_its_saved_average() -> None:
    torch.manual_seed(0)
    model = ImageClassifier(network="airbench_small", in_channels=1, image_size=(28, 28))
    first = Lookahead()
    first.on_train_start(fake_trainer(0, 20), model)
    with torch.no_grad():
        model.net.layers[-1].weight.add_(1.0)
    first.on_train_batch_end(fake_trainer(5, 20), model, None, None, 4)
    resumed = Lookahead()
    resumed.load_state_dict(first.state_dict())
    resumed.on_train_start(fake_trainer(5, 20), model)
    assert resumed.average.keys() == first.average.keys()
    assert all(torch.equal(resumed.average[k], first.average[k]) for k in first.average)


def test_whitening_bias_trains_for_the_first_epochs_only() -> None:
    model = ImageClassifier(network="airbench_small", in_channels=1, image_size=(28, 28))
    callback = FreezeWhiteningBias(epochs=3)
    callback.setup(fake_trainer(0, 10), model, "fit")
    bias = model.net.whiten.bias
    for epoch, kept in [(0, True), (2, True), (3, False), (7, False)]:
        bias.grad = torch.ones_like(bias)
        callback.on_before_optimizer_step(fake_trainer(0, 10, epoch), model, None)
        assert (bias.grad is not None) == kept
    with pytest.raises(UserError, match="whitening"):
        callback.setup(fake_trainer(0, 10), ImageClassifier(network="small_cnn"), "fit")


@pytest.mark.parametrize("config", ["fast_cifar10.yaml", "fast_fashion_mnist.yaml"])
def test_gpu_recipes_build_airbench94(config: str) -> None:
    loaded = load(overrides=["--config", str(REPO / "configs" / config)])
    model, data = loaded.model, loaded.datamodule
    assert model.hparams.network_args == {"layout": "airbench94"} and model.hparams.norm_bias_lr_scale == 64
    assert model.hparams.tta_padding == "reflect" and data.val_fraction == 0
    assert (data.policy.flip, data.policy.alternate, data.policy.translate, data.policy.padding) == (
        True, True, 2, "reflect")
    callbacks = {c["class_path"].rsplit(".", 1)[-1] for c in loaded.config.trainer.callbacks}
    assert {"Lookahead", "FreezeWhiteningBias"} <= callbacks and "EMAWeightAveraging" not in callbacks
    x = torch.zeros(2, model.hparams.in_channels, *model.hparams.image_size)
    assert layer_trace(model.net, x)[-4][1][-2:] == (3, 3)  # the last map: airbench94's 3x3
