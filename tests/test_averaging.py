"""EMAWeightAveraging: the average lives on the module's device, updates on the steps it is told to, and
holds the exponential moving average of the weights it saw; the test after fit scores those averaged weights."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import REPO, quiet_trainer
from lightning.pytorch.demos.boring_classes import BoringModel

from imgclf.data.datamodule import ImageDataModule
from imgclf.model.averaging import EMAWeightAveraging
from imgclf.model.classifier import ImageClassifier
from imgclf.train.run import main


class Recorder(L.Callback):
    """The weights after every optimizer step, before the average replaces them at the end of fit, and the
    average at the end of fit (the callback drops it when fit is over)."""

    def __init__(self, ema: EMAWeightAveraging) -> None:
        self.ema = ema
        self.weights: list[torch.Tensor] = []
        self.average: torch.Tensor | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.weights.append(pl_module.layer.weight.detach().clone())

    def on_fit_end(self, trainer, pl_module) -> None:
        self.average = self.ema._average_model.module.layer.weight.detach().clone()


@pytest.mark.slow
def test_average_is_the_ema_of_the_chosen_steps_on_the_module_device(tmp_path):
    ema = EMAWeightAveraging(decay=0.5, every_n_steps=2, start_epoch=1 / 64)  # BoringModel: 64 steps an epoch
    recorder = Recorder(ema)
    model = BoringModel()
    trainer = quiet_trainer(max_steps=6, limit_val_batches=0, callbacks=[recorder, ema], default_root_dir=tmp_path)
    trainer.fit(model)
    assert [ema.should_update(step_idx=s) for s in range(5)] == [False, False, True, False, True]
    assert not ema.should_update(epoch_idx=0)
    average = recorder.average
    assert ema._average_model is None  # a later validate() cannot swap a stale average in
    assert average.device == model.device
    # Lightning passes the zero-based index of the step just taken: of steps 0-5, steps 2 and 4 update. The
    # first update copies the weights; the next moves halfway (decay 0.5) towards the current weights.
    expected = 0.5 * recorder.weights[2] + 0.5 * recorder.weights[4]
    assert torch.allclose(average, expected, atol=1e-6)
    assert torch.allclose(model.layer.weight, expected, atol=1e-6)  # fit ends with the averaged weights


@pytest.mark.slow
def test_a_run_shorter_than_start_epoch_keeps_its_trained_weights(tmp_path):
    ema = EMAWeightAveraging(decay=0.5, start_epoch=1)  # never reached in 4 of 64 steps
    recorder = Recorder(ema)
    model = BoringModel()
    initial = model.layer.weight.detach().clone()
    trainer = L.Trainer(max_steps=4, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[recorder, ema], default_root_dir=tmp_path)
    trainer.fit(model)
    assert not torch.allclose(recorder.weights[-1], initial)
    # Without an update the average would hold the initial weights and replace the trained ones at the end.
    assert torch.equal(model.layer.weight, recorder.weights[-1])


def evaluate_checkpoint(ckpt: Path) -> dict[str, float]:
    """Test metrics of the weights stored in `ckpt`, in a Trainer of its own (no callbacks)."""
    model = ImageClassifier.load_from_checkpoint(ckpt, map_location="cpu")
    datamodule = ImageDataModule.load_from_checkpoint(ckpt, map_location="cpu")
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    (metrics,) = trainer.test(model, datamodule=datamodule, verbose=False)
    return metrics


@pytest.mark.slow
def test_metrics_json_scores_the_averaged_weights_that_best_ckpt_holds(tmp_path):
    run_dir = main(["--config", str(REPO / "configs" / "fast_digits.yaml"), "--runs_dir", str(tmp_path),
                    "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "2",
                    "--trainer.enable_progress_bar", "false"])
    written = json.loads((run_dir / "metrics.json").read_text())
    ckpt = run_dir / "best.ckpt"
    separate = evaluate_checkpoint(ckpt)
    for key in ("test/acc", "test/loss", "test/f1_macro"):
        assert written[key] == pytest.approx(separate[key], abs=1e-6), key
    # The check can fail: the raw weights, which the test scored before the fix, score another loss.
    raw = torch.load(ckpt, map_location="cpu", weights_only=False)
    raw["state_dict"] = raw["current_model_state"]
    raw_ckpt = tmp_path / "raw.ckpt"
    torch.save(raw, raw_ckpt)
    assert evaluate_checkpoint(raw_ckpt)["test/loss"] != pytest.approx(written["test/loss"], abs=1e-4)
