"""Fixtures of the scheduler tests: the test's prefix (its Redis keys and broker names deleted after), a
ScheduleStore on it with a FakeClock, settings pointing at the test's brokers, and reading a work queue."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
import pytest
from redis.asyncio import Redis

from sluice.resilience.clock import FakeClock
from sluice.schedules import ScheduleStore
from sluice.settings import Settings


@dataclass(frozen=True)
class Fired:
    id: str
    task: str
    schedule: str
    occurrence: int
    headers: dict[str, Any]
    body: bytes


def drain(amqp_url: str, queue: str) -> list[Fired]:
    """Take every ready message of ``queue`` (acked): what the schedulers published, in order."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    out: list[Fired] = []
    try:
        ch = conn.channel()
        while True:
            try:
                method, props, body = ch.basic_get(queue, auto_ack=True)
            except pika.exceptions.ChannelClosedByBroker as e:
                if e.reply_code == 404:  # nothing was ever published there
                    return out
                raise
            if method is None:
                return out
            h = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in (props.headers or {}).items()}
            out.append(
                Fired(
                    props.message_id,
                    h["x-sluice-task"],
                    h["x-sluice-schedule"],
                    int(h["x-sluice-occurrence"]),
                    h,
                    body,
                )
            )
    finally:
        conn.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1_800_000_000.0)


@pytest.fixture
async def store(redis: Redis, unique: str, clock: FakeClock) -> AsyncIterator[ScheduleStore]:
    async with ScheduleStore(redis, unique, clock=clock) as s:
        yield s
    found = [k async for k in redis.scan_iter(match=f"{unique}:*", count=1000)]
    if found:
        await redis.delete(*found)


@pytest.fixture
def settings(amqp_url: str, redis_url: str, unique: str) -> Settings:
    return Settings(amqp_url=amqp_url, redis_url=redis_url, prefix=unique, queue_type="classic")
