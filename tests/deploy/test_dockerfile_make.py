"""deploy/Dockerfile installs sluice with the very steps of `make install`; `make help` lists the targets."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def makefile_variables(text: str) -> dict[str, str]:
    return dict(re.findall(r"^([A-Z]+)\s*[:?]?=\s*(.*?)\s*$", text, re.M))


def install_steps() -> list[str]:
    """The shell commands of the recipe behind `make install`, variables expanded, guards dropped."""
    text = (ROOT / "Makefile").read_text()
    variables = makefile_variables(text)
    m = re.search(r"^\$\(STAMP\):.*\n((?:\t.*\n)+)", text, re.M)
    assert m, "no $(STAMP) recipe in the Makefile"

    def expand(s: str) -> str:
        while (new := re.sub(r"\$\((\w+)\)", lambda v: variables[v.group(1)], s)) != s:
            s = new
        return s

    steps = []
    for line in m.group(1).splitlines():
        cmd = expand(line.strip().lstrip("@"))
        steps.append(cmd.split("||")[-1].strip())  # `test -x X || make X`: the making part
    return steps


def dockerfile_run_commands() -> list[str]:
    text = (ROOT / "deploy" / "Dockerfile").read_text().replace("\\\n", " ")
    cmds = []
    for run in re.findall(r"^RUN\s+(.*)$", text, re.M):
        cmds += [" ".join(c.split()) for c in run.split("&&")]
    return cmds


def test_install_targets_match() -> None:
    steps = install_steps()
    assert any("pip install" in s and "-e '.[dev]'" in s for s in steps)  # the parse found the real recipe
    assert steps[0] == "python3.11 -m venv .venv"
    runs = dockerfile_run_commands()
    for step in steps:
        assert step in runs, f"the Dockerfile does not run `{step}` (a step of make install)"


def test_dockerfile_basics() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\s*$", text, re.M)
    assert re.search(r"^WORKDIR /app\s*$", text, re.M)
    assert re.search(r'^ENTRYPOINT \["sluice"\]\s*$', text, re.M)
    assert "ENV PATH=/app/.venv/bin:$PATH" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", ".env"):
        assert entry in ignored


def test_make_help_lists_the_targets() -> None:
    make = shutil.which("make")
    if make is None:
        pytest.fail("make is not installed: `apt-get install -y make`", pytrace=False)
    done = subprocess.run(
        [make, "-s", "-C", str(ROOT), "help"], capture_output=True, text=True, timeout=30, check=True
    )
    listed = set(re.findall(r"^\s+make (\S+)", done.stdout, re.M))
    assert {"install", "up", "test", "lint", "bench"} <= listed, done.stdout
