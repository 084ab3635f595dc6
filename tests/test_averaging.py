"""EMAWeightAveraging: the average lives on the module's device, updates on the steps it is told to, and
holds the exponential moving average of the weights it saw."""

from __future__ import annotations

import lightning as L
import torch
from conftest import quiet_trainer
from lightning.pytorch.demos.boring_classes import BoringModel

from imgclf.model.averaging import EMAWeightAveraging


class Recorder(L.Callback):
    """The weights after every optimizer step, before the average replaces them at the end of fit."""

    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.weights.append(pl_module.layer.weight.detach().clone())


def test_average_is_the_ema_of_the_chosen_steps_on_the_module_device(tmp_path):
    ema = EMAWeightAveraging(decay=0.5, every_n_steps=2, start_step=1)
    assert [ema.should_update(step_idx=s) for s in range(5)] == [False, False, True, False, True]
    assert not ema.should_update(epoch_idx=0)
    recorder = Recorder()
    model = BoringModel()
    trainer = quiet_trainer(max_steps=6, limit_val_batches=0, callbacks=[recorder, ema], default_root_dir=tmp_path)
    trainer.fit(model)
    average = ema._average_model.module.layer.weight
    assert average.device == model.device
    # Lightning passes the zero-based index of the step just taken: of steps 0-5, steps 2 and 4 update. The
    # first update copies the weights; the next moves halfway (decay 0.5) towards the current weights.
    expected = 0.5 * recorder.weights[2] + 0.5 * recorder.weights[4]
    assert torch.allclose(average, expected, atol=1e-6)
    assert torch.allclose(model.layer.weight, expected, atol=1e-6)  # fit ends with the averaged weights
