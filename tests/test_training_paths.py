"""Training paths nothing else runs: resuming with EMA (the DVC pipeline's recipe), --model.compile true,
gradient accumulation under the divergence guard, validation within an epoch with last.ckpt, and the single
fit check of a resumed checkpoint. Short digits runs of the real CLI, in this process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import QUIET_ARGS, REPO
from trained import train

from imgclf.errors import UserError
from imgclf.model import classifier
from imgclf.model.classifier import ImageClassifier
from imgclf.train.run import main

FAST_DIGITS = str(REPO / "configs" / "fast_digits.yaml")


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def test_a_checkpoint_whose_weights_do_not_fit_is_refused_by_one_check(tmp_path, monkeypatch):
    model = ImageClassifier(image_size=(8, 8), class_names=[str(i) for i in range(10)])
    state = model.state_dict()
    state[next(k for k in state if k.endswith("weight"))] = torch.zeros(1)  # an edited checkpoint
    ckpt = tmp_path / "edited.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": dict(model.hparams), "epoch": 0, "global_step": 0,
                "datamodule_hyper_parameters": {"dataset": "digits"}, "pytorch-lightning_version": "2.6.0"}, ckpt)
    calls = []
    misfit = classifier.misfit
    monkeypatch.setattr(classifier, "misfit", lambda *a: calls.append(1) or misfit(*a))
    runs = tmp_path / "runs"
    with pytest.raises(UserError, match=rf"Checkpoint {ckpt} does not fit: .*config.yaml"):
        main(["--runs_dir", str(runs), "--ckpt_path", str(ckpt), *QUIET_ARGS], REPO / "configs" / "default.yaml")
    assert calls == [1]  # checked once, not once before the fit and again as Lightning restores it
    assert not runs.exists() or list(runs.iterdir()) == []


@pytest.mark.slow
def test_resuming_an_ema_run_extends_it_and_keeps_averaging(tmp_path):
    """fast_digits.yaml averages the weights (EMA); resumed with more epochs, the average carries on."""
    args = ["--config", FAST_DIGITS, "--trainer.check_val_every_n_epoch", "1", "--trainer.limit_train_batches", "3"]
    first = train(tmp_path / "a", *args, "--trainer.max_epochs", "1")
    saved = load(first / "last.ckpt")
    assert "current_model_state" in saved  # the EMA callback's raw weights beside the averaged ones
    resumed = train(tmp_path / "b", *args, "--trainer.max_epochs", "2", "--ckpt_path", str(first / "last.ckpt"))
    final = load(resumed / "last.ckpt")
    assert (final["epoch"], final["global_step"]) == (1, 6)
    # The average moved on from where the first run left it, and still differs from the raw weights.
    def differ(a: dict, b: dict) -> bool:
        return any(not torch.equal(a[k], b[k]) for k, v in a.items() if v.is_floating_point())
    assert differ(final["state_dict"], saved["state_dict"])
    assert differ(final["state_dict"], final["current_model_state"])
    assert "test/acc" in json.loads((resumed / "metrics.json").read_text())  # tested after the resumed fit


@pytest.mark.slow
def test_a_compiled_model_trains_tests_and_saves_plain_weights(tmp_path):
    run_dir = train(tmp_path, "--model.compile", "true", "--trainer.max_epochs", "1",
                    "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "1")
    state = load(run_dir / "best.ckpt")["state_dict"]
    assert not any("_orig_mod" in key for key in state)  # loadable by an uncompiled model (export, verify)
    ImageClassifier(image_size=(8, 8), class_names=[str(i) for i in range(10)]).load_state_dict(state)
    assert "test/acc" in json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_accumulated_gradients_count_optimizer_steps_and_divergence_is_still_caught(tmp_path):
    run_dir = train(tmp_path / "ok", "--trainer.accumulate_grad_batches", "2", "--trainer.max_epochs", "1",
                    "--trainer.limit_train_batches", "6", "--trainer.limit_val_batches", "1")
    assert load(run_dir / "last.ckpt")["global_step"] == 3  # 6 batches, one optimizer step per 2
    with pytest.raises(UserError, match=r"Training diverged: .*at step \d+ \(epoch 0\)"):
        train(tmp_path / "diverged", "--trainer.accumulate_grad_batches", "2", "--model.optimizer", "sgd",
              "--model.lr", "1e4", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "10")
    for checkpoint in (tmp_path / "diverged").rglob("*.ckpt"):
        state = load(checkpoint)["state_dict"]
        assert all(v.isfinite().all() for v in state.values() if v.is_floating_point()), checkpoint


@pytest.mark.slow
def test_validation_within_an_epoch_keeps_last_ckpt_at_the_final_step(tmp_path):
    run_dir = train(tmp_path, "--trainer.val_check_interval", "0.5", "--trainer.max_epochs", "2",
                    "--trainer.limit_train_batches", "6", "--trainer.limit_val_batches", "1")
    last, best = load(run_dir / "last.ckpt"), load(run_dir / "best.ckpt")
    assert last["global_step"] == 12  # the end of the run, not the best of the four validations
    assert best["global_step"] in (3, 6, 9, 12)  # one of the four validations
