"""One check's result, how check_env.py prints the list, and child processes that cannot hang us."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Status = Literal["PASS", "WARN", "FAIL"]
RESULT_MARK = "IMGCLF_ENV_RESULT "  # prefixes the child's JSON line, so library chatter on stdout is ignored
UV_SYNC = "Run `uv sync` in the project folder, then start the script with `uv run check_env.py`."
TIMED_OUT = "did not finish within"  # a child killed at --timeout; checks.py then advises a larger one
PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])  # the folder holding imgclf/, for child processes


@dataclass
class Check:
    section: str  # software, gpu, distributed, data
    name: str
    status: Status
    detail: str  # what was found
    fix: str = ""  # one sentence, for WARN and FAIL
    info: dict[str, Any] = field(default_factory=dict)  # machine-readable values for --json


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.status == "FAIL" for c in checks) else 0


def counts(checks: list[Check]) -> dict[str, int]:
    return {status: sum(c.status == status for c in checks) for status in ("PASS", "WARN", "FAIL")}


def render_text(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines, section = [], None
    for c in checks:
        if c.section != section:
            section = c.section
            lines.append(section)
        lines.append(f"  {c.status}  {c.name:<{width}}  {c.detail}")
        if c.fix:
            lines.append(f"        {'':<{width}}  fix: {c.fix}")
    n = counts(checks)
    verdict = "FAILED" if n["FAIL"] else "OK"
    lines.append(f"summary: {n['PASS']} PASS, {n['WARN']} WARN, {n['FAIL']} FAIL -> {verdict}")
    return "\n".join(lines)


def render_json(checks: list[Check], require_gpu: bool) -> str:
    """One object: {ok, exit_code, require_gpu, counts, checks: {section: {name: {status, detail, ...}}}}."""
    sections: dict[str, dict[str, Any]] = {}
    for c in checks:
        sections.setdefault(c.section, {})[c.name] = {"status": c.status, "detail": c.detail,
                                                      "fix": c.fix, "info": c.info}
    code = exit_code(checks)
    return json.dumps({"ok": code == 0, "exit_code": code, "require_gpu": require_gpu,
                       "counts": counts(checks), "checks": sections}, indent=2)


@dataclass
class ChildResult:
    result: Any  # the JSON value the child printed after RESULT_MARK, or None
    error: str  # empty when the child exited 0 and printed a result


def start_python(code: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """Run `code` in a fresh interpreter: a crash or hang in CUDA or NCCL stays in there."""
    env = {**os.environ, **(extra_env or {})}
    # `python3 check_env.py` without an installed package must still let the child import imgclf.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_PARENT, env.get("PYTHONPATH")]))
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float, deadline: float | None = None) -> ChildResult:
    """Wait until `deadline` (time.monotonic), else `timeout` seconds; then kill the child's process group."""
    wait = timeout if deadline is None else max(0.0, deadline - time.monotonic())
    try:
        out, err = proc.communicate(timeout=wait)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session (start_new_session), so only its processes
        proc.communicate()
        return ChildResult(None, f"{TIMED_OUT} {timeout:g} s and was killed")
    for line in out.splitlines():
        if line.startswith(RESULT_MARK) and proc.returncode == 0:
            return ChildResult(json.loads(line[len(RESULT_MARK):]), "")
    last = err.strip().splitlines()[-1] if err.strip() else "no output"
    return ChildResult(None, f"exited with code {proc.returncode}: {last}")


def emit(result: Any) -> None:
    """Called in the child: hand `result` to the parent."""
    print(RESULT_MARK + json.dumps(result), flush=True)
