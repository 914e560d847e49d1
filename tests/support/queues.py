"""What RabbitMQ says of a queue: ready messages and consumers, from a passive declare."""

from __future__ import annotations

import aio_pika
import pika
import pika.exceptions

__all__ = ["queue_counts", "queue_state"]


async def queue_counts(ch: aio_pika.abc.AbstractChannel, name: str) -> tuple[int, int]:
    """(ready messages, consumers) of a queue that exists, on the test's channel."""
    q = await ch.declare_queue(name, passive=True)
    res = q.declaration_result
    return res.message_count or 0, res.consumer_count or 0


def queue_state(amqp_url: str, queue: str) -> tuple[int, int] | None:
    """(ready messages, consumers), or None when the queue does not exist (blocking, a connection
    of its own)."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ok = conn.channel().queue_declare(queue, passive=True).method
        return ok.message_count, ok.consumer_count
    except pika.exceptions.ChannelClosedByBroker:
        return None
    finally:
        if conn.is_open:
            conn.close()
