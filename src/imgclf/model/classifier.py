"""The LightningModule: network + loss + optimizer/schedule + torchmetrics for train, val and test."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from imgclf.data.augment import tta_logits
from imgclf.distributed import broadcast_to_device
from imgclf.errors import UserError
from imgclf.model.backbones import load_pretrained
from imgclf.model.finetune import drop_backbone_grads, parameter_groups
from imgclf.model.networks import PixelNormalize, build_network
from imgclf.model.schedule import one_cycle
from imgclf.model.weights import WeightsMisfit, misfit


def classification_metrics(num_classes: int, prefix: str) -> MetricCollection:
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "acc_top5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
            "f1_macro": MulticlassF1Score(num_classes, average="macro"),
        },
        prefix=prefix,
    )


class ImageClassifier(L.LightningModule):
    """Classifies raw-pixel images (0-255); normalization is the first layer, so exports take raw pixels.

    Args:
        network: architecture name (see imgclf.model.networks.NETWORKS).
        optimizer: sgd (Nesterov momentum) or adamw.
        lr: peak learning rate of the one-cycle schedule.
        weight_decay: applied to weights only, not to biases and norm parameters.
        momentum: SGD momentum (ignored by AdamW).
        label_smoothing: cross-entropy label smoothing.
        schedule: onecycle (warm up then anneal, sized from the trainer's step count) or constant.
        warmup_fraction: share of the steps spent warming up in the one-cycle schedule.
        tta: evaluate (validation, test) on the mean logits of flipped and 1-pixel-shifted copies of each
            image; only for data whose labels survive a horizontal flip (not digits).
        compile: torch.compile the network (pays a compile time once; worth it for longer GPU runs).
        num_classes, in_channels, image_size, mean, std, class_names: describe the data; the CLI fills
            them from the DataModule, and they are saved in the checkpoint for export.
        weights: start a torchvision network from pretrained weights: "imagenet" (torchvision's, needs
            the network once) or the path of a saved state_dict; loaded when fitting starts.
        backbone_lr_scale: learning rate of everything but the classifier head, relative to lr.
        freeze_backbone_epochs: train only the head for this many first epochs.
        channels_last: NHWC memory layout, which GPU tensor cores and oneDNN's CPU convolutions prefer (1.8x fp32's
            images/s on the 2-core CPU of BENCHMARKS.md).
        network_args: keyword arguments for the network's builder, e.g. {layout: airbench94} for the airbench
            networks (imgclf.model.airbench).
        norm_bias_lr_scale: None: BatchNorm shifts train like the other biases (lr, no weight decay). A number:
            airbench94's treatment (64 there): lr times it, weight decay divided by it (the weights' shrink per step).
        tta_padding: what fills the border of TTA's shifted copies: zeros, or reflect (airbench94's).
    """

    def __init__(
        self,
        network: str = "small_cnn",
        optimizer: Literal["sgd", "adamw"] = "adamw",
        lr: float = 3e-3,
        weight_decay: float = 5e-4,
        momentum: float = 0.9,
        label_smoothing: float = 0.0,
        schedule: Literal["onecycle", "constant"] = "onecycle",
        warmup_fraction: float = 0.25,
        tta: bool = False,
        compile: bool = False,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: tuple[int, int] = (8, 8),
        mean: tuple[float, ...] = (0.5,),
        std: tuple[float, ...] = (0.5,),
        class_names: list[str] | None = None,
        weights: str | None = None,
        backbone_lr_scale: float = 1.0,
        freeze_backbone_epochs: int = 0,
        channels_last: bool = False,
        network_args: dict[str, Any] | None = None,
        norm_bias_lr_scale: float | None = None,
        tta_padding: Literal["zeros", "reflect"] = "zeros",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.normalize = PixelNormalize(list(mean), list(std))
        self.net = build_network(network, in_channels, num_classes, network_args)
        self.class_names = class_names or [str(i) for i in range(num_classes)]
        # Training metrics skip their per-step input checks (torch.unique, isnan(...).any()): each reads a value
        # back from the GPU, which stops the CPU from queueing the next steps. Evaluation keeps them.
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        # Epoch losses as metrics: summed over all images of all ranks, not a mean of per-rank means. The
        # training one skips its NaN check (a host read per step; DivergenceGuard watches the loss instead).
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(nan_strategy="disable"), MeanMetric(), MeanMetric()
        self.val_metrics = classification_metrics(num_classes, "val/")
        self.test_metrics = classification_metrics(num_classes, "test/")
        self.test_confmat = MulticlassConfusionMatrix(num_classes)
        self.test_confusion: torch.Tensor | None = None  # filled at the end of testing, for the artifacts
        self.example_input_array = torch.zeros(1, in_channels, *image_size, dtype=torch.uint8)
        if channels_last:
            # Convs then run NHWC, whatever the input's layout. Here, not in setup(): callbacks' setup runs first,
            # and the EMA's copy must share this layout for its fused lerp (one kernel, not one per tensor).
            self.to(memory_format=torch.channels_last)

    def setup(self, stage: str) -> None:
        if self.hparams.compile:
            self.net.compile()  # in place: parameter names (so checkpoints) stay those of the plain network

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.current_epoch < self.hparams.freeze_backbone_epochs:
            drop_backbone_grads(self.net)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(images))

    def on_fit_start(self) -> None:
        # Initialisations for a fresh fit only: a checkpoint (resumed, or loaded for testing or export) already
        # holds their result, and the weights file need not exist where the checkpoint is used.
        # trainer.ckpt_path is known here, not yet in setup().
        if self.trainer.ckpt_path is not None:
            return
        if self.hparams.weights:
            load_pretrained(self.net, self.hparams.network, self.hparams.weights)
        # Networks with a data-dependent first layer (airbench's whitening) get it from training images.
        if hasattr(self.net, "init_whitening"):
            if self.trainer.datamodule is None:
                raise UserError(f"The {self.hparams.network!r} network initialises its first layer from "
                                f"training images, which it asks the DataModule for: fit it with "
                                f"datamodule=..., not with bare dataloaders.")
            images, _ = next(iter(self.trainer.datamodule.train_dataloader()))
            self.net.init_whitening(self.normalize(images))
            # Under DDP each rank drew another shard, and eigh need not agree bit for bit across GPUs: rank 0's
            # filters go to every rank. DDP cannot do it: the layer is frozen, so no gradient sync touches it.
            whiten = self.net.whiten.weight
            whiten.copy_(broadcast_to_device(self.trainer.strategy, whiten.detach(), self.device))

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = self._loss(logits, labels)
        self.train_acc(logits, labels)
        # The batch mean once per image: weighted by the batch size without a weight argument, which torchmetrics
        # would copy from the host every step (a sync), and which nan_strategy="disable" replaces by ones anyway.
        self.train_loss.update(loss.detach().expand(len(labels)))
        self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(labels))
        self.log("train/loss_epoch", self.train_loss, on_step=False, on_epoch=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(labels))
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, metrics: MetricCollection,
                  loss: MeanMetric):
        images, labels = batch
        logits = tta_logits(self, images, self.hparams.tta_padding) if self.hparams.tta else self(images)
        # Metric objects sync their counts across ranks: each image counts once, also under DDP. A rank's
        # batch can be empty (its shard is smaller than the others'); it still logs, so that every rank
        # joins the metric sync at the end of the epoch.
        if len(labels):
            metrics.update(logits, labels)
            loss.update(self._loss(logits, labels), weight=len(labels))
        self.log(f"{stage}/loss", loss, on_epoch=True)
        self.log_dict(metrics, on_epoch=True, prog_bar=stage == "val")
        return logits

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics, self.val_loss)

    def test_step(self, batch, batch_idx: int) -> None:
        logits = self._evaluate(batch, "test", self.test_metrics, self.test_loss)
        if len(logits):
            self.test_confmat.update(logits, batch[1])

    def on_test_epoch_end(self) -> None:
        self.test_confusion = self.test_confmat.compute().cpu()
        self.test_confmat.reset()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Lightning calls this before it loads the weights (load_from_checkpoint, or a resumed fit): a checkpoint
        # of another network, or an edited one, is then the user's mistake, said as such.
        differs = misfit(self.state_dict(), checkpoint.get("state_dict", {}))
        if differs:
            raise WeightsMisfit(f"its weights do not fit the network it names ({self.hparams.network!r}, "
                                f"{self.hparams.num_classes} classes, {self.hparams.in_channels} channels): "
                                f"{differs}")

    def configure_optimizers(self):
        optimizer, scheduler = self.optimizer_and_scheduler(int(self.trainer.estimated_stepping_batches))
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def optimizer_and_scheduler(self, total_steps: int) -> tuple[torch.optim.Optimizer, LRScheduler | None]:
        """The optimizer, and the per-step schedule over `total_steps` (None for a constant learning rate).

        Public so that a hand-written loop (the benchmark's baseline for Lightning's overhead) trains the same.
        """
        hp = self.hparams
        groups = parameter_groups(self, self.net, hp.lr, hp.weight_decay, hp.backbone_lr_scale, hp.norm_bias_lr_scale)
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=True)
        else:
            optimizer = torch.optim.AdamW(groups, lr=hp.lr)
        if hp.schedule == "constant":
            return optimizer, None
        # Built afresh by every fit, a resumed one included, with that fit's total: see schedule.py.
        return optimizer, one_cycle(optimizer, total_steps, hp.warmup_fraction)

    def network_module(self) -> nn.Module:
        """The whole inference path (normalization + network), as exported."""
        return nn.Sequential(self.normalize, self.net)
