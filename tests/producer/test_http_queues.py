"""Which queues and tasks the HTTP API accepts, through a real ``sluice producer`` process.

A request never makes the broker create a queue: only the configured ones (the default queue,
``SLUICE_QUEUES``, the queues of the tasks the producer knows) may be created, a queue that exists
already may be used, anything else is a 422 naming the allowed queues. The built-in demo tasks are
known to the producer, so a payload that does not fit them is a 422 instead of a dead letter later.

``running_producer`` here is shared by the other test_http_* files that need a real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import aiormq.exceptions
import httpx
from producer_helpers import HERE, SLUICE, Broker

# every queue name these tests may make a producer create (deleted after each test)
TEST_QUEUES = ("0", "w", "a", "b", "c", "alt", "mail", "default")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def producer_env(broker: Broker, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    # PYTHONPATH kept after the test modules: running these tests against an older tree works
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    env.update(SLUICE_AMQP_URL=broker.url, SLUICE_PREFIX=broker.prefix, PYTHONPATH=path, **extra)
    return env


@dataclass
class Running:
    url: str
    proc: asyncio.subprocess.Process
    log: Path

    def stderr(self) -> str:
        """What the process wrote on stderr so far (its log)."""
        return self.log.read_text(errors="replace")

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=20)


@asynccontextmanager
async def running_producer(
    broker: Broker, log: Path, *args: str, host: str = "127.0.0.1", env: dict[str, str] | None = None
) -> AsyncIterator[Running]:
    """``sluice producer --host HOST --port P ARGS`` until it answers /readyz 200; SIGTERM after (exit 0)."""
    port = free_port()
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            SLUICE,
            "producer",
            "--host",
            host,
            "--port",
            str(port),
            *args,
            env=producer_env(broker, **(env or {})),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=err,
        )
    running = Running(f"http://127.0.0.1:{port}", proc, log)
    try:
        async with httpx.AsyncClient(base_url=running.url) as c:
            async with asyncio.timeout(30):
                while True:
                    with contextlib.suppress(httpx.TransportError):
                        if (await c.get("/readyz")).status_code == 200:
                            break
                    assert proc.returncode is None, f"the producer exited: {running.stderr()}"
                    await asyncio.sleep(0.1)
        yield running
        if proc.returncode is None:  # a test may have stopped it itself
            proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            await proc.wait()
        assert proc.returncode == 0, running.stderr()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await delete_queues(broker, TEST_QUEUES)


async def run_until_exit(
    *argv: str, env: dict[str, str], cwd: Path | None = None, limit_s: float = 30
) -> tuple[int, bytes, bytes]:
    """A process that must end by itself within ``limit_s``: (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(limit_s):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out, err


async def delete_queues(broker: Broker, names: Sequence[str]) -> None:
    conn = await aio_pika.connect(broker.url)
    async with conn:
        for name in names:
            ch = await conn.channel()
            with contextlib.suppress(aiormq.exceptions.AMQPError):
                await ch.queue_delete(broker.topology.queue(name))


async def test_unknown_queues_are_refused_and_never_created(broker: Broker, tmp_path: Path) -> None:
    async with running_producer(broker, tmp_path / "producer.log") as server, server.client() as c:
        zero = await c.post("/v1/tasks", json={"task": "demo.noop", "queue": "0"})
        w = await c.post("/v1/tasks", json={"task": "demo.noop", "queue": "w"})
        batch = await c.post(
            "/v1/tasks/batch",
            json={"tasks": [{"task": "demo.noop"}, {"task": "demo.noop", "queue": "w"}]},
        )
        assert await broker.count("0") is None, "the request created queue 0"
        assert await broker.count("w") is None, "the request created queue w"
        assert not await broker.count("default"), "a refused batch published something"
    for r, name in ((zero, "0"), (w, "w")):
        assert r.status_code == 422, r.text
        (err,) = r.json()["detail"]
        assert err["loc"] == ["body", "queue"]
        assert err["type"] == "unknown_queue"
        assert err["ctx"]["allowed"] == ["default"]
        assert f"unknown queue {name!r}" in err["msg"] and "'default'" in err["msg"]
    assert batch.status_code == 422, batch.text
    assert [e["loc"] for e in batch.json()["detail"]] == [["body", "tasks", 1, "queue"]]


async def test_configured_existing_and_task_queues_are_allowed(broker: Broker, tmp_path: Path) -> None:
    await broker.declare("alt")  # exists on the broker, configured nowhere
    env = {"SLUICE_QUEUES": "a,b"}
    async with (
        running_producer(broker, tmp_path / "p.log", "--tasks", "producer_taskdefs", env=env) as server,
        server.client() as c,
    ):
        a = await c.post("/v1/tasks", json={"task": "demo.noop", "queue": "a"})
        alt = await c.post("/v1/tasks", json={"task": "demo.noop", "queue": "alt"})
        mail = await c.post("/v1/tasks", json={"task": "demo.greet", "payload": {"who": "ada"}})
        other = await c.post("/v1/tasks", json={"task": "demo.noop", "queue": "c"})
        assert [r.status_code for r in (a, alt, mail)] == [202, 202, 202], [a.text, alt.text, mail.text]
        assert mail.json()["queue"] == "mail"  # --tasks: the task's queue may be created
        for queue, r in (("a", a), ("alt", alt), ("mail", mail)):
            (msg,) = await broker.take(1, queue=queue)
            assert msg.message_id == r.json()["id"]
        assert other.status_code == 422, other.text
        assert other.json()["detail"][0]["ctx"]["allowed"] == ["a", "b", "default", "mail"]
        assert await broker.count("c") is None


async def test_demo_task_payloads_are_validated(broker: Broker, tmp_path: Path) -> None:
    async with running_producer(broker, tmp_path / "p.log") as server, server.client() as c:
        bad = await c.post("/v1/tasks", json={"task": "demo.sleep", "payload": {"seconds": "abc"}})
        text = await c.post("/v1/tasks", json={"task": "demo.sleep", "payload": {"seconds": "1"}})
        too_long = await c.post("/v1/tasks", json={"task": "demo.sleep", "payload": {"seconds": 7200}})
        flaky = await c.post("/v1/tasks", json={"task": "demo.flaky", "payload": {"probability": 2}})
        batch = await c.post(
            "/v1/tasks/batch",
            json={"tasks": [{"task": "demo.noop"}, {"task": "demo.fail", "payload": {"message": 5}}]},
        )
        assert not await broker.count("default"), "a refused task was published"
        ok = await c.post("/v1/tasks", json={"task": "demo.sleep", "payload": {"seconds": 0.01}})
        noop = await c.post("/v1/tasks", json={"task": "demo.noop", "payload": {"anything": [1]}})
        assert ok.status_code == 202 and noop.status_code == 202, [ok.text, noop.text]
        assert {m.message_id for m in await broker.take(2)} == {ok.json()["id"], noop.json()["id"]}
    for r in (bad, text, too_long):
        assert r.status_code == 422, r.text
        assert [e["loc"] for e in r.json()["detail"]] == [["body", "payload", "seconds"]]
    assert flaky.status_code == 422, flaky.text
    assert batch.status_code == 422, batch.text
    assert [e["loc"] for e in batch.json()["detail"]] == [["body", "tasks", 1, "payload", "message"]]


async def test_strict_mode_knows_the_demo_tasks(broker: Broker, tmp_path: Path) -> None:
    args = ("--tasks", "producer_taskdefs", "--strict")
    async with running_producer(broker, tmp_path / "p.log", *args) as server, server.client() as c:
        demo = await c.post("/v1/tasks", json={"task": "demo.noop"})
        greet = await c.post("/v1/tasks", json={"task": "demo.greet", "payload": {"who": "bo"}})
        unknown = await c.post("/v1/tasks", json={"task": "demo.other"})
        assert demo.status_code == 202 and greet.status_code == 202, [demo.text, greet.text]
        assert unknown.status_code == 422 and unknown.json()["detail"][0]["type"] == "unknown_task"
        (msg,) = await broker.take(1)
        assert msg.message_id == demo.json()["id"]
