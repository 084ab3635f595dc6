"""The GPU recipes' check, in one run on a machine with one NVIDIA GPU (under 8 minutes on an H100/H200):

1. check_env.py --require-gpu;
2. host syncs over 30 training steps of fast_fashion_mnist.yaml (torch.cuda.set_sync_debug_mode("warn")), and
   training steps/s;
3. fast_fashion_mnist.yaml for 3 seeds: training seconds to 94% test accuracy and the final accuracy;
4. main.py with fast_fashion_mnist.yaml: plain, with --model.compile true (TORCH_LOGS=recompiles), and with
   --trainer.strategy ddp on the one GPU; their test accuracies compared;
5. the plain run's metrics.json against a separate evaluation of its best.ckpt;
6. export.py + verify_onnx.py on that checkpoint.

    PYTHONPATH=src python3 -m imgclf.bench.gpu_check --out gpu_check/        # on the GPU machine
    uv run python -m imgclf.bench.gpu_check --smoke --out /tmp/gpu_check  # anywhere: every step, cut down, on CPU

The GPU machine has torch, lightning, torchvision, torchmetrics, onnx and onnxruntime but neither jsonargparse
(LightningCLI) nor dvc: put the wheels of jsonargparse, docstring-parser and typeshed-client in .whl/ (pip
download --no-deps -d .whl jsonargparse docstring-parser typeshed-client, versions from uv.lock); this script
installs them into .whl/site without the network. Without dvclive, runs log to CSV only.
Multi-GPU DDP is not checked here: the machine has one GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]  # the checkout
CARRIED_SITE = REPO / ".whl" / "site"  # where the carried wheels are installed


def import_paths() -> list[str]:
    """src/ and, where jsonargparse is missing, the carried wheels, installed into CARRIED_SITE."""
    if importlib.util.find_spec("jsonargparse") is not None:
        return [str(REPO / "src")]
    wheels = sorted((REPO / ".whl").glob("*.whl"))
    if not wheels:
        sys.exit("error: jsonargparse is not installed and .whl/ holds no wheels: see this script's docstring.")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target",
                    str(CARRIED_SITE), *map(str, wheels)], check=True)
    return [str(REPO / "src"), str(CARRIED_SITE)]


# Before the imports below: the benchmark builds its runs with main.py's parser (LightningCLI), and Lightning
# looks for jsonargparse once, when lightning.pytorch.cli is first imported.
IMPORT_PATHS = import_paths()
sys.path[:0] = IMPORT_PATHS

import lightning as L  # noqa: E402
import torch  # noqa: E402

from imgclf.bench.overhead import lightning_step_seconds  # noqa: E402
from imgclf.bench.pipeline import build, run_pipeline  # noqa: E402
from imgclf.data.datamodule import ImageDataModule  # noqa: E402
from imgclf.model.classifier import ImageClassifier  # noqa: E402

CONFIG = REPO / "configs" / "fast_fashion_mnist.yaml"
SEEDS = (0, 1, 2)
TARGET = 0.94
SMOKE_TEST_BATCHES = 2
# --smoke: every step on the CPU with the narrow network and a few batches, to check the script itself.
SMOKE_MAIN_ARGS = ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--trainer.benchmark", "false",
                   "--model.network", "airbench_small", "--model.channels_last", "false",
                   "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1",
                   "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "1",
                   "--trainer.limit_test_batches", str(SMOKE_TEST_BATCHES)]


def recipe_args(smoke: bool) -> list[str]:
    """main.py's arguments for the checked recipe (cut down with --smoke), for main.py and the benchmark alike."""
    return ["--config", str(CONFIG), *(SMOKE_MAIN_ARGS if smoke else [])]


def python_env() -> dict[str, str]:
    """This interpreter's environment, with this process's import paths for the scripts it runs."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*IMPORT_PATHS, os.environ.get("PYTHONPATH", "")])}


def run(args: list[str], env: dict[str, str], log: Path) -> subprocess.CompletedProcess:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True)
    log.write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    print(f"  {' '.join(args[:3])} ... -> exit {done.returncode} in {time.perf_counter() - start:.0f} s ({log.name})")
    return done


class SyncCounter(L.Callback):
    """Turns CUDA's sync debug mode on for the steps after `warmup`: each implicit host sync warns once."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            torch.cuda.set_sync_debug_mode("warn")

    def on_train_end(self, trainer, pl_module) -> None:
        torch.cuda.set_sync_debug_mode(0)


def host_syncs(main_args: list[str], warmup: int = 5, steps: int = 30) -> dict:
    trainer_config, model, data, callbacks = build(main_args, None, None, max_epochs=None,
                                                   max_steps=warmup + steps, limit_val_batches=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        L.Trainer(**trainer_config, callbacks=[*callbacks, SyncCounter(warmup)]).fit(model, datamodule=data)
    syncs = [w for w in caught if "synchronizing" in str(w.message)]
    places: dict[str, int] = {}
    for w in syncs:
        place = f"{w.filename}:{w.lineno}"
        places[place] = places.get(place, 0) + 1
    step_seconds = lightning_step_seconds(main_args, None, warmup, steps, None)
    return {"steps": steps, "host_syncs": len(syncs), "per_step": len(syncs) / steps,
            "where": dict(sorted(places.items(), key=lambda kv: -kv[1])[:10]), "steps_per_second": 1 / step_seconds}


def seeds_to_target(main_args: list[str], seeds: tuple[int, ...], budget_seconds: float) -> list[dict]:
    rows = []
    for seed in seeds:
        curve = run_pipeline([*main_args, "--seed_everything", str(seed)], None, budget_seconds, stop_at=1.01,
                             evals_per_epoch=1)
        final = curve.points[-1] if curve.points else None
        rows.append({"seed": seed, "seconds_to_target": curve.time_to(TARGET),
                     "final_test_acc": final.test_accuracy if final else None,
                     "train_seconds": final.train_seconds if final else None})
    return rows


def evaluate_checkpoint(ckpt: Path, accelerator: str, limit_test_batches: int | None) -> dict[str, float]:
    """Test metrics of the weights in `ckpt`, in a Trainer of its own with no callbacks."""
    model = ImageClassifier.load_from_checkpoint(ckpt, map_location="cpu")
    data = ImageDataModule.load_from_checkpoint(ckpt, map_location="cpu")
    trainer = L.Trainer(accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_test_batches=limit_test_batches)
    return {k: float(v) for k, v in trainer.test(model, datamodule=data, verbose=False)[0].items()}


def main_runs(env: dict[str, str], out: Path, smoke: bool) -> dict:
    base = ["main.py", *recipe_args(smoke), "--runs_dir", str(out / "runs")]
    variants = {"plain": [], "ddp_1gpu": ["--trainer.strategy", "ddp"]}
    if not smoke:  # inductor on a CPU compiles for minutes: the smoke run leaves it out
        variants["compile"] = ["--model.compile", "true"]
    results = {}
    for name, extra in variants.items():
        run_env = {**env, "TORCH_LOGS": "recompiles"} if name == "compile" else env
        done = run([*base, "--run_name", name, *extra], run_env, out / f"main_{name}.log")
        metrics_file = out / "runs" / name / "metrics.json"
        results[name] = {"exit": done.returncode,
                         "metrics": json.loads(metrics_file.read_text()) if metrics_file.is_file() else None}
        if name == "compile":
            results[name]["recompiles"] = done.stderr.count("Recompiling")
    plain = results["plain"]["metrics"]
    for name in results:
        if name != "plain" and plain and results[name]["metrics"]:
            results[name]["test_acc_minus_plain"] = results[name]["metrics"]["test/acc"] - plain["test/acc"]
    return results


def saved_weights_check(out: Path, smoke: bool) -> dict:
    run_dir = out / "runs" / "plain"
    written = json.loads((run_dir / "metrics.json").read_text())
    # the same test images as the run: all of them, or the smoke run's first batches
    separate = evaluate_checkpoint(run_dir / "best.ckpt", "cpu" if smoke else "gpu",
                                   SMOKE_TEST_BATCHES if smoke else None)
    diffs = {k: abs(written[k] - separate[k]) for k in ("test/acc", "test/loss")}
    return {"metrics_json": written, "separate_evaluation": separate, "abs_diff": diffs,
            "passed": diffs["test/acc"] <= 1e-4 and diffs["test/loss"] <= 1e-3}


def export_and_verify(env: dict[str, str], out: Path) -> dict:
    ckpt, onnx_file, report = out / "runs/plain/best.ckpt", out / "model.onnx", out / "onnx_report.json"
    exported = run(["export.py", "--ckpt", str(ckpt), "--output", str(onnx_file)], env, out / "export.log")
    verified = run(["verify_onnx.py", "--model", str(onnx_file), "--ckpt", str(ckpt), "--report", str(report)],
                   env, out / "verify.log")
    return {"export_exit": exported.returncode, "verify_exit": verified.returncode,
            "report": json.loads(report.read_text()) if report.is_file() else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs/gpu_check")))
    parser.add_argument("--smoke", action="store_true", help="CPU, narrow network, a few batches: checks the script")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = python_env()
    main_args = recipe_args(args.smoke)
    results: dict = {"smoke": args.smoke, "torch": torch.__version__,
                     "device": "cpu" if args.smoke else torch.cuda.get_device_name()}
    print("1. check_env.py")
    done = run(["check_env.py", *([] if args.smoke else ["--require-gpu"])], env, out / "check_env.log")
    results["check_env_exit"] = done.returncode
    if not args.smoke:
        print("2. host syncs and steps/s")
        results["host_syncs"] = host_syncs(main_args)
    print("3. seeds to 94%")
    results["seeds"] = seeds_to_target(main_args, SEEDS[:2] if args.smoke else SEEDS, budget_seconds=120)
    print("4. main.py: plain, compile, ddp")
    results["main"] = main_runs(env, out, args.smoke)
    print("5. metrics.json vs best.ckpt")
    results["saved_weights"] = saved_weights_check(out, args.smoke)
    print("6. export + verify")
    results["onnx"] = export_and_verify(env, out)
    results["note"] = "Multi-GPU DDP is unverified on hardware: this machine has one GPU."
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "onnx"}, indent=2, default=str)[:6000])
    print(f"onnx: export exit {results['onnx']['export_exit']}, verify exit {results['onnx']['verify_exit']}")


if __name__ == "__main__":
    main()
