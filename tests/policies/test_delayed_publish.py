"""Delayed publishing through the tiers: the publisher, `sluice publish --delay` and the API's delay field."""

from __future__ import annotations

import asyncio
import subprocess
import time

import aio_pika
import pytest
from pydantic import ValidationError

from sluice.protocol import H_ETA, TaskMessage, now_ms
from sluice.publisher import Publisher
from sluice.settings import Settings
from sluice_producer.models import TaskIn

from .conftest import SLUICE, delete_prefix


async def _count(channel: aio_pika.abc.AbstractChannel, name: str) -> int:
    q = await channel.declare_queue(name, passive=True)
    n = q.declaration_result.message_count
    assert n is not None
    return n


async def test_a_delayed_task_waits_in_its_tier_and_arrives_when_due(amqp_url: str, unique: str) -> None:
    settings = Settings(amqp_url=amqp_url, prefix=unique)
    try:
        async with Publisher(settings) as pub:
            eta = now_ms() + 2000
            await pub.publish(TaskMessage("t.delayed", {"x": 1}, eta_ms=eta))
            await pub.publish(TaskMessage("t.now", {"x": 2}, eta_ms=now_ms() + 100))  # within the slack
            conn = await aio_pika.connect(amqp_url)
            async with conn:
                ch = await conn.channel()
                assert await _count(ch, f"{unique}.delay.2000") == 1
                work = await ch.declare_queue(f"{unique}.q.default", passive=True)
                first = await work.get(timeout=5)
                assert first.headers["x-sluice-task"] == "t.now"
                await first.ack()
                deadline = time.monotonic() + 10
                while (msg := await work.get(fail=False)) is None:
                    assert time.monotonic() < deadline, "the delayed task never came back"
                    await asyncio.sleep(0.05)
                arrived = now_ms()
                await msg.ack()
                assert msg.headers["x-sluice-task"] == "t.delayed"
                assert msg.headers[H_ETA] == eta
                assert eta - 100 <= arrived <= eta + 1500, arrived - eta
    finally:
        delete_prefix(amqp_url, unique)


def test_publish_delay_option(env: dict[str, str], amqp_url: str, unique: str) -> None:
    import pika

    try:
        out = subprocess.run(
            [*SLUICE, "publish", "demo.noop", "--delay", "5m", "--count", "3"],
            env=env,
            capture_output=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        ch = conn.channel()
        assert ch.queue_declare(f"{unique}.delay.256000", passive=True).method.message_count == 3
        assert ch.queue_declare(f"{unique}.q.default", passive=True).method.message_count == 0
        conn.close()
        bad = subprocess.run(
            [*SLUICE, "publish", "demo.noop", "--delay", "soon"], env=env, capture_output=True, text=True
        )
        assert bad.returncode == 2
        assert bad.stderr.startswith("sluice: error:") and "--delay" in bad.stderr
        assert "Traceback" not in bad.stderr
    finally:
        delete_prefix(amqp_url, unique)


def test_api_delay_field() -> None:
    assert TaskIn(task="t", delay="1500ms").delay == 1.5
    assert TaskIn(task="t", delay=30).delay == 30.0
    assert TaskIn(task="t").delay is None
    for bad in ("soon", -1, "40d"):
        with pytest.raises(ValidationError):
            TaskIn(task="t", delay=bad)
