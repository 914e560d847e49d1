"""``sluice publish TASK -`` is a stream: read, checked, published and reported as it goes.

Each test runs the installed console script with a pipe on its stdin that the test keeps open, so
"the ids come before the input ends" is observed, not inferred. (Peak memory on a million lines is a
benchmark, bench/publish_stream.py, not a test.)
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from producer_helpers import HERE, SLUICE, Broker

WAIT = 30.0  # seconds: bounded waits on the child's output


@asynccontextmanager
async def publishing(
    broker: Broker, *args: str, **extra_env: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``sluice publish ARGS`` with pipes; killed if the test leaves it running."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    env |= {"PYTHONPATH": path, "SLUICE_AMQP_URL": broker.url, "SLUICE_PREFIX": broker.prefix, **extra_env}
    proc = await asyncio.create_subprocess_exec(
        SLUICE,
        "publish",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def send(proc: asyncio.subprocess.Process, lines: list[dict[str, object]] | bytes) -> None:
    assert proc.stdin is not None
    data = lines if isinstance(lines, bytes) else "".join(json.dumps(o) + "\n" for o in lines).encode()
    proc.stdin.write(data)
    await proc.stdin.drain()


async def read_lines(proc: asyncio.subprocess.Process, n: int) -> list[str]:
    assert proc.stdout is not None
    async with asyncio.timeout(WAIT):
        return [(await proc.stdout.readline()).decode().strip() for _ in range(n)]


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    assert proc.stdin is not None
    proc.stdin.close()
    async with asyncio.timeout(WAIT):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_ids_are_printed_while_the_input_is_still_open(broker: Broker) -> None:
    """The regression: every line used to be read (to EOF) before the first publish."""
    async with publishing(broker, "demo.echo", "-") as proc:
        await send(proc, [{"n": 1}, {"n": 2}, {"n": 3}])
        first = await read_lines(proc, 3)  # stdin is still open
        await send(proc, [{"n": 4}])
        more = await read_lines(proc, 1)
        code, rest, err = await finish(proc)
    assert code == 0, err
    assert rest == ""
    ids = first + more
    assert len(set(ids)) == 4
    assert "published 4, failed 0, republished 0" in err
    by_id = {m.message_id: json.loads(m.body) for m in await broker.take(4)}
    assert [by_id[i] for i in ids] == [{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}]  # input order


async def test_json_document_streams_its_ids(broker: Broker) -> None:
    """--json is still one document with the keys published, failed, ids (and failures), but its ids
    are written as they are confirmed, not gathered to the end."""
    async with publishing(broker, "demo.echo", "-", "--json") as proc:
        await send(proc, [{"n": 1}, {"n": 2}])
        assert proc.stdout is not None
        async with asyncio.timeout(WAIT):
            head = await proc.stdout.readuntil(b'", "')  # the first id, and the second begun
        assert head.startswith(b'{"ids": ["')
        await send(proc, b'{"n": 3}\n{"oops"\n')
        code, rest, err = await finish(proc)
    assert code == 1
    doc = json.loads(head + rest.encode())
    assert doc["published"] == 3
    assert doc["failed"] == 1 and doc["invalid"] == 1 and doc["not_confirmed"] == 0
    assert doc["republished"] == 0 and doc["gave_up"] is False
    assert len(doc["ids"]) == 3
    (failure,) = doc["failures"]
    assert failure["index"] == 3 and failure["where"] == "stdin line 4" and failure["id"] is None
    assert failure["error"].startswith("stdin line 4: not valid JSON")
    assert doc["failures_omitted"] == 0
    assert "sluice: error: stdin line 4: not valid JSON" in err
    by_id = {m.message_id: json.loads(m.body) for m in await broker.take(3)}
    assert [by_id[i] for i in doc["ids"]] == [{"n": 1}, {"n": 2}, {"n": 3}]


async def test_an_endless_line_and_bad_bytes_are_refused_by_line_number(broker: Broker) -> None:
    """A line longer than four times the size cap is refused without being held in memory; bytes that
    are not UTF-8 are refused; the lines around them are published."""
    async with publishing(broker, "demo.echo", "-", SLUICE_MAX_MESSAGE_BYTES="1024") as proc:
        await send(proc, [{"n": 1}])
        await send(proc, b'{"blob": "' + b"x" * 3_000_000 + b'"}\n')  # 3 MB in one line
        await send(proc, b'{"s": "\xff\xfe"}\n')
        await send(proc, [{"n": 4}])
        code, out, err = await finish(proc)
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("sluice: error: ")]
    assert errors == [
        "sluice: error: stdin line 2: longer than 8192 bytes",
        "sluice: error: stdin line 3: not UTF-8 text",
    ]
    assert "published 2, failed 2" in err
    assert len(out.split()) == 2
    bodies = sorted(json.loads(m.body)["n"] for m in await broker.take(2))
    assert bodies == [1, 4]


async def test_count_repeats_every_line(broker: Broker) -> None:
    async with publishing(broker, "demo.echo", "-", "--count", "3") as proc:
        await send(proc, [{"n": 1}, {"n": 2}])
        code, out, err = await finish(proc)
    assert code == 0, err
    ids = out.split()
    assert len(set(ids)) == 6
    by_id = {m.message_id: json.loads(m.body) for m in await broker.take(6)}
    assert [by_id[i]["n"] for i in ids] == [1, 1, 1, 2, 2, 2]


async def test_an_empty_stream_publishes_nothing(broker: Broker) -> None:
    async with publishing(broker, "demo.echo", "-") as proc:
        await send(proc, b"\n  \n")
        code, out, err = await finish(proc)
    assert (code, out) == (0, "")
    assert err.splitlines() == ["published 0, failed 0: no tasks in the input"]
