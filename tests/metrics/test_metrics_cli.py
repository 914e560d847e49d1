"""``sluice metrics`` as a real process: serves, drains on SIGTERM, one-line errors."""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

SLUICE = str(Path(sys.executable).with_name("sluice"))


def env_for(amqp_url: str, prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update(SLUICE_AMQP_URL=amqp_url, SLUICE_PREFIX=prefix)
    return env


def run_sluice(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SLUICE, *args], env=env, capture_output=True, text=True, timeout=30, check=False)


def wait_for_line(proc: subprocess.Popen[str], pattern: str, seconds: float = 20) -> re.Match[str]:
    """The first stderr line matching ``pattern``; fails if the process exits or the deadline passes."""
    assert proc.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + seconds
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stderr, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not sel.select(left):
                continue
            line = proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            if m := re.search(pattern, line):
                return m
    pytest.fail(f"no line matching {pattern!r}; stderr so far:\n{''.join(seen)}")


@pytest.fixture
def metrics_proc(amqp_url: str, unique: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [SLUICE, "metrics", "--port", "0", "--queues", "a,b"],
        env=env_for(amqp_url, unique),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        assert proc.stderr is not None
        proc.stderr.close()


def test_serves_then_drains_on_sigterm(metrics_proc: subprocess.Popen[str], unique: str) -> None:
    m = wait_for_line(metrics_proc, r"serving (http://\S+)/metrics; queues: (.*)$")
    base = m.group(1)
    assert m.group(2).split(", ") == [
        f"{unique}.q.default",
        f"{unique}.q.a",
        f"{unique}.q.b",
        f"{unique}.dlq",
    ]
    resp = httpx.get(f"{base}/metrics", timeout=10)
    assert resp.status_code == 200
    values = {
        (s.name, tuple(s.labels.items())): s.value
        for fam in text_string_to_metric_families(resp.text)
        for s in fam.samples
    }
    assert values[("sluice_broker_up", ())] == 1
    assert values[("sluice_queue_present", (("queue", f"{unique}.q.a"),))] == 0  # nobody declared it
    assert httpx.get(f"{base}/healthz", timeout=10).json()["broker_up"] is True

    metrics_proc.send_signal(signal.SIGTERM)
    wait_for_line(metrics_proc, r"SIGTERM: draining")
    assert metrics_proc.wait(15) == 0


def test_bad_queue_name_is_one_line(amqp_url: str, unique: str) -> None:
    done = run_sluice(["metrics", "--queues", "ok,bad name!"], env_for(amqp_url, unique))
    assert done.returncode == 1
    assert done.stderr.startswith("sluice: error: bad queue name 'bad name!'")
    assert done.stderr.count("\n") == 1


def test_port_in_use_is_one_line(amqp_url: str, unique: str) -> None:
    with closing(socket.socket()) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = run_sluice(["metrics", "--host", "127.0.0.1", "--port", str(port)], env_for(amqp_url, unique))
    assert done.returncode == 1
    assert done.stderr == f"sluice: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
