"""main.py's logic: Lightning's CLI, a folder per run, fit, then test with the best checkpoint."""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from datetime import timedelta
from pathlib import Path

from lightning.fabric.plugins import CheckpointIO
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import ModelCheckpoint

from imgclf.atomic import is_storage_failure, storage_error
from imgclf.distributed import check_trainer, timeout_when_chosen_automatically, with_timeout
from imgclf.errors import UserError
from imgclf.model.weights import WeightsMisfit
from imgclf.train.artifacts import RunArtifacts
from imgclf.train.checkpoints import AtomicCheckpointIO, check_max_epochs, check_resumable
from imgclf.train.config import ConfigCLI
from imgclf.train.divergence import DivergenceGuard
from imgclf.train.run_folder import (
    RUN_DIR_ENV,
    AtomicSaveConfig,
    continues_own_run,
    discard_untrained,
    loggers_into,
    new_run_dir,
    newest_checkpoint,
    remove_if_empty,
    restart_checkpoint,
    resume_command,
    retest_command,
)
from imgclf.train.tracking import DVCLiveConfusionMatrix

__all__ = ["RUN_DIR_ENV", "ImageClassificationCLI", "main", "new_run_dir"]

LITLOGGER_TIP = "💡 Tip: For seamless cloud logging"


class RunInterrupted(UserError):
    """SIGINT (Ctrl-C) or SIGTERM stopped training; the message says how to resume."""


def _no_litlogger_tip(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(LITLOGGER_TIP)


def quiet_lightning() -> None:
    """Silence notices a plain run would print although nothing is wrong, each matched narrowly.

    Lightning advertises its cloud logger at every start, and its own loader code builds a torch pytree spec
    that torch 2.15 deprecates (nothing of ours calls it). Both come from inside Lightning, so they are
    filtered rather than fixed. So is its hint to use srun, where SLURM is installed but no job runs.
    """
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_no_litlogger_tip)  # kept once per process
    warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning,
                            r"lightning\.pytorch\.utilities\._pytree")
    if "SLURM_JOB_ID" not in os.environ:
        # Outside any SLURM allocation (a login node, a workstation or CI with SLURM's client installed) a plain
        # run is what the user meant; inside one, Lightning's hint to use srun stays (docs/distributed.md).
        warnings.filterwarnings("ignore", r"The `srun` command is available on your system but is not used")


def quiet_about_own_folder(run_dir: Path) -> None:
    """Lightning's checkpoint warnings that hold for other layouts, not for a fresh folder of this run's own.

    The run folder holds config.yaml and the logs beside the checkpoints, so it is never empty when
    checkpointing starts; and a resumed run's checkpoints go to a new folder on purpose, so Lightning's notice
    that the checkpoint folder "has changed" is expected.
    """
    folder = re.escape(os.path.realpath(run_dir))  # Lightning names it by its real path, also for runs/ (relative)
    warnings.filterwarnings("ignore", f"Checkpoint directory {folder} exists and is not empty")
    warnings.filterwarnings("ignore", f"The dirpath has changed from .* to '{folder}'")


def with_atomic_checkpoints(plugins: object) -> list:
    """The trainer's plugins, plus checkpoint files written atomically unless a CheckpointIO is configured."""
    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, list) else [plugins]
    if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
        plugins.append(AtomicCheckpointIO())
    return plugins


class ImageClassificationCLI(ConfigCLI):
    """main.py's command line (imgclf.train.config) with what a training run adds: its own folder, the loggers
    and checkpoints written into it, and the Trainer."""

    def before_instantiate_classes(self) -> None:
        config = self.config
        run_name = config.run_name
        if config.ckpt_path == "last":  # the newest run's last.ckpt, continued into a new folder
            last, run_name = newest_checkpoint(Path(config.runs_dir), config.run_name)
            config.ckpt_path = str(last)
        self.run_dir = new_run_dir(Path(config.runs_dir), config.data.dataset, config.model.network, run_name)
        # A job restarted by its launcher (SLURM requeue, torchrun --max-restarts) continues its own run in place.
        self.continues = continues_own_run(self.run_dir)
        # Everything this run writes goes into its own folder, whatever a saved config.yaml names.
        config.trainer.default_root_dir = str(self.run_dir)
        config.trainer.logger = loggers_into(config.trainer.logger, self.run_dir)
        quiet_about_own_folder(self.run_dir)

    def instantiate_trainer(self, **kwargs):
        # best.ckpt by validation accuracy; last.ckpt every epoch from its own callback: Lightning 2.6's
        # save_last only refreshes last.ckpt when a top-k checkpoint is saved at the same step, so with
        # save_top_k=1 it stayed at the best epoch once validation stopped improving.
        self.checkpoint = ModelCheckpoint(dirpath=self.run_dir, filename="best", monitor="val/acc", mode="max",
                                          auto_insert_metric_name=False, enable_version_counter=False)
        self.last_checkpoint = ModelCheckpoint(dirpath=self.run_dir, filename="last", monitor=None,
                                               save_top_k=1, enable_version_counter=False)
        self.artifacts = RunArtifacts(self.run_dir)
        trainer_config = self.config_init.trainer
        configured = trainer_config.callbacks or []  # --trainer.callbacks: passing callbacks= replaces them
        configured = configured if isinstance(configured, list) else [configured]
        guard = DivergenceGuard(check_every_n_steps=trainer_config.log_every_n_steps or 50)
        timeout = timedelta(seconds=self.config.ddp_timeout_s)
        strategy = with_timeout(trainer_config.strategy, timeout)
        trainer = super().instantiate_trainer(
            callbacks=[*configured, guard, self.checkpoint, self.last_checkpoint, self.artifacts,
                       DVCLiveConfusionMatrix()],
            plugins=with_atomic_checkpoints(trainer_config.plugins), strategy=strategy, **kwargs,
        )
        timeout_when_chosen_automatically(trainer, trainer_config.strategy, timeout)
        check_trainer(trainer, trainer_config.sync_batchnorm, self.datamodule.global_batch_size)
        return trainer


def main(args: list[str] | None = None, default_config: Path | None = None) -> Path:
    """Fit, test with the best checkpoint, write the run's artifacts; returns the run folder."""
    inherited_run_dir = os.environ.get(RUN_DIR_ENV)
    quiet_lightning()
    try:
        return fit_and_test(args, default_config)
    except BaseException as e:
        if rank_zero_only.rank == 0 and os.environ.get(RUN_DIR_ENV):
            remove_if_empty(Path(os.environ[RUN_DIR_ENV]))  # refused while building the model, data or trainer
        if isinstance(e, OSError) and is_storage_failure(e):  # a logger's or a library's own write
            raise storage_error(e, e.filename or os.environ.get(RUN_DIR_ENV, "the run folder")) from e
        raise
    finally:  # a later run in this process (tests, notebooks) must get a folder of its own
        if inherited_run_dir is None:
            os.environ.pop(RUN_DIR_ENV, None)


def interrupt_message(cli: ImageClassificationCLI) -> str:
    signal_name = "SIGTERM" if cli.trainer.received_sigterm else "SIGINT (Ctrl-C)"
    run_dir = cli.run_dir
    if not (run_dir / "last.ckpt").is_file():
        return (f"Training was stopped by {signal_name} before it completed an epoch, so there is no checkpoint "
                f"to resume; the test was skipped. Start it again with:\n"
                f"  uv run python main.py --config {run_dir / 'config.yaml'}")
    return (f"Training was stopped by {signal_name} after {cli.trainer.current_epoch} completed epochs; the test "
            f"was skipped. {run_dir} keeps the logs and last.ckpt, the end of the last completed epoch (the "
            f"unfinished epoch is trained again). Resume into a new run folder with:\n"
            f"  {resume_command(run_dir, cli.config.run_name)}")


def test_interrupt_message(cli: ImageClassificationCLI, tested: str) -> str:
    signal_name = "SIGTERM" if cli.trainer.received_sigterm else "SIGINT (Ctrl-C)"
    return (f"Testing was stopped by {signal_name}: training completed, but {cli.run_dir} has no metrics.json. "
            f"{tested} holds the weights being tested. Test them again (into a new run folder, training no "
            f"further) with:\n  {retest_command(cli.run_dir, tested, cli.config.run_name)}")


def fit_and_test(args: list[str] | None, default_config: Path | None) -> Path:
    cli = ImageClassificationCLI(args, default_config=default_config, save_config_callback=AtomicSaveConfig,
                                 save_config_kwargs={"config_filename": "config.yaml"})
    try:
        return fit_then_test(cli)
    except BaseException:
        if rank_zero_only.rank == 0 and not cli.artifacts.training_started and not cli.continues:
            discard_untrained(cli.run_dir)  # a refused run leaves no folder (a continued one keeps its work)
        raise


def fit_then_test(cli: ImageClassificationCLI) -> Path:
    # A restarted job goes on from its own newest checkpoint (none yet: it starts over, in its own folder).
    ckpt_path = restart_checkpoint(cli.run_dir) if cli.continues else cli.config.ckpt_path
    if ckpt_path:
        resumed = check_resumable(ckpt_path, cli.model, cli.datamodule.hparams.dataset)
        where = ("continuing in its own run folder (the job was restarted)" if cli.continues else
                 f"in the new run folder {cli.run_dir}; its own folder is left as it was")
        check_max_epochs(resumed, cli.trainer.max_epochs, ckpt_path)
        if cli.trainer.is_global_zero:
            print(f"Resuming {ckpt_path} (saved at epoch {resumed.get('epoch')}, step {resumed.get('global_step')}) "
                  f"{where}.", file=sys.stderr)
    has_val = cli.datamodule.val_fraction > 0 and cli.trainer.limit_val_batches != 0
    if not has_val:  # nothing to rank checkpoints by: keep and test the last one
        cli.checkpoint.monitor = None
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    except WeightsMisfit as e:  # the one fit check, the model's own, as Lightning restores the checkpoint
        raise UserError(f"Checkpoint {ckpt_path} does not fit: {e}. Use the config the checkpoint was trained "
                        f"with (its run folder holds config.yaml).") from None
    except SystemExit:  # Lightning exits on Ctrl-C, and raises SIGTERMException (a SystemExit) on SIGTERM
        if not cli.trainer.interrupted:
            raise
        raise RunInterrupted(interrupt_message(cli)) from None
    # The best checkpoint; else the last one saved; else (no validation ran, so nothing was saved) the final weights.
    best = cli.checkpoint.best_model_path if has_val else ""
    tested = best or cli.last_checkpoint.best_model_path or save_final_weights(cli)
    try:
        cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=tested)
    except SystemExit:  # as in fit; SIGTERMException has no exit code, so unhandled it would exit 0
        if not cli.trainer.interrupted:
            raise
        raise RunInterrupted(test_interrupt_message(cli, tested)) from None
    if cli.trainer.is_global_zero:
        latest = cli.run_dir.parent / "latest"
        also = f"  (also {latest})" if latest.resolve() == cli.run_dir.resolve() else ""  # not if it saved none
        print(f"\nRun folder: {cli.run_dir}{also}", file=sys.stderr)
    return cli.run_dir


def save_final_weights(cli: ImageClassificationCLI) -> str:
    """When no validation ran (e.g. --trainer.max_epochs below check_val_every_n_epoch) neither checkpoint
    callback saved: save the final weights as last.ckpt, so the test scores a file the run keeps."""
    path = str(cli.run_dir / "last.ckpt")
    cli.trainer.save_checkpoint(path)
    return path
