"""Producer test helpers: a unique topology per test, raw aio-pika reads of what was published, the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractIncomingMessage

from sluice.topology import Topology

HERE = Path(__file__).parent
SLUICE = str(Path(sys.executable).with_name("sluice"))
QUEUES = ("default", "mail", "alt")  # every sluice queue name these tests publish to


@dataclass
class Broker:
    url: str
    prefix: str
    queue_type: Literal["quorum", "classic"] = "quorum"

    @property
    def topology(self) -> Topology:
        return Topology(prefix=self.prefix, queue_type=self.queue_type)

    async def declare(self, *queues: str) -> None:
        """The topology and the named work queues, so 'nothing was published' can be counted."""
        conn = await aio_pika.connect(self.url)
        async with conn:
            ch = await conn.channel()
            await self.topology.declare_base(ch)
            for q in queues:
                await self.topology.declare_queue(ch, q)

    async def count(self, queue: str = "default") -> int | None:
        """Messages ready in a work queue; None if the queue does not exist."""
        conn = await aio_pika.connect(self.url)
        async with conn:
            ch = await conn.channel()
            try:
                q = await ch.declare_queue(self.topology.queue(queue), passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return None
            return q.declaration_result.message_count or 0

    async def take(
        self, n: int, queue: str = "default", deadline: float = 20.0
    ) -> list[AbstractIncomingMessage]:
        """Exactly the next ``n`` messages of a work queue (acked); fails if fewer arrive in time or
        more are there."""
        got: list[AbstractIncomingMessage] = []
        conn = await aio_pika.connect(self.url)
        async with conn:
            ch = await conn.channel()
            q = await ch.declare_queue(self.topology.queue(queue), passive=True)
            async with asyncio.timeout(deadline):
                while len(got) < n:
                    msg = await q.get(no_ack=True, fail=False)
                    if msg is None:
                        await asyncio.sleep(0.05)
                    else:
                        got.append(msg)
            extra = await q.get(no_ack=True, fail=False)
            assert extra is None, f"more than {n} messages in {queue}"
        return got

    async def cleanup(self) -> None:
        conn = await aio_pika.connect(self.url)
        async with conn:
            for name in [*(self.topology.queue(q) for q in QUEUES), self.topology.dead_queue]:
                ch = await conn.channel()
                with contextlib.suppress(aiormq.exceptions.AMQPError):
                    await ch.queue_delete(name)
            for ex in (self.topology.tasks_exchange, self.topology.dead_exchange):
                ch = await conn.channel()
                with contextlib.suppress(aiormq.exceptions.AMQPError):
                    await ch.exchange_delete(ex)


@dataclass
class Result:
    code: int
    out: str
    err: str


async def run_cli(*args: str, env: dict[str, str], stdin: str | None = None, limit_s: float = 60) -> Result:
    """``sluice ARGS`` as a subprocess."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    full.update({"PYTHONPATH": str(HERE), "COLUMNS": "200", **env})
    proc = await asyncio.create_subprocess_exec(
        SLUICE,
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=full,
    )
    try:
        async with asyncio.timeout(limit_s):
            out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    finally:
        if proc.returncode is None:  # timed out: never leave the child running
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())
