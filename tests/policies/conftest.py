"""Fixtures of the policy tests: worker processes on a unique prefix, queue probes, cleanup.

The Redis client ``r`` is tests/conftest.py's; waits, queue probes and worker processes are
tests/support's (``wait_until`` and ``queue_state`` are named here too, for the test modules).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
import redis

from sluice.topology import DELAY_TIERS_MS
from support.queues import queue_state
from support.waiting import wait_until
from support.workers import WorkerProcess, stop_all, worker_env

__all__ = ["SLUICE", "Workers", "delete_prefix", "publish", "queue_state", "records", "wait_until"]

HERE = Path(__file__).resolve().parent
SLUICE = [sys.executable, "-m", "sluice_cli"]


@pytest.fixture
def env(amqp_url: str, redis_url: str, unique: str) -> dict[str, str]:
    return worker_env(amqp_url, redis_url, unique, HERE, SLUICE_GRACE_PERIOD="5")


def records(r: redis.Redis, key: str) -> list[tuple[int, int, int]]:
    """(n, attempt, server ms) of every run the handlers recorded under ``key``."""
    out = []
    for raw in r.lrange(key, 0, -1):
        n, attempt, ms = raw.decode().split()
        out.append((int(n), int(attempt), int(ms)))
    return out


class Workers:
    """Start worker processes; every one is stopped (SIGTERM, then SIGKILL) at the end."""

    def __init__(self, env: dict[str, str], amqp_url: str, prefix: str, logs: Path) -> None:
        self.env, self.amqp_url, self.prefix, self.logs = env, amqp_url, prefix, logs
        self.started: list[WorkerProcess] = []

    def start(
        self, *args: str, queue: str = "default", extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = self.logs / f"worker{len(self.started)}.log"
        args = ("--tasks", "policy_tasks", "--queues", queue, *args)
        w = WorkerProcess(args, {**self.env, **(extra_env or {})}, log, [*SLUICE, "worker"])
        self.started.append(w)
        return w.proc

    def wait_consumers(self, n: int, queue: str = "default", timeout: float = 30) -> None:
        """Until ``queue`` has ``n`` consumers (fails at once if the last worker started died)."""
        self.started[-1].wait_consuming(self.amqp_url, f"{self.prefix}.q.{queue}", n, timeout)

    def log(self, i: int) -> str:
        return self.started[i].stderr()

    def stop_all(self) -> None:
        stop_all(self.started)


@pytest.fixture
def workers(env: dict[str, str], amqp_url: str, unique: str, tmp_path: Path) -> Iterator[Workers]:
    w = Workers(env, amqp_url, unique, tmp_path)
    try:
        yield w
    finally:
        w.stop_all()
        delete_prefix(amqp_url, unique)


def delete_prefix(amqp_url: str, prefix: str, queues: tuple[str, ...] = ("default",)) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    names = [f"{prefix}.q.{q}" for q in queues] + [f"{prefix}.dlq"]
    names += [f"{prefix}.delay.{t}" for t in DELAY_TIERS_MS]
    for q in names:
        ch.queue_delete(q)
    for ex in ("tasks", "dead", "delay", "requeue"):
        ch.exchange_delete(f"{prefix}.{ex}")
    conn.close()


def publish(env: dict[str, str], task: str, lines: list[str], *args: str) -> list[str]:
    """``sluice publish TASK -`` with NDJSON payloads; the task ids."""
    pub = subprocess.run(
        [*SLUICE, "publish", task, "-", *args],
        input="".join(line + "\n" for line in lines).encode(),
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert pub.returncode == 0, pub.stderr.decode()
    return pub.stdout.decode().split()
