"""``sluice producer`` as a real process: uvicorn on a free port, a task through it, SIGTERM drains."""

from __future__ import annotations

import asyncio
import os
import signal
import socket

import httpx
from producer_helpers import HERE, SLUICE, Broker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_serves_and_exits_cleanly_on_sigterm(broker: Broker) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update(SLUICE_AMQP_URL=broker.url, SLUICE_PREFIX=broker.prefix, PYTHONPATH=str(HERE))
    proc = await asyncio.create_subprocess_exec(
        SLUICE,
        "producer",
        "--port",
        str(port),
        "--tasks",
        "producer_taskdefs",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            async with asyncio.timeout(30):
                while True:
                    try:
                        if (await c.get("/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert proc.returncode is None, "the producer exited"
                    await asyncio.sleep(0.1)
            r = await c.post("/v1/tasks", json={"task": "demo.greet", "payload": {"who": "bo"}})
            assert r.status_code == 202, r.text
            assert r.json()["queue"] == "mail"
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert b"Traceback" not in err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    (msg,) = await broker.take(1, queue="mail")
    assert msg.message_id == r.json()["id"]


async def test_bad_option_is_one_line() -> None:
    proc = await asyncio.create_subprocess_exec(
        SLUICE, "producer", "--port", "0", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode == 2
    assert out == b""
    lines = err.decode().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("sluice: error: ")
    assert "--port" in lines[0]
