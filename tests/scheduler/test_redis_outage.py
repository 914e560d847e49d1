"""Redis lost under a running scheduler: a PRIVATE redis-server (never the default one) killed and started
again empty on the same port. The scheduler keeps running (/healthz says 503 meanwhile), takes the lease
again, syncs its declared schedules into the empty Redis at the start of the new term, and fires again;
no occurrence is fired twice."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis as redis_sync

from support.ports import free_port
from support.queues import queue_state
from support.waiting import wait_until
from support.workers import stop_all

from .conftest import drain
from .procs import scheduler_env, start_scheduler, wait_leader

pytestmark = pytest.mark.slow


def _redis_server(port: int, where: Path) -> subprocess.Popen[bytes]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not on PATH: the Redis outage test needs a private one")
    argv = [
        exe,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(where),
    ]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _pings(client: redis_sync.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis_sync.RedisError:
        return False


def test_a_redis_restart_without_data_resyncs_the_declared_schedules(
    amqp_url: str, unique: str, tmp_path: Path
) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = _redis_server(port, tmp_path)
    client = redis_sync.Redis.from_url(url)
    queue = f"{unique}.q.default"
    sched = None
    try:
        wait_until(lambda: _pings(client), 10, "the private redis-server")
        sched = start_scheduler(scheduler_env(amqp_url, url, unique), tmp_path / "s.log", lease=2.0)
        wait_leader(client, unique, sched.proc.pid)
        wait_until(lambda: (queue_state(amqp_url, queue) or (0, 0))[0] >= 3, 30, "3 fires")
        server.kill()
        server.wait()
        time.sleep(3)  # the outage: longer than the lease
        assert sched.proc.poll() is None, sched.stderr()[-2000:]
        before = (queue_state(amqp_url, queue) or (0, 0))[0]
        server = _redis_server(port, tmp_path)  # empty: the schedules and their cursors are gone
        wait_until(lambda: _pings(client), 10, "the private redis-server again")
        wait_leader(client, unique, sched.proc.pid)
        wait_until(lambda: (queue_state(amqp_url, queue) or (0, 0))[0] >= before + 3, 30, "3 fires after")
    finally:
        codes = stop_all([sched]) if sched is not None else []
        client.close()
        if server.poll() is None:
            server.kill()
            server.wait()
    log = sched.stderr() if sched is not None else ""
    occurrences = sorted(f.occurrence for f in drain(amqp_url, queue))
    assert len(occurrences) == len(set(occurrences)), occurrences
    assert codes == [0], log[-3000:]
    assert "declared schedules synced at the start of the term" in log, log[-3000:]
