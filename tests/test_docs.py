"""Every command in README.md and docs/*.md still works as written: main.py's arguments parse (--print_config),
every other tool, module and `dvc` subcommand accepts the options the docs give it (its --help names them),
and the README stays within two screens. In process: nothing trains."""

from __future__ import annotations

import importlib.util
import re
import shlex
import tomllib
from pathlib import Path

import pytest
from conftest import REPO, run_in_process

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PLACEHOLDERS = {"runs/<run>/config.yaml": "configs/default.yaml", "runs/latest/config.yaml": "configs/default.yaml",
                "$C": "configs/fashion_mnist.yaml"}


def commands(page: Path) -> list[str]:
    """The `uv run ...`/`python ...` lines of the page's code blocks (continuations joined) and inline code."""
    text = page.read_text()
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            for part in line.split("&&"):
                part = part.strip()
                part = re.sub(r"^srun .*?uv run (--no-sync )?", "uv run ", part)
                if part.startswith(("uv run ", "python ")):
                    found.append(part)
    found += re.findall(r"`(uv run [^`]+)`", text)
    return [command for command in found if "..." not in command]  # `uv run dvc ...`: prose, not a command


ALL = sorted({(page.name, command) for page in PAGES for command in commands(page)})


def test_the_readme_fits_two_screens_and_links_every_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for page in ("training", "data", "deployment", "versioning", "distributed", "environment", "testing"):
        assert f"docs/{page}.md" in readme and (REPO / "docs" / f"{page}.md").is_file(), page


def test_the_pages_hold_commands():
    assert len(ALL) > 40  # the extraction still finds them: a changed code-block style would silently drop all


def _options(args: list[str]) -> list[str]:
    return [a.split("=")[0] for a in args if a.startswith("--")]


@pytest.mark.parametrize("page, command", ALL, ids=[f"{p}: {c[:60]}" for p, c in ALL])
def test_documented_command_parses(page, command, capsys):
    for placeholder, value in PLACEHOLDERS.items():
        command = command.replace(placeholder, value)
    args = shlex.split(command)
    args = args[2:] if args[:2] == ["uv", "run"] else args
    if args[0] == "--no-sync":
        args = args[1:]
    if args[0] == "torchrun":  # its own options, then the script and the script's
        args = ["python", *args[next(i for i, a in enumerate(args) if a.endswith(".py")):]]
    if args[0] == "python" and args[1] == "-c":
        compile(args[2], "<docs>", "exec")
        return
    if args[0] in ("pytest",):
        markers = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
        for expression in (args[i + 1] for i, a in enumerate(args) if a == "-m"):
            assert all(word in ("not", "and", "or") or any(m.startswith(word + ":") for m in markers)
                       for word in expression.split()), expression
        return
    if args[0] == "ruff":  # a binary that replaces the process it runs in: installed, and its subcommand named
        assert importlib.util.find_spec("ruff") and args[1:] == ["check"], command
        return
    if args[0] == "jupyter":
        if importlib.util.find_spec("jupyterlab") is None:
            pytest.skip("jupyterlab is in the optional notebook group")
        return
    if args[0] == "dvc":
        from dvc.cli import main as dvc_main

        words = [a for a in args[1:] if not a.startswith("-")][:2]
        with pytest.raises(SystemExit) as exited:
            dvc_main([*words, "--help"])
        assert exited.value.code == 0, command
        shown = capsys.readouterr().out
        for option in _options(args):
            assert option in shown, f"{command}: dvc {' '.join(words)} has no {option}"
        return
    if args[0] == "python":
        args = args[1:]
    target = args[1] if args[0] == "-m" else args[0]
    rest = args[2:] if args[0] == "-m" else args[1:]
    assert target.endswith(".py") and (REPO / target).is_file() or importlib.util.find_spec(target), command
    if target == "main.py":  # every argument must parse: the CLI prints the resolved config and stops
        code = run_in_process("main.py", *rest, *([] if "--print_config" in rest else ["--print_config"]))
        assert code == 0, f"{command}: {code} {capsys.readouterr().err[-2000:]}"
        return
    code = run_in_process(target, "--help")
    shown = capsys.readouterr().out
    assert code == 0, f"{command}: --help exited {code}"
    own, passed_on = _split(rest, shown)
    for option in _options(own):
        assert option in shown, f"{command}: {target} --help has no {option}"
    if passed_on:  # a tool that hands the rest to main.py (the grid, the recipe benchmark)
        assert "main.py" in shown, f"{command}: {target} --help has no {passed_on[0]}"
        code = run_in_process("main.py", *passed_on, "--print_config")
        assert code == 0, f"{command}: main.py refuses {passed_on}: {code} {capsys.readouterr().err[-2000:]}"


def _split(args: list[str], shown: str) -> tuple[list[str], list[str]]:
    """A tool's own options (named by its --help) and their values; from the first option it does not name (or
    a `--`) on, the arguments it passes on to main.py."""
    own, passed_on = [], []
    target = own
    for arg in args:
        if arg == "--":
            target = passed_on
            continue
        if arg.startswith("--") and target is own and not re.search(rf"{re.escape(arg)}\b", shown):
            target = passed_on
        target.append(arg)
    return own, passed_on
