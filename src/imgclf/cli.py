"""main.py's logic: Lightning's CLI, a folder per run, fit, then test with the best checkpoint."""

from __future__ import annotations

import os
import sys
from datetime import datetime, timedelta
from pathlib import Path

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from imgclf.artifacts import RunArtifacts
from imgclf.checkpoints import read_checkpoint
from imgclf.data import ImageDataModule
from imgclf.distributed import check_trainer, launcher_job_id, with_timeout
from imgclf.errors import UserError
from imgclf.model import ImageClassifier
from imgclf.tracking import DVCLiveConfusionMatrix, dvclive_logger_config

RUN_DIR_ENV = "IMGCLF_RUN_DIR"  # DDP's re-launched ranks inherit it, so every rank names the same folder
DATA_TO_MODEL = ["num_classes", "in_channels", "image_size", "mean", "std", "class_names"]


def new_run_dir(runs_dir: Path, dataset: str, network: str, run_name: str | None = None) -> Path:
    """The name of a fresh folder runs/<time or job id>-<dataset>-<network> (or runs/<run_name>), the same
    on every rank.

    Only named here: `RunArtifacts` creates it when training starts, so a run refused for bad input
    leaves no empty folder behind and runs/latest keeps pointing at the last real run. Ranks that Lightning
    re-launches inherit the name through IMGCLF_RUN_DIR; ranks that torchrun or srun start independently
    name it after the launcher's job id (their clocks can tick apart).
    """
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    if run_name:  # the same on every rank already: no launcher job id needed (torchrun may have none)
        run_dir = runs_dir / run_name
        if rank_zero_only.rank == 0 and run_dir.exists():  # a stable path, e.g. a DVC stage output
            raise UserError(f"Run folder {run_dir} already exists and --run_name never overwrites a run. "
                            f"Delete or rename it, or pick another --run_name.")
    elif job_id := launcher_job_id():
        run_dir = runs_dir / f"{job_id}-{dataset}-{network}"
        if rank_zero_only.rank == 0 and run_dir.exists():
            raise UserError(f"Run folder {run_dir} already exists: a job with the same id ran before. Start "
                            f"the job with a new id (torchrun --rdzv-id, or a new SLURM job), or set "
                            f"--runs_dir to another folder.")
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = runs_dir / f"{stamp}-{dataset}-{network}"
        suffix = 1
        while run_dir.exists():  # two runs started in the same second
            suffix += 1
            run_dir = runs_dir / f"{stamp}-{dataset}-{network}-{suffix}"
    os.environ[RUN_DIR_ENV] = str(run_dir)
    return run_dir


def check_checkpoint(path: str, model: torch.nn.Module) -> None:
    """Refuse a checkpoint that is missing, unreadable or of another network, before training starts."""
    raw = read_checkpoint(path, "Pass a .ckpt file written by a run (for example runs/latest/last.ckpt) "
                                "to --ckpt_path.")
    state = raw.get("state_dict", {}) if isinstance(raw, dict) else {}
    expected = model.state_dict()
    wrong = [k for k, v in expected.items() if k not in state or state[k].shape != v.shape]
    unexpected = [k for k in state if k not in expected]
    if wrong or unexpected:
        raise UserError(
            f"Checkpoint {path} does not fit the network {model.hparams.network!r} with "
            f"{model.hparams.num_classes} classes and {model.hparams.in_channels} input channels "
            f"({len(wrong)} parameters missing or of another shape, e.g. {(wrong or unexpected)[:3]}). "
            f"Use the config the checkpoint was trained with (its run folder holds config.yaml)."
        )


class ImageClassificationCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="Resume training from this checkpoint (e.g. runs/latest/last.ckpt).")
        parser.add_argument("--runs_dir", type=str, default="runs", help="Parent folder of the run folders.")
        parser.add_argument("--run_name", type=str | None, default=None,
                            help="Run folder name under runs_dir, instead of <time>-<dataset>-<network>.")
        parser.add_argument("--ddp_timeout_s", type=int, default=600,
                            help="Multi-process runs: seconds a rank waits for the others in a collective "
                                 "before the job fails (applies to strategies given by name, e.g. ddp).")
        for key in DATA_TO_MODEL:
            parser.link_arguments(f"data.{key}", f"model.{key}", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config
        self.run_dir = new_run_dir(Path(config.runs_dir), config.data.dataset, config.model.network,
                                   config.run_name)
        config.trainer.default_root_dir = str(self.run_dir)
        if config.trainer.logger in (None, True):
            csv = {"class_path": "lightning.pytorch.loggers.CSVLogger",
                   "init_args": {"save_dir": str(self.run_dir), "name": "", "version": ""}}
            dvclive = dvclive_logger_config(self.run_dir)  # DVCLive feeds `dvc exp show` / `dvc plots`
            config.trainer.logger = [csv, dvclive] if dvclive else [csv]

    def instantiate_trainer(self, **kwargs):
        self.checkpoint = ModelCheckpoint(
            dirpath=self.run_dir, filename="best", monitor="val/acc", mode="max",
            save_last=True, auto_insert_metric_name=False,
        )
        self.artifacts = RunArtifacts(self.run_dir)
        trainer_config = self.config_init.trainer
        configured = trainer_config.callbacks or []  # --trainer.callbacks: passing callbacks= replaces them
        configured = configured if isinstance(configured, list) else [configured]
        strategy = with_timeout(trainer_config.strategy, timedelta(seconds=self.config.ddp_timeout_s))
        trainer = super().instantiate_trainer(
            callbacks=[*configured, self.checkpoint, self.artifacts, DVCLiveConfusionMatrix()],
            strategy=strategy, **kwargs,
        )
        check_trainer(trainer, trainer_config.sync_batchnorm, self.datamodule.global_batch_size)
        return trainer


def main(args: list[str] | None = None, default_config: Path | None = None) -> Path:
    """Fit, test with the best checkpoint, write the run's artifacts; returns the run folder."""
    inherited_run_dir = os.environ.get(RUN_DIR_ENV)
    try:
        return fit_and_test(args, default_config)
    finally:  # a later run in this process (tests, notebooks) must get a folder of its own
        if inherited_run_dir is None:
            os.environ.pop(RUN_DIR_ENV, None)


def fit_and_test(args: list[str] | None, default_config: Path | None) -> Path:
    cli = ImageClassificationCLI(
        ImageClassifier,
        ImageDataModule,
        run=False,
        args=args,
        seed_everything_default=0,
        save_config_kwargs={"config_filename": "config.yaml", "overwrite": True},
        parser_kwargs={"default_config_files": [str(default_config)] if default_config else []},
    )
    ckpt_path = cli.config.ckpt_path
    if ckpt_path:
        check_checkpoint(ckpt_path, cli.model)
    has_val = cli.datamodule.val_fraction > 0
    if not has_val:  # nothing to rank checkpoints by: keep and test the last one
        cli.checkpoint.monitor = None
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best" if has_val else "last")
    if cli.trainer.is_global_zero:
        print(f"\nRun folder: {cli.run_dir}  (also {cli.run_dir.parent / 'latest'})", file=sys.stderr)
    return cli.run_dir
