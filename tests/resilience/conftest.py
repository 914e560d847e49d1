"""Fixtures for the resilience tests (the shared Redis client ``redis`` is tests/conftest.py's): a key
prefix unique to the test (its keys deleted afterwards), a throwaway redis-server this test may flush,
kill and restart, and ``store``: the same test on both backends (the shared Redis, and the in-memory
backend on a FakeClock).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import pytest
from redis.asyncio import Redis

from sluice.resilience import Backend, FakeClock, KeySpace, MemoryBackend
from support.ports import free_port

T = TypeVar("T")


@dataclass
class Store:
    """One backend under test: ``client`` goes where a Redis client goes; ``clock`` is the FakeClock of
    the in-memory backend (``None`` on Redis, whose clock is real)."""

    kind: str
    client: Backend
    keys: KeySpace
    clock: FakeClock | None = None
    url: str = ""
    made: list[Backend] = field(default_factory=list)

    async def pttl(self, key: str) -> int:
        """Milliseconds the key has left (-2: no such key), as Redis' PTTL answers."""
        if isinstance(self.client, MemoryBackend):
            left = self.client.ttl(key)
            return -2 if left is None else math.ceil(left * 1000)
        return int(await self.client.pttl(key))

    async def delete(self, *keys: str) -> None:
        if isinstance(self.client, MemoryBackend):
            for key in keys:
                self.client.delete(key)
        else:
            await self.client.delete(*keys)

    async def elapse(self, seconds: float) -> None:
        """Let ``seconds`` pass: moved by hand on the FakeClock, slept for real on Redis."""
        if self.clock is not None:
            self.clock.advance(seconds)
            await asyncio.sleep(0)
        else:
            await asyncio.sleep(seconds)

    async def sleep(self, seconds: float) -> None:
        """A sleep inside a test's own task: on the FakeClock, woken when the clock gets there."""
        await (self.clock.sleep(seconds) if self.clock is not None else asyncio.sleep(seconds))

    async def written(self) -> set[str]:
        """Every key under this test's prefix."""
        if isinstance(self.client, MemoryBackend):
            return set(self.client.keys(self.keys.prefix + ":"))
        found = self.client.scan_iter(match=f"{self.keys.prefix}:*", count=1000)
        return {k.decode() async for k in found}

    async def zcard(self, key: str) -> int:
        """Holders of a semaphore's lease set."""
        if isinstance(self.client, MemoryBackend):
            model = self.client.model(key)
            return 0 if model is None else len(model.leases)
        return int(await self.client.zcard(key))

    def clients(self, n: int) -> list[Backend]:
        """``n`` clients of this backend, as ``n`` processes would have (closed after the test)."""
        if isinstance(self.client, MemoryBackend):
            return [self.client] * n
        made: list[Backend] = [Redis.from_url(self.url) for _ in range(n)]
        self.made.extend(made)
        return made

    async def drive(self, work: Awaitable[T], *, jumps: int = 10_000) -> T:
        """Await ``work``; on the FakeClock, jump to each deadline it sleeps for (no real-time wait)."""
        task = asyncio.ensure_future(work)
        if self.clock is None:
            return await task
        for _ in range(jumps):
            sleeping = asyncio.ensure_future(self.clock.until_sleeping())
            await asyncio.wait({task, sleeping}, return_when=asyncio.FIRST_COMPLETED)
            sleeping.cancel()
            if task.done():
                return task.result()
            self.clock.jump()
        task.cancel()
        pytest.fail(f"still running after {jumps} jumps of the fake clock")


@pytest.fixture(params=["redis", "memory"])
async def store(request: pytest.FixtureRequest, unique: str) -> AsyncIterator[Store]:
    """The test on the shared Redis (its keys deleted after), then on the in-memory backend."""
    space = KeySpace(f"sluicetest:{unique}")
    if request.param == "memory":
        clock = FakeClock()
        yield Store("memory", MemoryBackend(clock=clock), space, clock)
        return
    url = request.getfixturevalue("redis_url")
    client = Redis.from_url(url)
    store = Store("redis", client, space, url=url)
    try:
        yield store
    finally:
        found = [k async for k in client.scan_iter(match=f"{space.prefix}:*", count=1000)]
        if found:
            await client.delete(*found)
        for other in [client, *store.made]:
            assert isinstance(other, Redis)
            await other.aclose()


@pytest.fixture
async def keys(redis: Redis, unique: str) -> AsyncIterator[KeySpace]:
    """A prefix of this test's own; its keys are deleted after the test (they all have TTLs anyway)."""
    space = KeySpace(f"sluicetest:{unique}")
    yield space
    found = [k async for k in redis.scan_iter(match=f"{space.prefix}:*", count=1000)]
    if found:
        await redis.delete(*found)


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
