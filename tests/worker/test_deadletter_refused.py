"""When the dead-letter copy is not confirmed, the worker rejects the original (no requeue) so the broker's
own dead-lettering moves it (quorum work queues: at-least-once, held by the broker until the DLQ takes it),
and goes on.

RabbitMQ 3.10 retries an at-least-once dead-lettering the target refused only after
``dead_letter_worker_publisher_confirm_timeout`` (180 s here), too long for this suite, so the test checks
the worker's side: the rejection, the batched acks not stalled by it, and the next task run."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import aio_pika
import pytest

from sluice.protocol import H_ATTEMPT, H_QUEUE, H_TASK, H_VERSION
from sluice.settings import Settings
from sluice.topology import Topology
from sluice_worker.options import load_registry
from support.brokerctl import rabbitmqctl_argv

from .conftest import eventually, queue_counts
from .inproc import running_worker


def rabbitmqctl(*args: str) -> None:
    subprocess.run([*rabbitmqctl_argv(), *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def full_dlq(unique: str) -> Iterator[Any]:
    """A policy making {prefix}.dlq refuse publishes once it is over one message (max-length 1,
    reject-publish); ``lift()`` ends it."""
    name = f"{unique}-dlq-full"
    rabbitmqctl(
        "set_policy", "--apply-to", "queues", "--priority", "100", name, rf"^{unique}\.dlq$",
        json.dumps({"max-length": 1, "overflow": "reject-publish"}),
    )  # fmt: skip
    lifted = False

    def lift() -> None:
        nonlocal lifted
        rabbitmqctl("clear_policy", name)
        lifted = True

    yield lift
    if not lifted:
        rabbitmqctl("clear_policy", name)


async def test_an_unconfirmed_dead_letter_copy_falls_back_to_the_brokers_dead_lettering(
    channel: aio_pika.abc.AbstractChannel,
    settings: Settings,
    unique: str,
    full_dlq: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # prefetch 4: a delivery left neither acked nor settled would stall the batched acks, and with them
    # the broker's deliveries, within a few messages
    settings = settings.model_copy(update={"prefetch": 4})
    topo = Topology.from_settings(settings)
    async with running_worker(channel, settings, load_registry([])):
        # the DLQ full: a quorum queue's limit is soft (it takes one past it), so two fillers
        for _ in range(2):
            await channel.default_exchange.publish(aio_pika.Message(b"filler"), routing_key=topo.dead_queue)

        async def filled() -> bool:
            return (await queue_counts(channel, topo.dead_queue))[0] == 2

        await eventually(filled, 10, "the filler in the DLQ")
        ex = await channel.get_exchange(topo.tasks_exchange)
        hdrs = {H_VERSION: 1, H_TASK: "demo.fail", H_ATTEMPT: 1, H_QUEUE: "default"}
        await ex.publish(
            aio_pika.Message(b'{"message": "refused"}', headers=hdrs, message_id="m1"), "default"
        )

        async def rejected() -> bool:
            return "dead-letter copy not confirmed" in caplog.text

        await eventually(rejected, 20, "the worker to reject the delivery")
        assert (await queue_counts(channel, topo.dead_queue))[0] == 2  # just the fillers
        full_dlq()
        # the worker goes on, its acks not held up by the rejected delivery
        body = json.dumps({"seconds": 0}).encode()
        for i in range(12):
            sleep_hdrs = {**hdrs, H_TASK: "demo.sleep"}
            await ex.publish(aio_pika.Message(body, headers=sleep_hdrs, message_id=f"ok{i}"), "default")

        async def work_queue_empty() -> bool:
            return (await queue_counts(channel, topo.queue("default")))[0] == 0

        await eventually(work_queue_empty, 10, "the valid tasks taken")
    # with the worker gone nothing comes back: the valid tasks were acked, the rejected one is the broker's
    assert (await queue_counts(channel, topo.queue("default")))[0] == 0
    assert "rejecting the delivery" in caplog.text
