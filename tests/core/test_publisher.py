"""The confirmed publisher against the real RabbitMQ."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aio_pika
import pytest

from sluice.errors import BrokerUnavailable, MessageTooLarge, PublishNacked, PublishReturned
from sluice.protocol import H_ATTEMPT, H_IDEMPOTENCY_KEY, H_TASK, TaskMessage
from sluice.publisher import Publisher, PublishOutcome
from sluice.settings import Settings


@pytest.fixture
def settings(amqp_url: str, unique: str) -> Settings:
    return Settings(amqp_url=amqp_url, prefix=unique, queue_type="classic", publish_window=64)


@pytest.fixture
async def admin(amqp_url: str, settings: Settings) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    conn = await aio_pika.connect(amqp_url)
    ch = await conn.channel()
    yield ch
    for q in (f"{settings.prefix}.q.default", f"{settings.prefix}.q.other", f"{settings.prefix}.dlq"):
        await ch.queue_delete(q)
    for ex in (f"{settings.prefix}.tasks", f"{settings.prefix}.dead"):
        await ch.exchange_delete(ex)
    await conn.close()


async def test_publish_declares_and_delivers_with_the_contract(
    settings: Settings, admin: aio_pika.abc.AbstractChannel
) -> None:
    async with Publisher(settings) as pub:
        msg = TaskMessage("demo.noop", {"x": 1}, queue="other", idempotency_key="idem-1")
        task_id = await pub.publish(msg)
    q = await admin.declare_queue(f"{settings.prefix}.q.other", passive=True)
    got = await q.get(timeout=5)
    assert got is not None
    assert got.message_id == task_id
    assert got.content_type == "application/json"
    assert got.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert got.body == b'{"x":1}'
    assert got.headers[H_TASK] == "demo.noop" and got.headers[H_ATTEMPT] == 1
    assert got.headers[H_IDEMPOTENCY_KEY] == "idem-1"
    await got.ack()


async def test_publish_many_confirms_all_and_reports_each(
    settings: Settings, admin: aio_pika.abc.AbstractChannel
) -> None:
    seen: list[PublishOutcome] = []
    async with Publisher(settings) as pub:
        report = await pub.publish_many((TaskMessage("t", {"i": i}) for i in range(500)), seen.append)
    assert report.confirmed == 500 and report.failed == []
    assert sorted(o.index for o in seen) == list(range(500))
    assert len({o.task_id for o in seen}) == 500
    q = await admin.declare_queue(f"{settings.prefix}.q.default", passive=True)
    assert q.declaration_result.message_count == 500


async def test_unroutable_raw_publish_is_returned_not_lost(
    settings: Settings, admin: aio_pika.abc.AbstractChannel
) -> None:
    async with Publisher(settings) as pub:
        with pytest.raises(PublishReturned):
            await pub.publish_raw(aio_pika.Message(b"{}"), routing_key="nobody-is-bound-here")


async def test_oversized_payload_is_refused_before_sending(
    settings: Settings, admin: aio_pika.abc.AbstractChannel
) -> None:
    small = settings.model_copy(update={"max_message_bytes": 1024})
    async with Publisher(small) as pub:
        with pytest.raises(MessageTooLarge):
            await pub.publish(TaskMessage("t", {"blob": "x" * 2000}))
        report = await pub.publish_many([TaskMessage("t", {"blob": "x" * 2000}), TaskMessage("t", {})])
    assert report.confirmed == 1 and len(report.failed) == 1
    assert report.failed[0].index == 0 and isinstance(report.failed[0].error, MessageTooLarge)


async def test_unreachable_broker_fails_fast_with_a_clear_error() -> None:
    s = Settings(amqp_url="amqp://guest:guest@127.0.0.1:1/", connect_timeout=2)
    t0 = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=r"127\.0\.0\.1:1"):
        async with Publisher(s):
            pass
    assert time.monotonic() - t0 < 5


async def test_publish_after_close_is_a_broker_error(
    settings: Settings, admin: aio_pika.abc.AbstractChannel
) -> None:
    pub = Publisher(settings)
    async with pub:
        pass
    with pytest.raises(BrokerUnavailable):
        await asyncio.wait_for(pub.publish(TaskMessage("t", {})), 5)


async def test_a_nack_renews_the_channel_at_most_once_a_second(
    settings: Settings, admin: aio_pika.abc.AbstractChannel
) -> None:
    """A queue full with ``reject-publish`` nacks: the publish raises PublishNacked, the next publish
    goes out on a new channel (at most one a second), and once there is room it is confirmed."""
    full = f"{settings.prefix}.q.full"
    async with Publisher(settings) as pub:
        q = await admin.declare_queue(full, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
        await q.bind(f"{settings.prefix}.tasks", routing_key="full")
        props = pub.properties(TaskMessage("demo.noop", {}))
        try:
            await pub.publish_properties(b"{}", "full", props)  # fills the queue
            first = pub._channel
            for _ in range(3):
                with pytest.raises(PublishNacked):
                    await pub.publish_properties(b"{}", "full", props)
            assert pub.renewals == 1 and pub._channel is not first  # once, within the second
            await q.purge()
            await pub.publish_properties(b"{}", "full", props)  # confirmed on the new channel
            assert pub.renewals == 1
        finally:
            await q.delete(if_unused=False, if_empty=False)
