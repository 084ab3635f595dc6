"""Multi-process training (strategy="ddp"): sharding, run folder, timeout, global batch, and end-to-end runs.

The end-to-end tests run main.py as a subprocess with 2 CPU processes (gloo): DDP re-launches the script,
which cannot happen inside the pytest process. Test-only callbacks from tests/ddp_probe.py record what each
rank saw, or break rank 1.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import QUIET_ARGS, REPO, quiet_trainer
from lightning.pytorch.strategies import DDPStrategy

from imgclf.data.arrays import ImageArrays
from imgclf.data.datamodule import ImageDataModule
from imgclf.data.memory_loaders import InMemoryBatches, shard_bounds
from imgclf.distributed import check_trainer, launcher_job_id, per_device_batch_size, with_timeout
from imgclf.errors import UserError
from imgclf.model.classifier import ImageClassifier
from imgclf.train.run import RUN_DIR_ENV, new_run_dir

TESTS = Path(__file__).resolve().parent
DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
TINY = ["--trainer.max_epochs", "2", *QUIET_ARGS]


# ----------------------------------------------------------------------------- sharding (unit)
@pytest.mark.parametrize("n", [0, 1, 2, 5, 7, 10, 100, 1293])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_shard_bounds_are_disjoint_covering_and_balanced(n: int, world: int) -> None:
    bounds = [shard_bounds(n, rank, world) for rank in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(stop == next_start for (_, stop), (next_start, _) in zip(bounds, bounds[1:], strict=False))
    sizes = [stop - start for start, stop in bounds]
    assert min(sizes) >= 0 and max(sizes) - min(sizes) <= 1


def arrays(n: int) -> ImageArrays:
    """n 1x1 images whose pixel value and label are their index (mod 256 / as is), to trace what is served."""
    return ImageArrays(torch.arange(n).remainder(256).to(torch.uint8).view(n, 1, 1, 1), torch.arange(n))


def served(n: int, world: int, batch_size: int, shuffle: bool, epoch: int = 0) -> list[list[torch.Tensor]]:
    data = arrays(n)
    loaders = [InMemoryBatches(data, batch_size, shuffle, seed=7, rank=rank, world_size=world,
                               epoch=lambda: epoch) for rank in range(world)]
    return [[labels for _, labels in loader] for loader in loaders]


@pytest.mark.parametrize("n,world,batch_size", [(1293, 2, 64), (100, 3, 8), (10, 4, 2), (64, 2, 32)])
def test_training_shards_partition_the_set_every_epoch(n: int, world: int, batch_size: int) -> None:
    orders = []
    for epoch in range(3):
        per_rank = served(n, world, batch_size, shuffle=True, epoch=epoch)
        assert len({len(batches) for batches in per_rank}) == 1, "ranks must step equally often"
        assert all(len(b) <= batch_size for batches in per_rank for b in batches)
        seen = torch.cat([torch.cat(batches) for batches in per_rank])
        assert sorted(seen.tolist()) == list(range(n)), "disjoint shards whose union is the whole set"
        orders.append(seen)
    assert not torch.equal(orders[0], orders[1]), "a new permutation every epoch"


@pytest.mark.parametrize("n,world,batch_size",
                         [(360, 2, 1024), (361, 2, 100), (7, 3, 2), (1, 2, 4), (3, 2, 1)])
def test_evaluation_shards_count_every_image_once_in_order(n: int, world: int, batch_size: int) -> None:
    per_rank = served(n, world, batch_size, shuffle=False)
    assert all(len(batches) >= 1 for batches in per_rank), "every rank must step, to join the metric sync"
    assert torch.cat([torch.cat(batches) for batches in per_rank]).tolist() == list(range(n))


def test_empty_evaluation_batches_leave_the_metrics_unchanged() -> None:
    """A rank whose shard is smaller than its batch count gets an empty batch; it must count nothing."""
    model = ImageClassifier(num_classes=3, in_channels=1, image_size=(8, 8), mean=(0.5,), std=(0.5,))
    model.eval()
    images, labels = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8), torch.tensor([0, 1, 2, 0, 1])
    model.log = model.log_dict = lambda *args, **kwargs: None  # no Trainer here to log to
    with torch.no_grad():
        model.test_step((images[:0], labels[:0]), 0)
        model.test_step((images, labels), 1)
        expected = torch.nn.functional.cross_entropy(model(images), labels)
    assert model.test_confmat.compute().sum() == 5
    assert torch.allclose(model.test_loss.compute(), expected)


# ----------------------------------------------------------------------------- launch settings (unit)
def test_launcher_job_id_names_torchrun_and_srun_jobs() -> None:
    assert launcher_job_id({}) is None
    assert launcher_job_id({"TORCHELASTIC_RUN_ID": "abc", "WORLD_SIZE": "1"}) is None  # one process: time
    assert launcher_job_id({"TORCHELASTIC_RUN_ID": "job/7", "WORLD_SIZE": "4"}) == "torchrun-job_7"
    srun = {"SLURM_JOB_ID": "123", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "8"}
    assert launcher_job_id(srun) == "slurm-123.0"
    assert launcher_job_id({**srun, "SLURM_NTASKS": "1"}) is None
    assert launcher_job_id({k: v for k, v in srun.items() if k != "SLURM_STEP_ID"}) is None  # batch script
    with pytest.raises(UserError, match="--rdzv-id"):
        launcher_job_id({"TORCHELASTIC_RUN_ID": "none", "WORLD_SIZE": "4"})


def test_run_dir_is_inherited_or_named_after_the_job(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(RUN_DIR_ENV, str(tmp_path / "given"))  # inherited from the launching rank
    assert new_run_dir(tmp_path, "digits", "small_cnn") == tmp_path / "given"
    monkeypatch.delenv(RUN_DIR_ENV)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "r1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    run_dir = new_run_dir(tmp_path, "digits", "small_cnn")
    assert run_dir == tmp_path / "torchrun-r1-digits-small_cnn"
    monkeypatch.delenv(RUN_DIR_ENV)  # a job that reused the id of an earlier one (rank 0 made the folder)
    with pytest.raises(UserError, match="already exists"):
        new_run_dir(tmp_path, "digits", "small_cnn")


def test_named_strategies_get_the_timeout() -> None:
    strategy = with_timeout("ddp", timedelta(seconds=42))
    assert isinstance(strategy, DDPStrategy) and strategy._timeout == timedelta(seconds=42)
    assert with_timeout("ddp_find_unused_parameters_true", timedelta(seconds=5))._ddp_kwargs == {
        "find_unused_parameters": True}
    assert with_timeout("auto", timedelta(seconds=5)) == "auto"
    given = DDPStrategy()
    assert with_timeout(given, timedelta(seconds=5)) is given
    with pytest.raises(UserError, match="positive"):
        with_timeout("ddp", timedelta(0))


def test_global_batch_size_is_split_over_the_processes() -> None:
    assert per_device_batch_size(256, 4) == 64
    assert per_device_batch_size(64, 1) == 64
    with pytest.raises(UserError, match="multiple of 3"):
        per_device_batch_size(64, 3)
    with pytest.raises(UserError, match="at least 2"):
        per_device_batch_size(4, 4)


def test_impossible_settings_fail_before_any_process_starts() -> None:
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)  # launches nothing yet
    check_trainer(trainer, sync_batchnorm=False, global_batch_size=64)
    with pytest.raises(UserError, match="multiple of 2"):
        check_trainer(trainer, sync_batchnorm=False, global_batch_size=33)
    with pytest.raises(UserError, match="sync_batchnorm"):
        check_trainer(trainer, sync_batchnorm=True, global_batch_size=None)


# ----------------------------------------------------------------------------- end to end, 2 CPU processes
def run_main(args: list[str], log: Path, timeout: float = 600) -> tuple[int, float]:
    """Run main.py (or a launcher around it) in its own process group; returns (exit code, seconds)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "PYTHONUNBUFFERED": "1"}
    env.pop(RUN_DIR_ENV, None)
    start = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        finally:
            try:  # a rank left behind by a failed job (e.g. the one sleeping in the hang test) goes too
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return code, time.monotonic() - start


def single_device_test(checkpoint: Path) -> dict[str, float]:
    model = ImageClassifier.load_from_checkpoint(checkpoint, map_location="cpu")
    trainer = quiet_trainer()
    [metrics] = trainer.test(model, datamodule=ImageDataModule(dataset="digits"), verbose=False)
    return metrics | {"confusion": model.test_confusion}


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("ddp")
    args = ["main.py", *DDP, *TINY, "--runs_dir", str(tmp / "runs"), "--data.global_batch_size", "64",
            "--trainer.callbacks+=ddp_probe.ShardRecorder", "--trainer.callbacks.out_dir", str(tmp / "probe")]
    code, seconds = run_main(args, tmp / "log.txt")
    ranks = [json.loads(p.read_text()) for p in sorted((tmp / "probe").glob("rank*.json"))]
    return {"code": code, "seconds": seconds, "runs": tmp / "runs", "ranks": ranks,
            "log": (tmp / "log.txt").read_text()}


@pytest.mark.slow
def test_ddp_run_writes_one_run_folder(ddp_run: dict) -> None:
    assert ddp_run["code"] == 0, ddp_run["log"][-3000:]
    folders = [p for p in ddp_run["runs"].iterdir() if p.name != "latest"]
    assert len(folders) == 1 and (ddp_run["runs"] / "latest").resolve() == folders[0].resolve()
    assert sorted(p.name for p in folders[0].glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]
    assert len(list(ddp_run["runs"].rglob("*.ckpt"))) == 2 and (folders[0] / "metrics.json").is_file()
    assert len(ddp_run["ranks"]) == 2
    for rank in ddp_run["ranks"]:  # every rank agreed on the folder and tested the same best checkpoint
        assert Path(rank["root_dir"]) == Path(rank["checkpoint_dir"]) == folders[0]
        assert Path(rank["test_ckpt"]) == folders[0] / "best.ckpt"


@pytest.mark.slow
def test_ddp_ranks_train_on_disjoint_shards_covering_the_train_set(ddp_run: dict) -> None:
    data = ImageDataModule(dataset="digits")
    data.setup()
    train_labels = data.splits["train"].labels
    ranks = ddp_run["ranks"]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["batch_size"] for r in ranks] == [32, 32]
    for epoch in range(2):
        shards = [r["epochs"][epoch] for r in ranks]
        for shard in shards:  # the labels that arrived are those of the indices the loader claims it served
            assert shard["labels"] == train_labels[shard["indices"]].tolist()
        seen = sorted(shards[0]["indices"] + shards[1]["indices"])
        assert seen == list(range(len(train_labels)))
    assert ranks[0]["epochs"][0]["indices"] != ranks[0]["epochs"][1]["indices"]


@pytest.mark.slow
def test_ddp_test_metrics_equal_a_single_device_test_of_the_best_checkpoint(ddp_run: dict) -> None:
    run_dir = ddp_run["runs"] / "latest"
    ddp = json.loads((run_dir / "metrics.json").read_text())
    single = single_device_test(run_dir / "best.ckpt")
    assert sum(r["test_images"] for r in ddp_run["ranks"]) == single["confusion"].sum() == 360
    assert ddp["test/acc"] == single["test/acc"]  # exactly: counts, not float sums
    assert ddp["test/acc_top5"] == single["test/acc_top5"]
    assert ddp["test/f1_macro"] == pytest.approx(single["test/f1_macro"], rel=1e-6)
    assert ddp["test/loss"] == pytest.approx(single["test/loss"], rel=1e-5)  # float sums in another order
    confusion = [[int(v) for v in line.split(",")[1:]]
                 for line in (run_dir / "confusion_matrix.csv").read_text().splitlines()[1:]]
    assert confusion == single["confusion"].tolist()


@pytest.mark.slow
def test_torchrun_ranks_agree_on_run_folder_and_shards_without_a_seed(tmp_path: Path) -> None:
    """torchrun starts both ranks itself; with `seed_everything: false` each has its own random torch seed."""
    args = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "main.py", *DDP, *TINY,
            "--seed_everything", "false", "--trainer.max_epochs", "1", "--runs_dir", str(tmp_path / "runs"),
            "--trainer.callbacks+=ddp_probe.ShardRecorder", "--trainer.callbacks.out_dir", str(tmp_path)]
    code, _ = run_main(args, tmp_path / "log.txt")
    assert code == 0, (tmp_path / "log.txt").read_text()[-3000:]
    [folder] = [p for p in (tmp_path / "runs").iterdir() if p.name != "latest"]
    assert folder.name.startswith("torchrun-")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(Path(r["test_ckpt"]) == folder / "best.ckpt" for r in ranks)
    shards = [set(r["epochs"][0]["indices"]) for r in ranks]
    assert not shards[0] & shards[1] and len(shards[0] | shards[1]) == 1293


def failing_run(tmp_path: Path, extra: list[str]) -> tuple[int, float | None, str]:
    """Runs main.py with rank 1 broken; returns (exit code, seconds the job lived after the break, log)."""
    args = ["main.py", *DDP, *TINY, "--runs_dir", str(tmp_path / "runs"), "--trainer.max_epochs", "3",
            "--trainer.callbacks+=ddp_probe.FailOnRank", "--trainer.callbacks.stamp_file",
            str(tmp_path / "broken_at"), *extra]
    code, _ = run_main(args, tmp_path / "log.txt", timeout=300)
    stamp = tmp_path / "broken_at"
    latency = time.time() - float(stamp.read_text()) if stamp.is_file() else None
    return code, latency, (tmp_path / "log.txt").read_text()


@pytest.mark.slow
def test_a_failure_on_rank_1_ends_the_job_non_zero(tmp_path: Path) -> None:
    code, latency, log = failing_run(tmp_path, [])
    assert code != 0
    assert "failure forced on rank 1" in log
    assert latency is not None and latency < 60, f"the job lived {latency} s after rank 1 failed"


@pytest.mark.slow
def test_a_hung_rank_times_out_instead_of_hanging(tmp_path: Path) -> None:
    """Rank 1 sleeps 10 minutes inside a training step; rank 0 must give up after --ddp_timeout_s.

    Under heavy CPU contention rank 1 can take longer than the timeout to start and join the process group;
    then the same timeout ends the job at the rendezvous instead, which this test accepts too.
    """
    timeout_s = 25
    code, latency, log = failing_run(tmp_path, ["--trainer.callbacks.hang_s", "600",
                                                "--ddp_timeout_s", str(timeout_s)])
    assert code != 0
    if latency is None:  # rank 1 never reached the step that hangs
        assert re.search(r"Timed out after \d+ seconds waiting for clients", log), log[-3000:]
    else:
        # gloo words it either way, depending on which side of the collective notices first
        assert re.search(rf"Timed out waiting {timeout_s * 1000}ms|Application timeout caused pair closure", log), \
            log[-3000:]
        assert latency < timeout_s + 60, f"the job lived {latency:.0f} s after rank 1 hung"
