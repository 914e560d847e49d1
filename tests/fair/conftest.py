"""The fair-share tests' broker names: the queues they declare under the test's prefix are deleted after
it (the shared fixture knows only the default queue, the DLQ and the delay tiers)."""

from __future__ import annotations

from collections.abc import Iterator

import pika
import pytest
from fair_tasks import SHARDS

from sluice.fair import sub_queues

QUEUES = ("fairq", *sub_queues("fairq", SHARDS), "plainq")


@pytest.fixture
def prefix(amqp_url: str, unique: str) -> Iterator[str]:
    """The test's prefix; its fair and plain work queues are deleted after the test."""
    yield unique
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        for q in QUEUES:
            ch = conn.channel()
            ch.queue_delete(f"{unique}.q.{q}")
            ch.close()
    finally:
        conn.close()
