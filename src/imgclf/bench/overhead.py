"""Lightning's overhead: per-step time of the same model, data and optimizer in this pipeline's Trainer and
in a hand-written PyTorch loop. Weight averaging is left out of both: it is the same work either way."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from imgclf.bench.pipeline import build
from imgclf.train.config import load


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


class StepTimer(L.Callback):
    """Seconds from the start of step `warmup` to the end of step `last`.

    The clock is read (and the GPU synchronized) at those two steps only, as in the plain loop: a sync after
    every step would stop the CPU from queueing work ahead, and bias the comparison against Lightning.
    """

    def __init__(self, warmup: int, last: int) -> None:
        self.warmup, self.last, self.start, self.end = warmup, last, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self.start = _now(pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.last:
            self.end = _now(pl_module.device)


def lightning_step_seconds(main_args: list[str], data_root: Path | None, warmup: int, steps: int,
                           limit: tuple[int, int] | None) -> float:
    trainer_config, model, data, _ = build(main_args, data_root, limit, max_epochs=None,
                                           max_steps=warmup + steps, limit_val_batches=0)
    timer = StepTimer(warmup, warmup + steps)
    L.Trainer(**trainer_config, callbacks=[timer]).fit(model, datamodule=data)
    return (timer.end - timer.start) / steps


def plain_step_seconds(main_args: list[str], data_root: Path | None, warmup: int, steps: int,
                       limit: tuple[int, int] | None) -> float:
    """The loop one would write by hand: same batches, augmentation, network, loss, optimizer, schedule."""
    trainer_config, model, data, _ = build(main_args, data_root, limit)
    on_gpu = torch.cuda.is_available() and trainer_config["accelerator"] != "cpu"
    device = torch.device("cuda" if on_gpu else "cpu")
    data.setup("fit")
    # Without a trainer the data stays on the CPU: put it on the device, as the DataModule does in Lightning.
    data.splits = {name: split.to(device) for name, split in data.splits.items()}
    model = model.to(device)
    model.setup("fit")  # what Lightning does before fitting: channels_last and compile, as the config says
    if hasattr(model.net, "init_whitening"):
        model.net.init_whitening(model.normalize(next(iter(data.train_dataloader()))[0].to(device)))
    optimizer, scheduler = model.optimizer_and_scheduler(total_steps=warmup + steps)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=str(trainer_config["precision"]).startswith("bf16"))
    step, start = 0, 0.0
    while step < warmup + steps:
        for images, labels in data.train_dataloader():
            if step == warmup:
                start = _now(device)
            images = data.policy(images) if data.augment else images
            with autocast:
                loss = F.cross_entropy(model(images), labels, label_smoothing=model.hparams.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            step += 1
            if step == warmup + steps:
                break
    return (_now(device) - start) / steps


def measure_overhead(main_args: list[str], data_root: Path | None, warmup: int, steps: int, repeats: int = 3,
                     limit: tuple[int, int] | None = None) -> dict:
    """Per-step seconds of both loops (the best of `repeats` interleaved runs: load from other processes
    only ever adds time), their ratio and the training throughput (images/s)."""
    data = load(overrides=main_args, build=[]).config.data
    batch = data.batch_size or data.global_batch_size  # one process: the same
    plain = lightning = float("inf")
    for _ in range(repeats):
        plain = min(plain, plain_step_seconds(main_args, data_root, warmup, steps, limit))
        lightning = min(lightning, lightning_step_seconds(main_args, data_root, warmup, steps, limit))
    return {"steps": steps, "batch_size": batch,
            "plain_step_ms": 1000 * plain, "lightning_step_ms": 1000 * lightning,
            "overhead_ratio": lightning / plain,
            "plain_images_per_second": batch / plain, "lightning_images_per_second": batch / lightning}
