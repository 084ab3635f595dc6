"""No host-device sync inside a training step: on a CPU, every host read of a tensor value inside the step's
hooks (see tests/host_reads.py) is counted, with the fast recipes' model, EMA and divergence guard."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import REPO
from host_reads import HostRead, HostReadCounter

from imgclf.bench.pipeline import build
from imgclf.train.divergence import DivergenceGuard

STEPS = 12


def train_counting(config: str, raise_on_read: bool, *extra: str) -> HostReadCounter:
    args = ["--config", str(REPO / "configs" / config), "--trainer.accelerator", "cpu",
            "--trainer.precision", "32-true", "--trainer.benchmark", "false", "--model.channels_last", "false",
            "--data.eval_batch_size", "64", "--data.global_batch_size", "32", *extra]
    trainer_config, model, data, callbacks = build(args, None, None, max_epochs=None, max_steps=STEPS,
                                                   limit_val_batches=0)
    counter = HostReadCounter(raise_on_read)
    # the guard as on an accelerator: it reads its flag only every log_every_n_steps (here: never in 12 steps)
    guard = DivergenceGuard(check_every_n_steps=1000, read_every_step_on_cpu=False)
    trainer_config.update(log_every_n_steps=1000)  # logging reads values (on its own steps, after the hooks)
    L.Trainer(**trainer_config, callbacks=[counter, *callbacks, guard]).fit(model, datamodule=data)
    assert counter.steps == STEPS - counter.warmup_steps
    return counter


@pytest.mark.slow
@pytest.mark.parametrize("config", ["fast_digits.yaml", "fast_fashion_mnist.yaml"])
def test_no_host_read_inside_a_training_step(config: str) -> None:
    if config == "fast_fashion_mnist.yaml":  # the GPU recipe (Lookahead every 5 steps), on digits
        # 8x8 digits need the ceil-mode layout (airbench94 floor-pools them to nothing); the step is the same
        extra = ["--data.dataset", "digits", "--model.network", "airbench_small",
                 "--model.network_args", "{layout: ceil}"]
    else:
        extra = []
    counter = train_counting(config, False, *extra)
    assert counter.reads == 0, f"{counter.reads} host reads in {counter.steps} steps: {dict(counter.places)}"


@pytest.mark.slow
def test_the_check_can_fail() -> None:
    """The same patches catch a host read: the pre-fix weighting of the loss metric (a Python int)."""
    class Loud(HostReadCounter):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            pl_module.train_loss.update(outputs["loss"].detach(), weight=len(batch[1]))

    counter = Loud(raise_on_read=True)
    with pytest.raises(HostRead, match="torch.as_tensor"):
        trainer_config, model, data, callbacks = build(
            ["--config", str(REPO / "configs" / "fast_digits.yaml"), "--trainer.accelerator", "cpu"], None, None,
            max_epochs=None, max_steps=2, limit_val_batches=0)
        L.Trainer(**trainer_config, callbacks=[counter, *callbacks]).fit(model, datamodule=data)
    assert torch.Tensor.item.__name__ == "item" and torch.as_tensor.__name__ == "as_tensor"  # patches undone
