"""The run folder: one per run, created atomically so that no two runs ever share one, holding everything the
run writes (config, logs, checkpoints), and runs/latest pointing at the newest run that trained.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
from datetime import datetime
from pathlib import Path

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.cli import SaveConfigCallback

from imgclf.atomic import storage_error, write_text
from imgclf.distributed import launcher_job_id, restart_count
from imgclf.errors import UserError
from imgclf.train.tracking import dvclive_logger_config

RUN_DIR_ENV = "IMGCLF_RUN_DIR"  # DDP's re-launched ranks inherit it, so every rank names the same folder


def run_stamp() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def _mkdir(run_dir: Path) -> None:
    """os.mkdir is atomic: of two processes creating the same folder, exactly one succeeds, the other gets
    FileExistsError."""
    try:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        run_dir.mkdir()
    except FileExistsError:
        raise
    except OSError as e:  # read-only or full filesystem, no permission
        raise storage_error(e, run_dir, "run folder") from e


def continues_own_run(run_dir: Path) -> bool:
    """True for a job that its launcher restarted with the same arguments (a requeued SLURM job, torchrun's
    --max-restarts) when its run folder from before the restart exists: the job continues that run in place.

    It is the same run, named by the same job id or --run_name, so writing on into its folder destroys no
    other run's files; a new job (another id) never gets here.
    """
    return restart_count() > 0 and (run_dir / "config.yaml").is_file()


def _create(run_dir: Path, exists_message: str) -> None:
    try:
        _mkdir(run_dir)
    except FileExistsError:
        if continues_own_run(run_dir):
            return
        raise UserError(exists_message) from None


def new_run_dir(runs_dir: Path, dataset: str, network: str, run_name: str | None = None) -> Path:
    """A fresh, empty folder runs/<time or job id>-<dataset>-<network> (or runs/<run_name>), the same on every
    rank, created by global rank 0.

    Two runs started in the same second get `-2`, `-3`... suffixes: each claims its name with an atomic
    mkdir, so they can never share a folder. Ranks that Lightning re-launches inherit the name through
    IMGCLF_RUN_DIR; ranks that torchrun or srun start independently name it after the launcher's job id
    (their clocks can tick apart). A run refused before training removes the folder (`remove_if_empty`).
    """
    creator = rank_zero_only.rank == 0
    never_twice = "A run folder holds one run only: delete or rename it, or pick another"
    if os.environ.get(RUN_DIR_ENV):  # a re-launched DDP rank (rank 0 made it), or one chosen by train/grid.py
        run_dir = Path(os.environ[RUN_DIR_ENV])
        if creator:
            _create(run_dir, f"Run folder {run_dir} (from {RUN_DIR_ENV}) already exists. {never_twice} folder.")
        return run_dir
    if run_name:  # the same on every rank already: no launcher job id needed (torchrun may have none)
        run_dir = runs_dir / run_name
        if creator:  # a stable path, e.g. a DVC stage output
            _create(run_dir, f"Run folder {run_dir} already exists and --run_name never overwrites a run. "
                             f"{never_twice} --run_name.")
    elif job_id := launcher_job_id():
        run_dir = runs_dir / f"{job_id}-{dataset}-{network}"
        if creator:
            _create(run_dir, f"Run folder {run_dir} already exists: a job with the same id ran before. Start "
                             f"the job with a new id (torchrun --rdzv-id, or a new SLURM job), give it "
                             f"--run_name NAME, or set --runs_dir to another folder. (A job that SLURM requeued "
                             f"or torchrun restarted continues its own folder.)")
    else:
        stem = runs_dir / f"{run_stamp()}-{dataset}-{network}"
        run_dir, suffix = stem, 1
        while True:
            try:
                _mkdir(run_dir)
                break
            except FileExistsError:  # another run claimed this name (started in the same second)
                suffix += 1
                run_dir = stem.with_name(f"{stem.name}-{suffix}")
    os.environ[RUN_DIR_ENV] = str(run_dir)
    return run_dir


def remove_if_empty(run_dir: Path) -> None:
    """Remove the folder of a run refused before it wrote anything (rmdir only ever removes an empty one)."""
    try:
        run_dir.rmdir()
    except OSError:
        pass


def discard_untrained(run_dir: Path) -> None:
    """Remove the folder of a run refused before its first training step (bad data, a checkpoint of another
    run): it holds only what setting up wrote (config.yaml, empty logs), and no run's work."""
    shutil.rmtree(run_dir, ignore_errors=True)


def point_latest_at(run_dir: Path) -> None:
    latest = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name)
    tmp.replace(latest)  # atomic: runs/latest never dangles or vanishes


def _entry_class(entry) -> str:
    return str(entry.get("class_path", "")) if hasattr(entry, "get") else type(entry).__name__


def loggers_into(logger: object, run_dir: Path) -> object:
    """The trainer's logger setting with the CSV and DVCLive loggers writing into `run_dir`.

    A run's saved config.yaml names its own folder in the loggers' paths: a run resumed from it (or re-run
    with --config) must still log into its own new folder and leave the old one as it was.
    """
    csv = {"class_path": "imgclf.train.tracking.ContinuingCSVLogger",
           "init_args": {"save_dir": str(run_dir), "name": "", "version": ""}}
    if logger is False:
        return logger
    dvclive = dvclive_logger_config(run_dir)  # DVCLive feeds `dvc exp show` / `dvc plots`; None without it
    if logger in (None, True):
        return [csv, dvclive] if dvclive else [csv]
    entries = logger if isinstance(logger, list) else [logger]
    redirected = []
    for entry in entries:
        name = _entry_class(entry)
        if name.endswith("CSVLogger"):
            entry = csv
        elif name.endswith("DVCLiveLogger"):
            if dvclive is None:
                continue
            entry = dvclive
        redirected.append(entry)
    return redirected


class AtomicSaveConfig(SaveConfigCallback):
    """LightningCLI's config.yaml, written once into the run's own folder, beside its final name and renamed."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.already_saved or not trainer.is_global_zero:
            return
        run_dir = Path(self.config.trainer.default_root_dir)
        write_text(run_dir / self.config_filename, self.parser.dump(self.config, skip_unset=False), "run config")
        self.already_saved = True


def restart_checkpoint(run_dir: Path) -> str | None:
    """The newest checkpoint a restarted job continues from: Lightning's hpc_ckpt_<n>.ckpt (saved on SLURM's
    requeue signal, mid-epoch) or last.ckpt (the end of an epoch), whichever was written last."""
    saved = [*run_dir.glob("hpc_ckpt_*.ckpt"), run_dir / "last.ckpt"]
    saved = [path for path in saved if path.is_file()]
    return str(max(saved, key=lambda path: path.stat().st_mtime_ns)) if saved else None


def newest_checkpoint(runs_dir: Path, run_name: str | None) -> tuple[Path, str | None]:
    """`--ckpt_path last`: the last.ckpt of the newest run under runs_dir (runs/latest), or of the newest run
    named `run_name` or `run_name-resumed-<n>`; with the --run_name the new run gets (the next -resumed-<n>)."""
    if run_name:
        folders = [runs_dir / run_name, *runs_dir.glob(f"{glob.escape(run_name)}-resumed-*")]
        where = f"{runs_dir / run_name} or {runs_dir / run_name}-resumed-<n>"
    else:
        folders = [(runs_dir / "latest").resolve()] if (runs_dir / "latest").exists() else []
        where = f"{runs_dir / 'latest'}"
    found = [folder / "last.ckpt" for folder in folders if (folder / "last.ckpt").is_file()]
    if not found:
        raise UserError(f"--ckpt_path last found no run to continue: no last.ckpt in {where}. Check --runs_dir "
                        f"and --run_name, or pass a checkpoint file to --ckpt_path.")
    newest = max(found, key=lambda path: path.stat().st_mtime_ns)
    if not run_name:
        return newest, None
    done = re.fullmatch(rf"{re.escape(run_name)}-resumed-(\d+)", newest.parent.name)
    return newest, f"{run_name}-resumed-{int(done.group(1)) + 1 if done else 1}"


def resume_command(run_dir: Path, run_name: str | None) -> str:
    """The command that resumes this run from its last.ckpt (into a new folder)."""
    command = f"uv run python main.py --config {run_dir / 'config.yaml'} --ckpt_path {run_dir / 'last.ckpt'}"
    return command + (f" --run_name {run_name}-resumed" if run_name else "")


def retest_command(run_dir: Path, checkpoint: Path | str, run_name: str | None) -> str:
    """The command that tests `checkpoint` again, in a new folder: resumed with max_epochs equal to the epochs
    it had completed, the run trains no further and goes straight to its test."""
    try:
        epochs = int(torch.load(checkpoint, map_location="cpu", weights_only=False)["epoch"]) + 1
    except Exception:  # unreadable: the command still names the file, and resuming it explains the problem
        epochs = "<the epochs it completed>"
    command = (f"uv run python main.py --config {run_dir / 'config.yaml'} --ckpt_path {checkpoint} "
               f"--trainer.max_epochs {epochs}")
    return command + (f" --run_name {run_name}-retest" if run_name else "")
