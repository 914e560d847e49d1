"""The backbone end to end: the `sluice` CLI publishes, RabbitMQ carries, a worker process runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
import redis

HERE = Path(__file__).resolve().parent
SLUICE = [sys.executable, "-m", "sluice_cli"]


@pytest.fixture
def env(amqp_url: str, redis_url: str, unique: str) -> dict[str, str]:
    return {
        **os.environ,
        "SLUICE_AMQP_URL": amqp_url,
        "SLUICE_REDIS_URL": redis_url,
        "SLUICE_PREFIX": unique,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }


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


def wait_until(pred, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def worker(
    env: dict[str, str], amqp_url: str, unique: str, tmp_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    log = tmp_path / "worker.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [*SLUICE, "worker", "--tasks", "e2e_tasks", "--concurrency", "32"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    queue = f"{unique}.q.default"
    try:
        wait_until(lambda: (queue_state(amqp_url, queue) or (0, 0))[1] >= 1, 30, "the worker's consumer")
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        delete_prefix(amqp_url, unique)
    assert proc.returncode == 0, f"worker exited {proc.returncode}: {log.read_text()[-2000:]}"


def delete_prefix(amqp_url: str, prefix: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    for q in (f"{prefix}.q.default", f"{prefix}.dlq"):
        ch.queue_delete(q)
    for ex in (f"{prefix}.tasks", f"{prefix}.dead"):
        ch.exchange_delete(ex)
    conn.close()


@pytest.mark.slow
def test_thousand_tasks_from_the_cli_each_run_exactly_once(
    worker: subprocess.Popen[bytes], env: dict[str, str], redis_url: str, amqp_url: str, unique: str
) -> None:
    n = 1000
    key = f"{unique}:runs"
    lines = "".join(json.dumps({"key": key, "n": i}) + "\n" for i in range(n))
    pub = subprocess.run(
        [*SLUICE, "publish", "e2e.mark", "-"], input=lines.encode(), env=env, capture_output=True, timeout=60
    )
    assert pub.returncode == 0, pub.stderr.decode()
    ids = pub.stdout.decode().split()
    assert len(ids) == n
    assert len(set(ids)) == n

    r = redis.Redis.from_url(redis_url)
    try:
        wait_until(lambda: r.hlen(key) >= n, 60, f"{n} distinct tasks to run")
        # the queue is drained and nothing is left unacked: no redelivery can still come
        wait_until(lambda: queue_state(amqp_url, f"{unique}.q.default") == (0, 1), 30, "an empty queue")
        runs = {int(k): int(v) for k, v in r.hgetall(key).items()}
        assert sorted(runs) == list(range(n)), "some task never ran"
        twice = {k: v for k, v in runs.items() if v != 1}
        assert not twice, f"tasks run more than once: {dict(list(twice.items())[:5])}"
        ran_ids = {v.decode() for v in r.hgetall(key + ":ids").values()}
        assert ran_ids == set(ids), "the ids the CLI printed are not the ids that ran"
        dlq = queue_state(amqp_url, f"{unique}.dlq")
        assert dlq is not None
        assert dlq[0] == 0, "a valid task was dead-lettered"
    finally:
        r.delete(key, key + ":ids")
        r.close()
    assert worker.poll() is None, "the worker died"
