"""The stages of `python -m imgclf.bench.gpu_check`, one per process: `python -m imgclf.bench.gpu_stages NAME
--work DIR --data DIR [--smoke]` writes DIR/NAME.json. gpu_check runs each under a time limit, so a stage that
hangs or overruns costs its own figures only. Runs, checkpoints and exports stay in the work folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import torch

from imgclf.bench.overhead import lightning_step_seconds
from imgclf.bench.pipeline import build, run_pipeline
from imgclf.data.datamodule import ImageDataModule
from imgclf.model.classifier import ImageClassifier
from imgclf.train.config import PROJECT as REPO
from imgclf.train.divergence import DivergenceGuard

CONFIG = REPO / "configs" / "fast_fashion_mnist.yaml"
SEEDS = (0, 1, 2)
TARGET = 0.94
SMOKE_TEST_BATCHES = 2
# --smoke: every stage on the CPU with the narrow network and a few batches, to check the script itself.
SMOKE_ARGS = ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--trainer.benchmark", "false",
              "--model.network", "airbench_small", "--model.channels_last", "false", "--trainer.max_epochs", "1",
              "--trainer.check_val_every_n_epoch", "1", "--trainer.limit_train_batches", "4",
              "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", str(SMOKE_TEST_BATCHES)]


def recipe_args(data: Path, smoke: bool) -> list[str]:
    """main.py's arguments for the checked recipe: the carried data, never a download."""
    return ["--config", str(CONFIG), "--data.root", str(data), "--data.download", "false",
            *(SMOKE_ARGS if smoke else [])]


def run(args: list[str], log: Path) -> subprocess.CompletedProcess:
    """A script of the checkout under this interpreter and import path; its output appended to `log`."""
    done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True)
    with log.open("a") as out:
        out.write(f"$ {' '.join(args)}\n{done.stdout}\n{done.stderr}\n-> exit {done.returncode}\n")
    return done


def env_stage(work: Path, data: Path, smoke: bool) -> dict:
    """check_env.py's checks. Only the GPU section decides: the GPU machine lacks dvc and the DVC-tracked
    datasets on purpose, which check_env.py rightly calls failures of a training machine."""
    done = run(["check_env.py", "--json", *([] if smoke else ["--require-gpu"])], work / "env.log")
    try:
        checks = json.loads(done.stdout)["checks"]
    except (ValueError, KeyError):
        checks = {}
    fails = [f"{section}/{name}" for section, entries in checks.items() for name, check in entries.items()
             if check.get("status") == "FAIL"]
    return {"exit": done.returncode, "fails": fails, "gpu": checks.get("gpu"),
            "passed": bool(checks) and not any(f.startswith("gpu/") for f in fails),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, "lightning": L.__version__}


class SyncCounter(L.Callback):
    """CUDA's sync debug mode on for the steps after `warmup`: each implicit host sync then warns."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup and torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("warn")

    def on_train_end(self, trainer, pl_module) -> None:
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode(0)


def syncs_stage(work: Path, data: Path, smoke: bool) -> dict:
    main_args, (warmup, steps) = recipe_args(data, smoke), (2, 4) if smoke else (5, 30)
    # log_every_n_steps above the steps: logging reads values back by design, on its own steps only
    trainer_config, model, datamodule, callbacks = build(main_args, None, None, max_epochs=None,
                                                         max_steps=warmup + steps, limit_val_batches=0,
                                                         log_every_n_steps=10_000)
    guard = DivergenceGuard(check_every_n_steps=10_000)  # as in main.py, where it reads every log interval
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        L.Trainer(**trainer_config, callbacks=[*callbacks, guard, SyncCounter(warmup)]).fit(model,
                                                                                           datamodule=datamodule)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    places: dict[str, int] = {}
    for w in syncs:
        places[f"{w.filename}:{w.lineno}"] = places.get(f"{w.filename}:{w.lineno}", 0) + 1
    step_seconds = lightning_step_seconds(main_args, None, warmup, steps, None)
    return {"counted": torch.cuda.is_available(), "steps": steps, "host_syncs": len(syncs),
            "per_step": len(syncs) / steps, "where": dict(sorted(places.items(), key=lambda kv: -kv[1])[:10]),
            "steps_per_second": 1 / step_seconds}


def main_stage(work: Path, data: Path, smoke: bool, name: str, extra: list[str]) -> dict:
    log = work / f"{name}.log"
    done = run(["main.py", *recipe_args(data, smoke), "--runs_dir", str(work / "runs"), "--run_name", name,
                *extra], log)
    metrics = work / "runs" / name / "metrics.json"
    result = {"exit": done.returncode, "metrics": json.loads(metrics.read_text()) if metrics.is_file() else None}
    if "--model.compile" in extra:
        result["recompiles"] = log.read_text().count("Recompiling")
    return result


def evaluate_checkpoint(ckpt: Path, accelerator: str, precision: str, limit_test_batches: int | None) -> dict:
    """Test metrics of the weights in `ckpt`, in a Trainer of its own with no callbacks, at `precision`."""
    model = ImageClassifier.load_from_checkpoint(ckpt, map_location="cpu")
    data = ImageDataModule.load_from_checkpoint(ckpt, map_location="cpu")
    trainer = L.Trainer(accelerator=accelerator, devices=1, precision=precision, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_test_batches=limit_test_batches)
    return {k: float(v) for k, v in trainer.test(model, datamodule=data, verbose=False)[0].items()}


def saved_weights_stage(work: Path, data: Path, smoke: bool) -> dict:
    """metrics.json of the plain run against a separate test of its best.ckpt, at the run's own precision
    (bf16 against bf16: fp32 against bf16 differs by about one image and would be a false alarm)."""
    run_dir = work / "runs" / "plain"
    if not (run_dir / "best.ckpt").is_file():
        return {"passed": False, "reason": "the plain run left no best.ckpt"}
    written = json.loads((run_dir / "metrics.json").read_text())
    trainer_config = build(recipe_args(data, smoke), None, None)[0]
    precision = str(trainer_config["precision"])
    separate = evaluate_checkpoint(run_dir / "best.ckpt", "cpu" if smoke else "gpu", precision,
                                   SMOKE_TEST_BATCHES if smoke else None)
    diffs = {k: abs(written[k] - separate[k]) for k in ("test/acc", "test/loss")}
    return {"precision": precision, "metrics_json": written, "separate_evaluation": separate, "abs_diff": diffs,
            "passed": diffs["test/acc"] <= 1e-4 and diffs["test/loss"] <= 1e-3}


def onnx_stage(work: Path, data: Path, smoke: bool) -> dict:
    ckpt, onnx_file, report = work / "runs/plain/best.ckpt", work / "model.onnx", work / "onnx_report.json"
    exported = run(["export.py", "--ckpt", str(ckpt), "--output", str(onnx_file)], work / "onnx.log")
    verified = run(["verify_onnx.py", "--model", str(onnx_file), "--ckpt", str(ckpt), "--report", str(report)],
                   work / "onnx.log")
    return {"export_exit": exported.returncode, "verify_exit": verified.returncode,
            "passed": exported.returncode == verified.returncode == 0,
            "report": json.loads(report.read_text()) if report.is_file() else None}


class RankRecord(L.Callback):
    """Each rank's whitening filters (a digest) and batch, written to <work>/ddp_rank<R>.json after fit."""

    def __init__(self, work: Path) -> None:
        self.work = work

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        whiten = pl_module.net.whiten.weight.detach().float().cpu().numpy().tobytes()
        record = {"whitening_sha256": hashlib.sha256(whiten).hexdigest(), "device": str(pl_module.device),
                  "batch_size": trainer.datamodule.batch_size, "steps": trainer.global_step}
        (self.work / f"ddp_rank{trainer.global_rank}.json").write_text(json.dumps(record))


def ddp_stage(work: Path, data: Path, smoke: bool) -> dict:
    """Two ranks on one device (gloo, which takes CUDA tensors): the multi-rank code runs where it trains.

    Lightning starts rank 1 by re-running this stage's command line with LOCAL_RANK=1; only rank 0 reports.
    """
    from lightning.pytorch.strategies import DDPStrategy

    trainer_config, model, datamodule, callbacks = build(recipe_args(data, smoke), None, None)
    device = torch.device("cpu") if smoke else torch.device("cuda", 0)
    for key in ("accelerator", "devices", "strategy", "num_nodes"):
        trainer_config.pop(key, None)
    strategy = DDPStrategy(parallel_devices=[device, device], process_group_backend="gloo")
    trainer = L.Trainer(**trainer_config, strategy=strategy,
                        callbacks=[*callbacks, DivergenceGuard(), RankRecord(work)])
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    fit_seconds = time.perf_counter() - start
    [metrics] = trainer.test(model, datamodule=datamodule, verbose=False)
    if trainer.global_rank != 0:
        sys.exit(0)  # rank 1 has nothing to report, and must not write the stage's result
    ranks = [json.loads((work / f"ddp_rank{r}.json").read_text()) for r in range(2)]
    return {"world_size": trainer.world_size, "ranks": ranks, "fit_seconds": fit_seconds,
            "test_acc": float(metrics["test/acc"]),
            "whitening_equal": ranks[0]["whitening_sha256"] == ranks[1]["whitening_sha256"],
            "passed": trainer.world_size == 2 and ranks[0]["whitening_sha256"] == ranks[1]["whitening_sha256"]}


def seeds_stage(work: Path, data: Path, smoke: bool) -> dict:
    rows = []
    for seed in SEEDS[:1] if smoke else SEEDS:
        curve = run_pipeline([*recipe_args(data, smoke), "--seed_everything", str(seed)], None, 60, stop_at=1.01,
                             evals_per_epoch=1)
        final = curve.points[-1] if curve.points else None
        rows.append({"seed": seed, "seconds_to_target": curve.time_to(TARGET),
                     "final_test_acc": final.test_accuracy if final else None,
                     "train_seconds": final.train_seconds if final else None})
    return {"target": TARGET, "seeds": rows}


STAGES = {
    "env": env_stage,
    "syncs": syncs_stage,
    "plain": lambda w, d, s: main_stage(w, d, s, "plain", []),
    "saved_weights": saved_weights_stage,
    "onnx": onnx_stage,
    "ddp_2ranks": ddp_stage,
    "seeds": seeds_stage,
    "compile": lambda w, d, s: main_stage(w, d, s, "compile", ["--model.compile", "true"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("stage", choices=sorted(STAGES))
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.stage == "compile":  # main.py then logs each recompilation, which the stage counts
        os.environ.setdefault("TORCH_LOGS", "recompiles")
    result = STAGES[args.stage](args.work, args.data, args.smoke)
    partial = args.work / f"{args.stage}.json.partial"
    partial.write_text(json.dumps(result, default=str))
    partial.replace(args.work / f"{args.stage}.json")


if __name__ == "__main__":
    main()
