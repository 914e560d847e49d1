"""Fixtures of the policy tests: worker processes on a unique prefix, queue probes, cleanup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import pika.exceptions
import pytest
import redis

from sluice.topology import DELAY_TIERS_MS

HERE = Path(__file__).resolve().parent
SLUICE = [sys.executable, "-m", "sluice_cli"]


@pytest.fixture
def env(amqp_url: str, redis_url: str, unique: str) -> dict[str, str]:
    return {
        **os.environ,
        "SLUICE_AMQP_URL": amqp_url,
        "SLUICE_REDIS_URL": redis_url,
        "SLUICE_PREFIX": unique,
        "SLUICE_GRACE_PERIOD": "5",
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }


@pytest.fixture
def r(redis_url: str, unique: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    keys = list(client.scan_iter(f"{unique}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def queue_state(amqp_url: str, queue: str) -> tuple[int, int] | None:
    """(ready messages, consumers), or None when the queue does not exist."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ok = conn.channel().queue_declare(queue, passive=True).method
        return ok.message_count, ok.consumer_count
    except pika.exceptions.ChannelClosedByBroker:
        return None
    finally:
        if conn.is_open:
            conn.close()


def wait_until(pred: Callable[[], object], timeout: float, what: str, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


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
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, *args: str, queue: str = "default", extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = self.logs / f"worker{len(self.procs)}.log"
        with log.open("wb") as err:
            proc = subprocess.Popen(
                [*SLUICE, "worker", "--tasks", "policy_tasks", "--queues", queue, *args],
                env={**self.env, **(extra_env or {})},
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self.procs.append(proc)
        return proc

    def wait_consumers(self, n: int, queue: str = "default", timeout: float = 30) -> None:
        q = f"{self.prefix}.q.{queue}"
        wait_until(lambda: (queue_state(self.amqp_url, q) or (0, 0))[1] >= n, timeout, f"{n} consumers")

    def log(self, i: int) -> str:
        return (self.logs / f"worker{i}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


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
