"""The producer API while RabbitMQ is blocked by a memory alarm or restarted. Marked ``disruptive``:
they change the shared broker and always restore it."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from producer_helpers import Broker
from test_http import api

from sluice.settings import Settings
from support.brokerctl import rabbitmqctl_argv

pytestmark = [pytest.mark.disruptive, pytest.mark.slow]

FLAG = Path("/tmp/sluice-broker-disruption")


def ctl(*args: str, limit_s: float = 60) -> str:
    return subprocess.run(
        [*rabbitmqctl_argv(), *args], check=True, capture_output=True, text=True, timeout=limit_s
    ).stdout.strip()


@contextlib.contextmanager
def disruption() -> Iterator[None]:
    FLAG.touch()
    try:
        yield
    finally:
        FLAG.unlink(missing_ok=True)


async def until(c: httpx.AsyncClient, path: str, status: int, limit_s: float = 30) -> httpx.Response:
    """Poll ``path`` until it answers ``status`` (bounded)."""
    async with asyncio.timeout(limit_s):
        while True:
            r = await c.get(path)
            if r.status_code == status:
                return r
            await asyncio.sleep(0.1)


async def test_memory_alarm_answers_503_then_recovers(amqp_url: str, broker: Broker) -> None:
    settings = Settings(amqp_url=amqp_url, prefix=broker.prefix, publish_timeout=2.0)
    saved = ctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().")
    assert saved, "could not read the memory watermark"
    async with api(settings) as c:
        assert (await c.post("/v1/tasks", json={"task": "a.before"})).status_code == 202
        with disruption():
            try:
                ctl("set_vm_memory_high_watermark", "0")
                start = time.monotonic()
                r = await c.post("/v1/tasks", json={"task": "a.blocked"})
                elapsed = time.monotonic() - start
                assert r.status_code == 503, r.text
                assert int(r.headers["Retry-After"]) >= 1
                assert elapsed < settings.publish_timeout + 1.5
                ready = await until(c, "/readyz", 503, limit_s=10)
                assert ready.json()["broker"] == "blocked"
            finally:
                ctl("eval", f"vm_memory_monitor:set_vm_memory_high_watermark({saved}).")
        assert ctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().") == saved
        await until(c, "/readyz", 200)
        after = await c.post("/v1/tasks", json={"task": "a.after"})
        assert after.status_code == 202, after.text
    # the blocked publish was written before the timeout: it lands once the alarm clears, or never
    n = await broker.count()
    assert n in (2, 3)
    tasks = [m.headers["x-sluice-task"] for m in await broker.take(n or 0)]
    assert tasks in (["a.before", "a.after"], ["a.before", "a.blocked", "a.after"])


async def test_reconnects_after_a_broker_restart(amqp_url: str, broker: Broker) -> None:
    settings = Settings(amqp_url=amqp_url, prefix=broker.prefix, publish_timeout=3.0)
    async with api(settings) as c:
        assert (await c.post("/v1/tasks", json={"task": "a.before"})).status_code == 202
        with disruption():
            try:
                ctl("stop_app")
                down = await until(c, "/readyz", 503, limit_s=15)
                assert down.json()["broker"] in ("reconnecting", "connecting", "blocked")
                r = await c.post("/v1/tasks", json={"task": "a.during"})
                assert r.status_code == 503
                assert "Retry-After" in r.headers
            finally:
                ctl("start_app")
                ctl("await_startup")
        await until(c, "/readyz", 200, limit_s=40)
        after = await c.post("/v1/tasks", json={"task": "a.after"})
        assert after.status_code == 202, after.text
    msgs = await broker.take(2)
    assert [m.headers["x-sluice-task"] for m in msgs] == ["a.before", "a.after"]
