"""The `sluice` command's contract: one line on stderr and a non-zero exit for every bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SLUICE = [sys.executable, "-m", "sluice_cli"]


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SLUICE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--bogus"], 2, "No such option: --bogus"),
        (["nosuchcommand"], 2, "No such command"),
        (["worker", "--prefetch", "many"], 2, "'--prefetch'"),
        (["publish", "demo.noop", "--count", "abc"], 2, "'--count'"),
        (["publish", "demo.noop", "--payload", "{nope"], 1, "not valid JSON"),
        (["dlq", "replay"], 1, "say what to replay"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(args: list[str], code: int, says: str) -> None:
    r = run(*args)
    assert r.returncode == code, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("sluice: error: ")
    assert says in lines[0]
    assert "Traceback" not in r.stderr + r.stdout


def test_bad_setting_in_the_environment_is_one_line() -> None:
    r = run("config", SLUICE_QUEUE_TYPE="stream")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert "queue_type" in r.stderr


def test_no_arguments_prints_help_and_succeeds() -> None:
    r = run()
    assert r.returncode == 0
    for command in ("publish", "worker", "producer", "metrics", "config", "dlq"):
        assert command in r.stdout


def test_config_json_masks_secrets() -> None:
    r = run(
        "config",
        "--json",
        SLUICE_AMQP_URL="amqp://u:hunter2@h:5672/",
        SLUICE_REDIS_URL="redis://:pw2@r:6379/0",
    )
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["amqp_url"] == "amqp://u:***@h:5672/"
    assert "hunter2" not in r.stdout
    assert "pw2" not in r.stdout
