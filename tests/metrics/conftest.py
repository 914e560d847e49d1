"""Fixtures of the metrics tests: a running ``sluice metrics`` on a unique prefix, its topology removed after."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import pytest
from fleet_helpers import Service, env_for, start_service

from sluice.settings import Settings
from sluice.telemetry import metrics_exchange
from sluice.topology import Topology


@pytest.fixture
async def topology(amqp_url: str, redis_url: str, unique: str) -> AsyncIterator[Settings]:
    """Settings with a unique prefix (classic queues), the base topology and default queue declared."""
    settings = Settings(amqp_url=amqp_url, redis_url=redis_url, prefix=unique, queue_type="classic")
    topo = Topology.from_settings(settings)
    async with await aio_pika.connect(amqp_url) as conn:
        channel = await conn.channel()
        await topo.declare_base(channel)
        await topo.declare_queue(channel, settings.default_queue)
    yield settings
    async with await aio_pika.connect(amqp_url) as conn:  # a new one: the test may have restarted the broker
        cleanup = await conn.channel()
        for name in (topo.queue(settings.default_queue), topo.dead_queue):
            await cleanup.queue_delete(name)
        for name in (
            topo.tasks_exchange,
            topo.dead_exchange,
            topo.requeue_exchange,
            metrics_exchange(unique),
        ):
            await cleanup.exchange_delete(name)


@pytest.fixture
def env(topology: Settings) -> dict[str, str]:
    return env_for(topology.amqp_url, topology.redis_url, topology.prefix, SLUICE_QUEUE_TYPE="classic")


@pytest.fixture
def service(env: dict[str, str], tmp_path: Path) -> Iterator[Service]:
    """``sluice metrics --alive-after 2 --interval 0.5`` on a free port."""
    svc = start_service(env, tmp_path / "metrics.log", "--alive-after", "2", "--interval", "0.5")
    try:
        yield svc
    finally:
        code = svc.stop()
        assert code == 0, svc.log.read_text()
