"""Data and artifacts: which datasets are on disk, and whether DVC has a remote to pull them from."""

from __future__ import annotations

from pathlib import Path

from imgclf.env.report import UV_SYNC, Check

# The remote .dvc/config ships with, nobody's bucket: DVC names the bucket in its errors, so its name is the hint.
PLACEHOLDER_REMOTE = "s3://replace-with-your-bucket/imgclf"


def dataset_checks(data_dir: Path) -> list[Check]:
    try:
        from imgclf.data.catalog import DATASETS
    except Exception as e:  # a missing or broken package must not stop the other checks
        return [Check("data", "datasets", "FAIL",
                      f"cannot load the dataset catalog ({type(e).__name__}: {e})", UV_SYNC)]
    checks = []
    for spec in DATASETS.values():
        where = spec.locate(None, data_dir)
        if spec.is_present(where):
            # present although its folder does not exist: the files ship with a package (digits)
            found = str(where) if where.exists() else "bundled with its Python package"
            checks.append(Check("data", spec.name, "PASS", found, info={"present": True, "path": str(where)}))
            continue
        if not spec.dvc_tracked:  # the user's own images: no fixed place, nothing to fetch, nothing wrong
            continue
        download = " or let main.py download it on first use (needs internet)," if spec.download else ""
        checks.append(Check("data", spec.name, "WARN", f"not found in {where}/",
                            f"Fetch it with {spec.pull_command},{download} if you train on it.",
                            {"present": False, "path": str(where)}))
    return checks


def dvc_remote_check(root: Path) -> Check:
    """What `dvc remote list` reads: .dvc/config plus the local, user and system configs."""
    try:
        from dvc.config import Config
    except ImportError:
        return Check("data", "dvc remote", "FAIL", "dvc is not installed", UV_SYNC)
    if not (root / ".dvc").is_dir():
        return Check("data", "dvc remote", "WARN", f"{root} is not a DVC repository (no .dvc/ folder)",
                     "Run `dvc init` in the project folder to version data and models with DVC.",
                     {"remotes": {}, "default": None})
    try:
        config = Config(dvc_dir=str(root / ".dvc"))
    except Exception as e:  # ConfigError (bad syntax, unknown key) or an unreadable file: report it, go on
        return Check("data", "dvc remote", "FAIL", f"cannot read the DVC config: {e}",
                     f"Fix the file it names ({root / '.dvc' / 'config'}, or config.local beside it), or restore "
                     f"the project's own with `git checkout .dvc/config`; `dvc config --list` shows what DVC "
                     f"reads.", {"remotes": {}, "default": None, "error": str(e)})
    remotes = {name: conf.get("url", "") for name, conf in config["remote"].items()}
    default = config["core"].get("remote")
    info = {"remotes": remotes, "default": default}
    if not remotes:
        return Check("data", "dvc remote", "WARN", "no DVC remote configured: data and models stay here",
                     "Add one with `dvc remote add -d storage s3://BUCKET/PATH` (plus `dvc remote modify "
                     "storage endpointurl URL` for a local S3), then `dvc push`.", info)
    if default not in remotes:
        return Check("data", "dvc remote", "WARN", f"remotes {', '.join(remotes)} but no default one",
                     f"Pick the default with `dvc remote default {next(iter(remotes))}`.", info)
    endpoint = config["remote"][default].get("endpointurl")
    if remotes[default].rstrip("/") == PLACEHOLDER_REMOTE and not endpoint:
        return Check("data", "dvc remote", "WARN",
                     f"default {default} -> {remotes[default]}, the placeholder bucket this project ships with",
                     f"Point it at your bucket: `dvc remote modify {default} url s3://<your-bucket>/imgclf`, or "
                     f"start the local S3 server: `uv run python -m imgclf.storage.local_s3 start`.", info)
    where = f" at {endpoint}" if endpoint else ""
    return Check("data", "dvc remote", "PASS", f"default {default} -> {remotes[default]}{where}", info=info)
