"""Running ``sluice metrics`` and telemetry processes for the fleet tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

from support.waiting import wait_until
from support.workers import SLUICE

HERE = Path(__file__).resolve().parent
T = TypeVar("T")


def env_for(amqp_url: str, redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update(SLUICE_AMQP_URL=amqp_url, SLUICE_REDIS_URL=redis_url, SLUICE_PREFIX=prefix, **extra)
    return env


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def summary(self) -> dict[str, Any]:
        resp = httpx.get(self.url + "/api/summary", timeout=5)
        assert resp.status_code == 200
        doc: dict[str, Any] = resp.json()
        return doc

    def metrics(self) -> str:
        resp = httpx.get(self.url + "/metrics", timeout=5)
        assert resp.status_code == 200
        return resp.text

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        out = {}
        for family in text_string_to_metric_families(self.metrics()):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def start_service(env: dict[str, str], log: Path, *args: str) -> Service:
    out = log.open("wb")
    proc = subprocess.Popen(
        [SLUICE, "metrics", "--port", "0", *args], env=env, stdout=out, stderr=subprocess.STDOUT
    )
    out.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = re.search(r"serving (http://\S+):(\d+)/metrics", log.read_text())
        if m:
            return Service(proc, f"{m.group(1)}:{m.group(2)}", log)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"sluice metrics did not start:\n{log.read_text()}")


def start_child(
    env: dict[str, str], kind: str, ok: int, failed: int, published: int
) -> subprocess.Popen[str]:
    """A telemetry_child.py process; returns once it sent its first snapshot."""
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "telemetry_child.py"), kind, str(ok), str(failed), str(published)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # bounded by the test timeout; "" if it died
    assert line.strip() == "sent", f"telemetry child did not start (exit {proc.poll()})"
    return proc


def until(check: Callable[[], T | None], seconds: float = 20, every: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy; fail with its last answer after ``seconds``."""
    return wait_until(check, seconds, "the condition", every)


def end(proc: subprocess.Popen[str]) -> None:
    """Kill ``proc`` if it still runs, reap it, close its pipe."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()
