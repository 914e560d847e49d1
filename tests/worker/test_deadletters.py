"""Everything the worker cannot run lands in {prefix}.dlq with a reason, and the worker goes on."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aio_pika
import pytest
from pydantic import BaseModel

from sluice.protocol import (
    H_ATTEMPT,
    H_DEAD_AT,
    H_DEAD_DETAIL,
    H_DEAD_QUEUE,
    H_DEAD_REASON,
    H_QUEUE,
    H_TASK,
    H_VERSION,
)
from sluice.settings import Settings
from sluice.tasks import task
from sluice.topology import Topology
from sluice_worker.options import load_registry

from .conftest import eventually, queue_counts
from .inproc import running_worker

SEEN: dict[str, list[int]] = {}


class Mark(BaseModel):
    key: str
    n: int


@task("wt.inproc.mark")
async def mark(p: Mark) -> None:
    SEEN.setdefault(p.key, []).append(p.n)


def headers(task_name: str) -> dict[str, Any]:
    return {H_VERSION: 1, H_TASK: task_name, H_ATTEMPT: 1, H_QUEUE: "default"}


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_bad_messages_are_dead_lettered_with_their_reason_and_the_worker_goes_on(
    channel: aio_pika.abc.AbstractChannel, settings: Settings, unique: str, queue_type: str
) -> None:
    settings = settings.model_copy(update={"max_message_bytes": 1024, "queue_type": queue_type})
    topo = Topology.from_settings(settings)
    registry = load_registry([])
    registry.add(mark)
    bad: dict[str, tuple[bytes, dict[str, Any] | None, str]] = {
        # message id: (body, headers, the reason expected)
        "m-not-json": (b"\xff{not json", headers("demo.noop"), "not_json"),
        "m-too-large": (json.dumps({"pad": "x" * 2000}).encode(), headers("demo.noop"), "too_large"),
        "m-no-headers": (b"{}", None, "bad_headers"),
        "m-bad-attempt": (b"{}", {**headers("demo.noop"), H_ATTEMPT: "zero"}, "bad_headers"),
        "m-unknown": (b"{}", headers("no.such.task"), "unknown_task"),
        "m-schema": (json.dumps({"seconds": "soon"}).encode(), headers("demo.sleep"), "invalid_payload"),
        "m-raises": (
            json.dumps({"message": f"boom {unique}"}).encode(),
            headers("demo.fail"),
            "handler_error",
        ),
    }
    async with running_worker(channel, settings, registry):
        tasks_ex = await channel.get_exchange(topo.tasks_exchange)
        for mid, (body, hdrs, _) in bad.items():
            await tasks_ex.publish(
                aio_pika.Message(
                    body, headers=hdrs, message_id=mid, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                ),
                routing_key="default",
            )
        good = json.dumps({"key": unique, "n": 1}).encode()
        await tasks_ex.publish(
            aio_pika.Message(good, headers=headers("wt.inproc.mark"), message_id="m-good"), "default"
        )

        async def dlq_full() -> bool:
            return (await queue_counts(channel, topo.dead_queue))[0] >= len(bad)

        await eventually(dlq_full, 20, "every bad message in the DLQ")

        async def good_ran() -> bool:
            return SEEN.get(unique) == [1]

        await eventually(good_ran, 10, "the valid task published after the bad ones")

        dlq = await channel.declare_queue(topo.dead_queue, passive=True)
        got: dict[str, aio_pika.abc.AbstractIncomingMessage] = {}
        while (m := await dlq.get(fail=False)) is not None:
            got[str(m.message_id)] = m
            await m.ack()
        assert set(got) == set(bad)
        for mid, (body, _, reason) in bad.items():
            m = got[mid]
            h = m.headers
            assert h[H_DEAD_REASON] == reason, (mid, h)
            assert h[H_DEAD_QUEUE] == "default"
            assert abs(int(h[H_DEAD_AT]) - time.time() * 1000) < 60_000  # type: ignore[arg-type]
            assert m.body == body, "the dead copy keeps the body"
            assert m.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
            assert 0 < len(str(h[H_DEAD_DETAIL]).encode()) <= 2048
        assert "seconds" in str(got["m-schema"].headers[H_DEAD_DETAIL])
        raised = str(got["m-raises"].headers[H_DEAD_DETAIL])
        assert "DemoFailure" in raised
        assert f"boom {unique}" in raised
        # nothing left behind in the work queue, nothing unacked
        assert (await queue_counts(channel, topo.queue("default")))[0] == 0


async def test_the_worker_survives_a_poison_flood(
    channel: aio_pika.abc.AbstractChannel, settings: Settings, unique: str
) -> None:
    topo = Topology.from_settings(settings)
    registry = load_registry([])
    registry.add(mark)
    n_bad = 300
    async with running_worker(channel, settings, registry):
        ex = await channel.get_exchange(topo.tasks_exchange)
        for i in range(n_bad):
            await ex.publish(
                aio_pika.Message(b"nope", headers=headers("demo.noop"), message_id=f"p{i}"), "default"
            )
        await ex.publish(
            aio_pika.Message(json.dumps({"key": unique, "n": 7}).encode(), headers=headers("wt.inproc.mark")),
            "default",
        )

        async def all_dead() -> bool:
            return (await queue_counts(channel, topo.dead_queue))[0] == n_bad

        await eventually(all_dead, 30, f"{n_bad} poison messages in the DLQ")

        async def good_ran() -> bool:
            return SEEN.get(unique) == [7]

        await eventually(good_ran, 10, "the valid task after the flood")
        await asyncio.sleep(0)


@task("wt.inproc.selfcancel")
async def selfcancel(p: Mark) -> None:
    raise asyncio.CancelledError  # a handler's own CancelledError is a failure, not a shutdown


async def test_a_handler_raising_cancelled_error_is_a_failure_not_a_stall(
    channel: aio_pika.abc.AbstractChannel, settings: Settings, unique: str
) -> None:
    topo = Topology.from_settings(settings)
    registry = load_registry([])
    registry.add(mark)
    registry.add(selfcancel)
    async with running_worker(channel, settings, registry):
        ex = await channel.get_exchange(topo.tasks_exchange)
        body = json.dumps({"key": unique, "n": 3}).encode()
        await ex.publish(
            aio_pika.Message(body, headers=headers("wt.inproc.selfcancel"), message_id="sc"), "default"
        )
        await ex.publish(aio_pika.Message(body, headers=headers("wt.inproc.mark")), "default")

        async def dead() -> bool:
            return (await queue_counts(channel, topo.dead_queue))[0] == 1

        await eventually(dead, 15, "the self-cancelling task in the DLQ")

        async def good_ran() -> bool:
            return SEEN.get(unique) == [3]

        await eventually(good_ran, 10, "the task after it")
        dlq = await channel.declare_queue(topo.dead_queue, passive=True)
        m = await dlq.get()
        await m.ack()
        assert m.headers[H_DEAD_REASON] == "handler_error"
        assert "CancelledError" in str(m.headers[H_DEAD_DETAIL])
    # acked, not stuck: with the worker gone nothing comes back to the work queue
    assert (await queue_counts(channel, topo.queue("default")))[0] == 0
