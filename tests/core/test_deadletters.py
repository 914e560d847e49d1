"""The dead-letter queue tool (sluice.deadletters and `sluice dlq`) on the real RabbitMQ."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import aio_pika
import pytest

from sluice.deadletters import DeadLetterQueue
from sluice.protocol import H_ATTEMPT, H_DEAD_QUEUE, H_DEAD_REASON, TaskMessage
from sluice.publisher import Publisher
from sluice.settings import Settings
from sluice.topology import Topology

SLUICE = [sys.executable, "-m", "sluice_cli"]


@pytest.fixture
def settings(amqp_url: str, unique: str) -> Settings:
    return Settings(amqp_url=amqp_url, prefix=unique, queue_type="quorum")


@pytest.fixture
async def channel(settings: Settings) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    conn = await aio_pika.connect(settings.amqp_url)
    ch = await conn.channel(publisher_confirms=True)
    await Topology.from_settings(settings).declare_base(ch)
    yield ch
    p = settings.prefix
    for q in (f"{p}.q.default", f"{p}.q.billing", f"{p}.dlq"):
        await ch.queue_delete(q)
    for ex in (f"{p}.tasks", f"{p}.dead"):
        await ch.exchange_delete(ex)
    await conn.close()


async def kill_some(
    settings: Settings, ch: aio_pika.abc.AbstractChannel, n: int, reason: str, task: str
) -> list[str]:
    """Put n dead letters in the DLQ the way a worker does (a copy with the reason headers)."""
    dead = await ch.get_exchange(f"{settings.prefix}.dead")
    ids = []
    for i in range(n):
        msg = TaskMessage(task, {"i": i}, queue="billing", attempt=3)
        headers = {
            **msg.headers(),
            H_DEAD_REASON: reason,
            "x-sluice-dead-detail": f"boom {i}",
            H_DEAD_QUEUE: "billing",
        }
        await dead.publish(
            aio_pika.Message(
                json.dumps(msg.payload).encode(), message_id=msg.id, headers=headers, delivery_mode=2
            ),
            routing_key="",
        )
        ids.append(msg.id)
    return ids


async def depth(ch: aio_pika.abc.AbstractChannel, name: str) -> int:
    q = await ch.declare_queue(name, passive=True)
    return int(q.declaration_result.message_count or 0)


async def depth_becomes(ch: aio_pika.abc.AbstractChannel, name: str, n: int, within: float = 10) -> int:
    """The queue's ready count once it equals n, or its last value after ``within`` seconds.

    Requeued messages of a quorum queue become ready again a moment after the nack (Raft), so a count
    right after a browse may still be short.
    """
    deadline = time.monotonic() + within
    while (d := await depth(ch, name)) != n and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return d


async def test_browse_filters_and_removes_nothing(
    settings: Settings, channel: aio_pika.abc.AbstractChannel
) -> None:
    a = await kill_some(settings, channel, 3, "handler_error", "billing.charge")
    b = await kill_some(settings, channel, 2, "invalid_payload", "billing.refund")
    async with DeadLetterQueue(settings) as dlq:
        everything = await dlq.browse()
        assert [d.id for d in everything] == a + b
        refunds = await dlq.browse(lambda d: d.task == "billing.refund")
        assert [d.id for d in refunds] == b
        assert {d.reason for d in refunds} == {"invalid_payload"}
        assert [d.id for d in await dlq.browse(limit=2)] == a[:2]
    assert await depth_becomes(channel, f"{settings.prefix}.dlq", 5) == 5


async def test_broker_dead_lettered_message_is_readable(
    settings: Settings, channel: aio_pika.abc.AbstractChannel
) -> None:
    """A message rejected from a work queue arrives with x-death only; its queue and reason are recovered."""
    async with Publisher(settings) as pub:
        tid = await pub.publish(TaskMessage("billing.charge", {"x": 1}, queue="billing"))
    q = await channel.declare_queue(f"{settings.prefix}.q.billing", passive=True)
    m = await q.get(timeout=5)
    assert m is not None
    await m.reject(requeue=False)
    async with DeadLetterQueue(settings) as dlq:
        deadline = time.monotonic() + 10
        found = []
        while not found and time.monotonic() < deadline:
            found = await dlq.browse()
        assert len(found) == 1
        assert (found[0].id, found[0].reason, found[0].queue, found[0].task) == (
            tid,
            "rejected",
            "billing",
            "billing.charge",
        )


async def test_replay_republishes_with_attempt_reset_then_removes(
    settings: Settings, channel: aio_pika.abc.AbstractChannel
) -> None:
    ids = await kill_some(settings, channel, 4, "handler_error", "billing.charge")
    others = await kill_some(settings, channel, 1, "not_json", "billing.other")
    async with DeadLetterQueue(settings) as dlq:
        dry = await dlq.replay(lambda d: d.task == "billing.charge", dry_run=True)
        assert [d.id for d in dry.replayed] == ids
        report = await dlq.replay(lambda d: d.task == "billing.charge")
        assert [d.id for d in report.replayed] == ids
        assert report.failed == []
        assert [d.id for d in await dlq.browse()] == others
    work = await channel.declare_queue(f"{settings.prefix}.q.billing", passive=True)
    got = []
    for _ in ids:
        m = await work.get(timeout=5)
        assert m is not None
        got.append(m)
        await m.ack()
    assert [m.message_id for m in got] == ids
    for m in got:
        assert m.headers[H_ATTEMPT] == 1
        assert H_DEAD_REASON not in m.headers
        assert m.headers["x-sluice-replays"] == 1
        assert json.loads(m.body)["i"] in range(4)


async def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    proc = await asyncio.create_subprocess_exec(
        *SLUICE, *args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    return subprocess.CompletedProcess(args, proc.returncode or 0, out, err)


async def test_cli_ls_show_replay_purge(settings: Settings, channel: aio_pika.abc.AbstractChannel) -> None:
    ids = await kill_some(settings, channel, 3, "handler_error", "billing.charge")
    env = {**os.environ, "SLUICE_AMQP_URL": settings.amqp_url, "SLUICE_PREFIX": settings.prefix}
    out = await cli(env, "dlq", "ls", "--json")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert [r["id"] for r in rows] == ids
    assert {r["reason"] for r in rows} == {"handler_error"}
    shown = await cli(env, "dlq", "show", ids[1], "--json")
    assert json.loads(shown.stdout)["detail"] == "boom 1"
    missing = await cli(env, "dlq", "show", "nope")
    assert missing.returncode == 1
    assert missing.stderr.decode().startswith("sluice: error: no dead letter")
    nothing = await cli(env, "dlq", "replay")
    assert nothing.returncode == 1
    assert b"Traceback" not in nothing.stderr
    rep = await cli(env, "dlq", "replay", "--id", ids[0], "--json")
    assert json.loads(rep.stdout)["replayed"] == [ids[0]]
    refused = await cli(env, "dlq", "purge")  # no terminal, no --yes: refuses
    assert refused.returncode == 1
    assert await depth_becomes(channel, f"{settings.prefix}.dlq", 2) == 2
    purged = await cli(env, "dlq", "purge", "--yes")
    assert purged.stdout.decode().strip() == "purged 2 dead letter(s)"
    assert await depth(channel, f"{settings.prefix}.dlq") == 0


@pytest.mark.slow
async def test_replay_killed_half_way_loses_nothing(
    settings: Settings, channel: aio_pika.abc.AbstractChannel
) -> None:
    n = 1500
    ids = await kill_some(settings, channel, n, "handler_error", "billing.charge")
    await Topology.from_settings(settings).declare_queue(channel, "billing")
    env = {**os.environ, "SLUICE_AMQP_URL": settings.amqp_url, "SLUICE_PREFIX": settings.prefix}
    proc = await asyncio.create_subprocess_exec(
        *SLUICE, "dlq", "replay", "--all", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    work = f"{settings.prefix}.q.billing"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.returncode is None:
            if await depth(channel, work) >= 50:
                break
        assert proc.returncode is None, "replay finished before it could be killed: raise n"
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    seen: list[str] = []
    for name in (work, f"{settings.prefix}.dlq"):
        q = await channel.declare_queue(name, passive=True)
        while (m := await q.get(fail=False, timeout=5)) is not None:
            seen.append(m.message_id or "")
            await m.ack()
    assert set(seen) == set(ids), f"lost {len(set(ids) - set(seen))} task(s)"
    # replay settles one dead letter at a time: at most the one confirmed but not yet removed is doubled
    assert len(seen) - n in (0, 1)
