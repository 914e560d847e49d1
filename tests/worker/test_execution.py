"""How handlers run: plain functions in the thread pool (the loop keeps going), at most `concurrency` at once."""

from __future__ import annotations

import asyncio
import threading
import time

import aio_pika
from pydantic import BaseModel

from sluice.protocol import TaskMessage
from sluice.publisher import Publisher
from sluice.settings import Settings
from sluice.tasks import TaskContext, task
from sluice_worker.options import load_registry

from .conftest import eventually
from .inproc import running_worker

BLOCKS: dict[str, list[tuple[str, float, float]]] = {}  # key → (thread name, start, end)
RUNNING: dict[str, int] = {}
PEAK: dict[str, int] = {}
DONE: dict[str, set[str]] = {}


class Block(BaseModel):
    key: str
    seconds: float


class Hold(BaseModel):
    key: str
    seconds: float


@task("wt.inproc.block")
def block(p: Block) -> None:
    """A plain function that blocks its thread (time.sleep): it must not block the event loop."""
    start = time.monotonic()
    time.sleep(p.seconds)
    BLOCKS.setdefault(p.key, []).append((threading.current_thread().name, start, time.monotonic()))


@task("wt.inproc.hold")
async def hold(p: Hold, ctx: TaskContext) -> None:
    RUNNING[p.key] = RUNNING.get(p.key, 0) + 1
    PEAK[p.key] = max(PEAK.get(p.key, 0), RUNNING[p.key])
    try:
        await asyncio.sleep(p.seconds)
    finally:
        RUNNING[p.key] -= 1
    DONE.setdefault(p.key, set()).add(ctx.task_id)


async def test_a_sync_handler_runs_in_a_thread_and_the_loop_goes_on(
    channel: aio_pika.abc.AbstractChannel, settings: Settings, unique: str
) -> None:
    registry = load_registry([])
    registry.add(block)
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    async with running_worker(channel, settings, registry), Publisher(settings) as pub:
        tick_task = asyncio.create_task(ticker())
        try:
            await pub.publish(TaskMessage("wt.inproc.block", {"key": unique, "seconds": 0.6}))

            async def blocked() -> bool:
                return bool(BLOCKS.get(unique))

            await eventually(blocked, 15, "the blocking task")
        finally:
            tick_task.cancel()
    [(thread, start, end)] = BLOCKS[unique]
    assert thread.startswith("sluice-sync"), thread
    assert thread != threading.main_thread().name
    during = [t for t in ticks if start < t < end]
    # 0.6 s at one tick per 10 ms: a blocked loop would show none; allow a loaded machine plenty of slack
    assert len(during) >= 15, f"the loop ticked {len(during)} times during a 0.6 s blocking handler"


async def test_concurrency_bounds_the_tasks_running_at_once(
    channel: aio_pika.abc.AbstractChannel, settings: Settings, unique: str
) -> None:
    settings = settings.model_copy(update={"concurrency": 3, "prefetch": 50})
    registry = load_registry([])
    registry.add(hold)
    n = 15
    async with running_worker(channel, settings, registry), Publisher(settings) as pub:
        report = await pub.publish_many(
            TaskMessage("wt.inproc.hold", {"key": unique, "seconds": 0.05}) for _ in range(n)
        )
        assert report.confirmed == n

        async def all_done() -> bool:
            return len(DONE.get(unique, ())) == n

        await eventually(all_done, 20, f"{n} tasks")
    assert PEAK[unique] == 3, f"peak concurrency {PEAK[unique]} with --concurrency 3"
