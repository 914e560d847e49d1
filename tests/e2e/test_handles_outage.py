"""Redis stopped during a tracked run (issue 13): tracking fails open, the tasks run, nothing crashes.

The worker's Redis is a PRIVATE ``redis-server`` this test starts on a free port and kills (never the
default one); the handlers count their runs on the default Redis (``HANDLES_COUNT_URL``), which stays
up. Status reads against the dead Redis say the backend is unavailable, not ``unknown``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as sync_redis
from redis.asyncio import Redis
from test_handles_states import publish, reaches, runs

from sluice.handles import State, TaskHandles, TrackingUnavailable
from support.ports import free_port
from support.waiting import eventually, wait_until
from support.workers import WorkerProcess, worker_env

HERE = Path(__file__).resolve().parent


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of this test's own on 127.0.0.1 (no persistence); killed after the test."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not on PATH: the outage test needs a private one")
    port = free_port()
    proc = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = sync_redis.Redis.from_url(url)
    wait_until(lambda: _pings(client), 10, "the private redis-server")
    client.close()
    try:
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _pings(client: sync_redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except sync_redis.ConnectionError:
        return False


async def test_redis_stopped_during_a_tracked_run(
    private_redis: tuple[str, subprocess.Popen[bytes]],
    amqp_url: str,
    redis_url: str,
    unique: str,
    r: sync_redis.Redis,
    tmp_path: Path,
) -> None:
    url, server = private_redis
    env = worker_env(amqp_url, url, unique, HERE, HANDLES_COUNT_URL=redis_url)
    w = WorkerProcess(["--tasks", "handles_tasks"], env, tmp_path / "worker.log")
    try:
        w.wait_consuming(amqp_url, f"{unique}.q.default")
        k = f"{unique}:runs"
        client = Redis.from_url(url)
        async with TaskHandles(client, unique) as handles:
            before = [publish(env, "handles.add", {"key": k, "n": i}) for i in range(3)]
            for i, task_id in enumerate(before):
                assert (await reaches(handles, task_id, State.SUCCEEDED)).result == {
                    "total": i + 1,
                    "by": task_id,
                }

            server.kill()  # the worker's Redis goes away mid-run
            server.wait()
            during = [publish(env, "handles.add", {"key": k, "n": i}) for i in range(5)]
            during += [publish(env, "handles.mark", {"key": k}) for _ in range(5)]
            await eventually(lambda: runs(r, k) == 13, 60, "every task run with Redis down")
            with pytest.raises(TrackingUnavailable):
                await handles.status(during[0])
        await client.aclose()
        assert w.proc.poll() is None, "the worker died"
        code = w.terminate(timeout=30)
    finally:
        w.kill()
    log = w.stderr()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert runs(r, k) == 13
