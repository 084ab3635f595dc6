"""The GPU check: everything a first run on a lent GPU machine should measure, in one command that cannot
waste the run. Stages (each its own process with a time limit, the whole within --budget-s):

    env            check_env.py --require-gpu
    syncs          host syncs per training step (torch.cuda.set_sync_debug_mode) and steps/s
    plain          main.py with configs/fast_fashion_mnist.yaml
    saved_weights  its metrics.json against a separate test of best.ckpt, both at the run's precision (bf16)
    onnx           export.py + verify_onnx.py on that checkpoint
    ddp_2ranks     two ranks on the one GPU (gloo on CUDA): the multi-rank code runs; whitening equal on both
    seeds          3 seeds: training seconds to 94% test accuracy
    compile        main.py with --model.compile true (recompilations counted)

Before any stage it checks the data and what it imports (missing: one `error:` line, no download). After every
stage it rewrites <out>/gpu_check.json (atomically); <out> holds that and gpu_check.log, nothing else.

    uv run python -m imgclf.bench.gpu_check --prepare      # here: fill .carry/gpu_check (about 35 MB)
    PYTHONPATH=src python3 -m imgclf.bench.gpu_check      # there, with .carry carried (docs/distributed.md)
    uv run python -m imgclf.bench.gpu_check --smoke --out /tmp/gpu_check   # anywhere: every stage, cut down, CPU

The GPU machine has torch, lightning, torchvision, torchmetrics, onnx and onnxruntime, but neither jsonargparse
(LightningCLI) nor dvc: --prepare copies the installed jsonargparse, docstring-parser and typeshed-client (pure
Python) into .carry/gpu_check/site, which the stages import. CIFAR-10 is not checked: its archive (163 MB) is
over the 64 MiB carry limit and the machine has no network.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]  # the checkout (this module imports nothing of imgclf: fast start)
CARRY = REPO / ".carry" / "gpu_check"  # git-ignored; the device tool's `carry` takes .carry
CARRY_LIMIT = 64 * 2**20
CARRIED_PACKAGES = ("jsonargparse", "docstring-parser", "typeshed-client")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte")
# Seconds per stage, in the order they run: what later stages need, and the cheap figures, come first.
STAGE_LIMITS = {"env": 60, "syncs": 90, "plain": 90, "saved_weights": 60, "onnx": 90, "ddp_2ranks": 120,
                "seeds": 200, "compile": 180}
SMOKE_SKIPS = {"compile": "inductor compiles for minutes on a CPU: GPU runs only"}
CIFAR10 = "not checked: the archive (163 MB) is over the 64 MiB carry limit and the GPU machine has no network"
TAIL = 6000  # characters of each stage's output kept in gpu_check.log


class Refusal(Exception):
    """A prerequisite is missing: nothing ran."""


def fashion_mnist_in(folder: Path) -> bool:
    """The four idx files, gzipped or not, where imgclf's reader looks (the folder, raw/, FashionMNIST/raw/)."""
    places = (folder, folder / "raw", folder / "FashionMNIST" / "raw")
    return all(any((p / n).is_file() or (p / f"{n}.gz").is_file() for p in places) for n in FASHION_MNIST)


def prepare(carry: Path) -> None:
    """Copy Fashion-MNIST and the packages the GPU machine lacks into `carry`, within the carry limit."""
    source = next((p for p in (REPO / "data" / "fashion_mnist", DEBIAN_FASHION_MNIST) if fashion_mnist_in(p)), None)
    if source is None:
        raise Refusal(f"Fashion-MNIST is not here either (data/fashion_mnist, {DEBIAN_FASHION_MNIST}): "
                      f"`uv run dvc pull data/fashion_mnist` or `apt-get install dataset-fashion-mnist` first.")
    shutil.rmtree(carry, ignore_errors=True)
    (carry / "fashion_mnist").mkdir(parents=True)
    for name in FASHION_MNIST:
        found = next(p for p in source.rglob(f"{name}*") if p.name in (name, f"{name}.gz"))
        shutil.copy2(found, carry / "fashion_mnist" / found.name)
    for package in CARRIED_PACKAGES:  # pure Python: the installed files are the package, dist-info included
        dist = importlib.metadata.distribution(package)
        for file in dist.files or []:
            if "__pycache__" not in file.parts and not str(file).startswith(".."):
                target = carry / "site" / file
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(dist.locate_file(file), target)
    size = sum(p.stat().st_size for p in carry.rglob("*") if p.is_file())
    if size > CARRY_LIMIT:
        raise Refusal(f"{carry} holds {size / 2**20:.1f} MiB, over the carry limit of 64 MiB.")
    print(f"{carry}: {size / 2**20:.1f} MiB (Fashion-MNIST from {source}; {', '.join(CARRIED_PACKAGES)})")


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # an import hook that refuses it
        return False


def preflight(out: Path, data: Path | None, carry: Path, smoke: bool) -> tuple[Path, list[str]]:
    """The data folder and import path the stages use, or Refusal: seconds, before any stage."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".writable").touch()
        (out / ".writable").unlink()
    except OSError as e:
        raise Refusal(f"cannot write to the output folder {out}: {e}") from e
    candidates = [data] if data else [carry / "fashion_mnist", REPO / "data" / "fashion_mnist", DEBIAN_FASHION_MNIST]
    found = next((p for p in candidates if fashion_mnist_in(p)), None)
    if found is None:
        raise Refusal(f"Fashion-MNIST is not in {', '.join(map(str, candidates))}. Nothing ran and nothing was "
                      f"downloaded (the GPU machine has no network). On a machine with the data run `uv run "
                      f"python -m imgclf.bench.gpu_check --prepare` and carry .carry (or pass --data FOLDER).")
    paths = [str(REPO / "src")]
    if (carry / "site").is_dir():
        paths.append(str(carry / "site"))
    sys.path[:0] = paths
    modules = ("jsonargparse", "docstring_parser", "typeshed_client")
    missing = [m for m in modules if not importable(m)]
    if missing:
        raise Refusal(f"{', '.join(missing)} cannot be imported (main.py's LightningCLI needs them): run `uv run "
                      f"python -m imgclf.bench.gpu_check --prepare` and carry .carry.")
    if not smoke:
        import torch  # here, not at the top: the data check above must answer within seconds

        if not torch.cuda.is_available():
            raise Refusal("no usable CUDA GPU (torch.cuda.is_available() is False); --smoke runs on a CPU.")
    return found, paths


def write_atomically(path: Path, results: dict) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(results, indent=2, default=str) + "\n")
    partial.replace(path)


def run_stage(name: str, limit: float, work: Path, data: Path, smoke: bool, env: dict[str, str]) -> dict:
    """One stage in its own process group, killed whole (a second DDP rank too) after `limit` seconds."""
    command = [sys.executable, "-m", "imgclf.bench.gpu_stages", name, "--work", str(work), "--data", str(data),
               *(["--smoke"] if smoke else [])]
    start = time.monotonic()
    with (work / f"{name}.out").open("w") as output:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code: int | None = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    seconds = round(time.monotonic() - start, 1)
    result_file = work / f"{name}.json"
    result = json.loads(result_file.read_text()) if code == 0 and result_file.is_file() else None
    status = "timeout" if code is None else "ok" if result is not None else "failed"
    if status == "ok" and result.get("passed") is False:
        status = "check failed"
    return {"status": status, "seconds": seconds, "limit_s": round(limit), "exit": code, "result": result}


def append_log(log: Path, name: str, work: Path, outcome: dict) -> None:
    with log.open("a") as out:
        out.write(f"\n===== {name}: {outcome['status']} in {outcome['seconds']} s (limit {outcome['limit_s']} s)\n")
        for part in (work / f"{name}.out", work / f"{name}.log"):
            if part.is_file():
                out.write(f"--- {part.name} (last {TAIL} characters)\n{part.read_text(errors='replace')[-TAIL:]}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs/gpu_check")),
                        help="gets gpu_check.json and gpu_check.log only (default: $OUT, else runs/gpu_check)")
    parser.add_argument("--work", type=Path, help="runs, checkpoints, ONNX files (default: a new temporary folder)")
    parser.add_argument("--data", type=Path, help="Fashion-MNIST folder (default: .carry/gpu_check/fashion_mnist, "
                        "data/fashion_mnist, Debian's)")
    parser.add_argument("--carry", type=Path, default=CARRY, help="the carried folder (default: %(default)s)")
    parser.add_argument("--budget-s", type=float, default=540, help="all stages together (default: 9 minutes)")
    parser.add_argument("--stages", default=",".join(STAGE_LIMITS), help="comma-separated subset, in this order")
    parser.add_argument("--smoke", action="store_true", help="CPU, narrow network, a few batches: checks the script")
    parser.add_argument("--prepare", action="store_true", help="fill the carried folder here, then stop")
    args = parser.parse_args(argv)
    start = time.monotonic()
    try:
        if args.prepare:
            prepare(args.carry.resolve())
            return 0
        out = args.out.resolve()
        stages = [s for s in STAGE_LIMITS if s in args.stages.split(",")]
        results: dict = {"smoke": args.smoke, "budget_s": args.budget_s, "cifar10": CIFAR10, "stages": {}}
        data, paths = preflight(out, args.data and args.data.resolve(), args.carry.resolve(), args.smoke)
    except Refusal as e:
        print(f"error: {e}", file=sys.stderr)
        if not args.prepare and args.out.resolve().is_dir():
            write_atomically(args.out.resolve() / "gpu_check.json", {"refused": str(e)})
        return 2
    work = (args.work or Path(tempfile.mkdtemp(prefix="gpu_check_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    results.update(data=str(data), work=str(work))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")])}
    json_file, log = out / "gpu_check.json", out / "gpu_check.log"
    log.write_text(f"gpu_check: stages {', '.join(stages)}; budget {args.budget_s:g} s; work folder {work}\n")
    write_atomically(json_file, results)
    for name in stages:
        remaining = args.budget_s - (time.monotonic() - start)
        if args.smoke and name in SMOKE_SKIPS:
            outcome = {"status": "skipped", "reason": SMOKE_SKIPS[name]}
        elif remaining < 5:
            outcome = {"status": "skipped", "reason": f"the budget of {args.budget_s:g} s is spent"}
        else:
            limit = STAGE_LIMITS[name] * (3 if args.smoke else 1)  # a shared CPU is slower than any GPU
            outcome = run_stage(name, min(limit, remaining), work, data, args.smoke, env)
            append_log(log, name, work, outcome)
        results["stages"][name] = outcome
        write_atomically(json_file, results)
        print(f"{name}: {outcome['status']}" + (f" in {outcome['seconds']} s" if "seconds" in outcome else ""),
              flush=True)
    results["seconds"] = round(time.monotonic() - start, 1)
    write_atomically(json_file, results)
    print(f"{json_file} ({results['seconds']} s); runs and exports in {work}")
    return 0 if all(o["status"] in ("ok", "skipped") for o in results["stages"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
