"""A worker running inside the test's event loop (for tests that need no signal or kill)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import aio_pika

from sluice.settings import Settings
from sluice.tasks import Registry
from sluice.topology import Topology
from sluice_worker import Shutdown, serve

from .conftest import eventually, queue_counts


async def declare(
    ch: aio_pika.abc.AbstractChannel, settings: Settings, queues: Sequence[str] = ("default",)
) -> None:
    """The topology the worker will use, declared by the test so it can publish and probe first."""
    topo = Topology.from_settings(settings)
    await topo.declare_base(ch)
    for q in queues:
        await topo.declare_queue(ch, q)


@contextlib.asynccontextmanager
async def running_worker(
    ch: aio_pika.abc.AbstractChannel,
    settings: Settings,
    registry: Registry,
    queues: Sequence[str] = ("default",),
) -> AsyncIterator[asyncio.Task[None]]:
    """Serve ``queues`` until the block ends; yields once every queue has its consumer."""
    await declare(ch, settings, queues)
    sd = Shutdown()
    worker = asyncio.create_task(serve(settings, registry, queues, shutdown=sd))
    topo = Topology.from_settings(settings)

    async def consuming() -> bool:
        if worker.done():
            worker.result()  # raises what stopped it
        counts = [await queue_counts(ch, topo.queue(q)) for q in queues]
        return all(consumers >= 1 for _, consumers in counts)

    try:
        await eventually(consuming, 20, "the worker's consumers")
        yield worker
    finally:
        sd.request("test over")
        async with asyncio.timeout(settings.grace_period + 10):
            await worker
