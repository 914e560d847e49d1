"""A broker that takes publishes and never confirms them: ``sluice publish`` still ends, on time.

A bulk publish bounds every confirm by ``publish_timeout`` with one watchdog for its whole window (not
a timer per publish: sluice._publish_window). Here a private RabbitMQ node (never the default one) is
put under a memory alarm, so it blocks publishing connections and confirms nothing, and the installed
console script must fail every task as not confirmed within 1 to 1.5 ``publish_timeout`` (plus start-up
and closing), exit 1, and say why on one line: without the watchdog it would wait forever.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from support.rabbit_node import RabbitNode, private_node
from support.workers import SLUICE, worker_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

TIMEOUT = 2.0


@pytest.fixture(scope="module")
def node() -> Iterator[RabbitNode]:
    """A RabbitMQ node of this module's own (own name, port, data): stopped and deleted after."""
    with private_node() as n:
        yield n


async def test_no_confirm_fails_within_the_publish_timeout(node: RabbitNode, unique: str) -> None:
    env = worker_env(node.url, None, unique, SLUICE_PUBLISH_TIMEOUT=f"{TIMEOUT:g}")
    # the queue and exchanges exist before the alarm (declaring is not what is measured)
    setup = await asyncio.create_subprocess_exec(SLUICE, "publish", "demo.noop", "--create-queue", env=env,
                                                 stdout=asyncio.subprocess.DEVNULL)  # fmt: skip
    assert await setup.wait() == 0
    node.ctl("set_vm_memory_high_watermark", "0")
    try:
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            SLUICE, "publish", "demo.noop", "--count", "300", "--give-up-after", "0",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
        took = time.monotonic() - started
    finally:
        node.ctl("set_vm_memory_high_watermark", "0.4")
    text = err.decode()
    assert proc.returncode == 1, text
    assert "Traceback" not in text
    assert out == b""  # nothing was confirmed, so no id was printed
    assert f"no confirm within {TIMEOUT:g}s" in text
    assert "published 0, failed 300" in text
    # 1 to 1.5 publish_timeout for the watchdog, plus the interpreter's start and the closing handshake
    # with a blocked broker (bounded by the same timeout)
    assert TIMEOUT <= took <= 3 * TIMEOUT + 6, took
