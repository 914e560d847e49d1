"""A batch the broker confirms only in part: the answer says exactly which tasks failed.

A RabbitMQ policy caps the test's (classic) work queue at 5 messages; the queue's ``reject-publish``
overflow makes the broker really nack every publish past the fifth (no mock involved). A classic queue
because a quorum queue applies the cap one message late.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest
from producer_helpers import Broker
from test_http import api

from sluice.settings import Settings
from support.brokerctl import rabbitmqctl_argv

CAP = 5


@pytest.fixture
def capped(unique: str) -> Iterator[str]:
    name = f"{unique}-cap"
    pattern = rf"^{unique}\.q\.default$"
    definition = f'{{"max-length": {CAP}, "overflow": "reject-publish"}}'
    subprocess.run(
        [*rabbitmqctl_argv(), "-q", "set_policy", "--apply-to", "queues", name, pattern, definition],
        check=True,
        capture_output=True,
        timeout=60,
    )
    try:
        yield name
    finally:
        subprocess.run([*rabbitmqctl_argv(), "-q", "clear_policy", name], capture_output=True, timeout=60)


def policy_applied(queue: str, policy: str, within: float = 20) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        out = subprocess.run(
            [*rabbitmqctl_argv(), "-q", "list_queues", "name", "policy"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        if any(line.split() == [queue, policy] for line in out.splitlines()):
            return True
        time.sleep(0.2)
    return False


async def test_partially_confirmed_batch_names_the_failed_tasks(
    settings: Settings, broker: Broker, capped: str
) -> None:
    settings = settings.model_copy(update={"queue_type": "classic"})
    broker.queue_type = "classic"
    await broker.declare("default")
    assert policy_applied(f"{settings.prefix}.q.default", capped), "the cap policy never applied"
    async with api(settings) as c:
        r = await c.post(
            "/v1/tasks/batch", json={"tasks": [{"task": "demo.noop", "payload": {"i": i}} for i in range(12)]}
        )
    assert r.status_code == 503, r.text
    assert "Retry-After" in r.headers
    body = r.json()
    failed = body["failed"]
    assert len(failed) == 12 - CAP
    assert len(body["confirmed"]) == CAP
    assert sorted(body["confirmed"] + [f["index"] for f in failed]) == list(range(12))
    assert len({f["id"] for f in failed}) == len(failed)
    assert all(f["error"] for f in failed)
    kept = await broker.take(CAP)
    confirmed_ids = {body["ids"][i] for i in body["confirmed"]}
    assert confirmed_ids.isdisjoint(f["id"] for f in failed)
    assert {m.message_id for m in kept} == confirmed_ids
