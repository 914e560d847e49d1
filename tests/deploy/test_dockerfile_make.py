"""deploy/Dockerfile is a production image (a wheel, no dev extras, not editable, non-root, a health
check); `make help` lists the targets. tests/compose/ builds the image for real and boots the stack."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def stages(text: str) -> list[str]:
    """The Dockerfile's stages, each from its FROM line on."""
    parts = re.split(r"^(?=FROM )", text, flags=re.M)
    return [p for p in parts if p.startswith("FROM ")]


def test_dockerfile_is_a_production_image() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text().replace("\\\n", " ")
    build, runtime = stages(text)
    # the base is chosen by a build argument whose default is the official image
    assert re.search(r"^ARG SLUICE_PYTHON_IMAGE=python:3\.11-slim\s*$", text, re.M)
    assert build.startswith("FROM ${SLUICE_PYTHON_IMAGE} AS build")
    assert runtime.startswith("FROM ${SLUICE_PYTHON_IMAGE}\n")
    # a wheel is built and installed: no dev extras, nothing editable
    assert "pip wheel" in build
    assert "/wheels/sluice-*.whl" in build
    assert "[dev]" not in text
    assert " -e " not in text
    # the runtime stage copies only the virtualenv and the health check, runs as a user, checks itself
    assert re.findall(r"^COPY .*$", runtime, re.M) == [
        "COPY --from=build /opt/sluice /opt/sluice",
        "COPY deploy/healthcheck.py /app/deploy/healthcheck.py",
    ]
    assert re.search(r"^USER sluice\s*$", runtime, re.M)
    assert re.search(r'^HEALTHCHECK .*healthcheck\.py", "auto"\]', runtime, re.M)
    assert "PYTHONDONTWRITEBYTECODE=1" in runtime
    assert re.search(r'^ENTRYPOINT \["sluice"\]\s*$', runtime, re.M)
    # the optional CA bundle reaches the build stage only
    assert "/tmp/ca/" in build
    assert "/tmp/ca" not in runtime
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", ".env"):
        assert entry in ignored
    assert "deploy/ca/*.crt" in (ROOT / ".gitignore").read_text().split()


def test_make_help_lists_the_targets() -> None:
    make = shutil.which("make")
    if make is None:
        pytest.fail("make is not installed: `apt-get install -y make`", pytrace=False)
    done = subprocess.run(
        [make, "-s", "-C", str(ROOT), "help"], capture_output=True, text=True, timeout=30, check=True
    )
    listed = set(re.findall(r"^\s+make (\S+)", done.stdout, re.M))
    assert {"install", "up", "test", "lint", "bench"} <= listed, done.stdout
