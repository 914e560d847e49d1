"""Fixtures for the resilience tests: a client on the shared Redis, a key prefix unique to the test
(its keys deleted afterwards), and a throwaway redis-server this test may flush, kill and restart.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from sluice.resilience import KeySpace


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def keys(redis: Redis, unique: str) -> AsyncIterator[KeySpace]:
    """A prefix of this test's own; its keys are deleted after the test (they all have TTLs anyway)."""
    space = KeySpace(f"sluicetest:{unique}")
    yield space
    found = [k async for k in redis.scan_iter(match=f"{space.prefix}:*", count=1000)]
    if found:
        await redis.delete(*found)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ThrowawayRedis:
    """A redis-server of this test's own, on a free loopback port, that may be killed and restarted."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not on PATH", pytrace=False)
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            time.sleep(0.02)
        pytest.fail(f"throwaway redis-server on port {self.port} did not start", pytrace=False)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def throwaway_redis() -> Iterator[ThrowawayRedis]:
    server = ThrowawayRedis()
    server.start()
    try:
        yield server
    finally:
        server.kill()
