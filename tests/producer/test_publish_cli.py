"""``sluice publish`` end to end: a real subprocess, a real RabbitMQ, the messages read back raw."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aio_pika
import pytest
from producer_helpers import Broker, run_cli

from sluice import protocol as p


def env(broker: Broker, **extra: str) -> dict[str, str]:
    return {"SLUICE_AMQP_URL": broker.url, "SLUICE_PREFIX": broker.prefix, **extra}


def ids_of(out: str) -> list[str]:
    return [line for line in out.splitlines() if line]


async def test_single_task_with_every_header(broker: Broker) -> None:
    before = p.now_ms()
    r = await run_cli(
        "publish",
        "demo.echo",
        "--payload",
        '{"n": 1, "s": "ünï"}',
        "--idempotency-key",
        "k-1",
        "--trace-id",
        "tr-9",
        env=env(broker),
    )
    assert r.code == 0, r.err
    (task_id,) = ids_of(r.out)
    assert "published 1, failed 0" in r.err
    (msg,) = await broker.take(1)
    assert msg.message_id == task_id
    assert json.loads(msg.body) == {"n": 1, "s": "ünï"}
    assert msg.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert msg.content_type == "application/json"
    h = msg.headers
    assert h[p.H_TASK] == "demo.echo"
    assert h[p.H_ATTEMPT] == 1
    assert h[p.H_VERSION] == p.PROTOCOL_VERSION
    assert h[p.H_QUEUE] == "default"
    assert h[p.H_IDEMPOTENCY_KEY] == "k-1"
    assert h[p.H_TRACE_ID] == "tr-9"
    created = h[p.H_CREATED_AT]
    assert isinstance(created, int)
    assert before <= created <= p.now_ms()
    # and the contract's own decoder accepts it
    decoded = p.decode(msg.body, msg.headers, msg.message_id, 1 << 20)
    assert decoded.idempotency_key == "k-1"


async def test_count_publishes_distinct_ids_as_json(broker: Broker) -> None:
    r = await run_cli(
        "publish", "demo.echo", "--payload", '{"x": 2}', "--count", "50", "--json", env=env(broker)
    )
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["published"] == 50
    assert doc["failed"] == 0
    assert doc["failures"] == []
    assert len(set(doc["ids"])) == 50
    msgs = await broker.take(50)
    assert {m.message_id for m in msgs} == set(doc["ids"])
    assert all(json.loads(m.body) == {"x": 2} for m in msgs)
    assert all(m.headers[p.H_TASK] == "demo.echo" for m in msgs)


async def test_ndjson_from_stdin(broker: Broker) -> None:
    lines = "".join(json.dumps({"i": i}) + "\n" for i in range(200))
    r = await run_cli("publish", "demo.bulk", "-", env=env(broker), stdin=lines)
    assert r.code == 0, r.err
    ids = ids_of(r.out)
    assert len(ids) == 200
    assert len(set(ids)) == 200
    msgs = await broker.take(200)
    by_id = {m.message_id: json.loads(m.body) for m in msgs}
    # the printed ids are in input order: id k carries line k's payload
    assert [by_id[i] for i in ids] == [{"i": i} for i in range(200)]
    assert all(m.delivery_mode == aio_pika.DeliveryMode.PERSISTENT for m in msgs)


async def test_payload_file(broker: Broker, tmp_path: Path) -> None:
    f = tmp_path / "payload.json"
    f.write_text('{\n  "file": true,\n  "list": [1, 2]\n}\n')
    r = await run_cli("publish", "demo.file", "--payload-file", str(f), env=env(broker))
    assert r.code == 0, r.err
    (task_id,) = ids_of(r.out)
    (msg,) = await broker.take(1)
    assert msg.message_id == task_id
    assert json.loads(msg.body) == {"file": True, "list": [1, 2]}


async def test_envelopes_choose_task_and_queue(broker: Broker) -> None:
    lines = (
        json.dumps({"task": "a.one", "payload": {"k": 1}, "queue": "alt", "idempotency_key": "e1"})
        + "\n"
        + json.dumps({"payload": {"k": 2}})
        + "\n"
    )
    # "alt" is a queue the producer may create because SLUICE_QUEUES names it
    r = await run_cli(
        "publish", "a.fallback", "-", "--envelopes", env=env(broker, SLUICE_QUEUES="alt"), stdin=lines
    )
    assert r.code == 0, r.err
    first, second = ids_of(r.out)
    (alt,) = await broker.take(1, queue="alt")
    assert (alt.message_id, alt.headers[p.H_TASK], alt.headers[p.H_IDEMPOTENCY_KEY]) == (first, "a.one", "e1")
    assert alt.headers[p.H_QUEUE] == "alt"
    (default,) = await broker.take(1)
    assert (default.message_id, default.headers[p.H_TASK]) == (second, "a.fallback")


async def test_tasks_module_validates_and_routes(broker: Broker) -> None:
    e = env(broker)
    bad = await run_cli(
        "publish", "demo.greet", "--payload", '{"who": ""}', "--tasks", "producer_taskdefs", env=e
    )
    assert bad.code == 1
    assert "payload does not fit task 'demo.greet'" in bad.err
    assert "who" in bad.err
    assert await broker.count("mail") is None  # checked before connecting: not even declared

    ok = await run_cli(
        "publish", "demo.greet", "--payload", '{"who": "ada"}', "--tasks", "producer_taskdefs", env=e
    )
    assert ok.code == 0, ok.err
    (msg,) = await broker.take(1, queue="mail")  # the task's own queue
    assert msg.message_id == ids_of(ok.out)[0]

    strict = await run_cli("publish", "demo.nope", "--tasks", "producer_taskdefs", "--strict", env=e)
    assert strict.code == 1
    assert "unknown task 'demo.nope'" in strict.err


OVERSIZED = json.dumps({"blob": "x" * 3000})


@pytest.mark.parametrize(
    ("case", "args", "stdin", "extra_env", "expect"),
    [
        ("bad json", ["--payload", '{"a": '], None, {}, "--payload: not valid JSON"),
        ("not an object", ["--payload", "[1, 2]"], None, {}, "expected a JSON object, got an array"),
        ("unknown option", ["--frobnicate"], None, {}, "No such option: --frobnicate"),
        ("two sources", ["--payload", "{}", "-"], "{}\n", {}, "cannot be used together"),
        (
            "oversized",
            ["--payload", OVERSIZED],
            None,
            {"SLUICE_MAX_MESSAGE_BYTES": "2048"},
            "over the cap of 2048",
        ),
        ("bad queue", ["--queue", "no/slash"], None, {}, "bad queue name"),
        ("zero count", ["--count", "0"], None, {}, "--count 0: must be at least 1"),
        ("bad setting", [], None, {"SLUICE_PUBLISH_WINDOW": "0"}, "invalid setting publish_window"),
        ("negative give-up", ["--give-up-after", "-1"], None, {}, "--give-up-after -1.0: must be 0 or more"),
        ("bad option value", ["--idempotency-key", ""], None, {}, "bad option value: idempotency_key"),
    ],
)
async def test_bad_input_is_one_line_and_publishes_nothing(
    broker: Broker, case: str, args: list[str], stdin: str | None, extra_env: dict[str, str], expect: str
) -> None:
    await broker.declare("default")
    r = await run_cli("publish", "demo.echo", *args, env=env(broker, **extra_env), stdin=stdin)
    assert r.code in (1, 2), case
    assert r.out == ""
    err_lines = r.err.splitlines()
    assert len(err_lines) == 1, r.err
    assert err_lines[0].startswith("sluice: error: ")
    assert expect in err_lines[0]
    assert "Traceback" not in r.err
    assert await broker.count("default") == 0


async def test_unreachable_broker_fails_fast(broker: Broker) -> None:
    start = time.monotonic()
    r = await run_cli(
        "publish",
        "demo.echo",
        env=env(broker, SLUICE_AMQP_URL="amqp://guest:guest@127.0.0.1:1/", SLUICE_CONNECT_TIMEOUT="3"),
    )
    elapsed = time.monotonic() - start
    assert r.code == 1
    assert r.out == ""
    assert r.err.splitlines() == [
        "sluice: error: cannot reach RabbitMQ at amqp://guest:***@127.0.0.1:1/: [Errno 111] Connection refused"
    ]
    assert elapsed < 3 + 5  # the connect timeout, plus interpreter start-up on a busy machine


async def test_a_broker_that_never_answers_fails_within_the_connect_timeout(broker: Broker) -> None:
    """A port that accepts TCP but never speaks AMQP: one line, exit 1, within SLUICE_CONNECT_TIMEOUT.

    The regression: the robust connection's reconnect task swallowed its cancellation, so the command
    printed its error only if at all and never exited."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # held open, never answered

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        start = time.monotonic()
        r = await run_cli(
            "publish",
            "demo.echo",
            env=env(
                broker, SLUICE_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{port}/", SLUICE_CONNECT_TIMEOUT="2"
            ),
            limit_s=30,
        )
        elapsed = time.monotonic() - start
    finally:
        for w in accepted:
            w.close()
        server.close()
        await server.wait_closed()
    assert r.code == 1
    assert r.out == ""
    assert r.err.splitlines() == [
        f"sluice: error: RabbitMQ at amqp://guest:***@127.0.0.1:{port}/ did not answer within 2s"
    ]
    assert elapsed < 2 + 8  # the connect timeout, plus interpreter start-up and closing on a busy machine


async def test_bad_ndjson_lines_are_named_and_the_rest_published(broker: Broker) -> None:
    """A stream cannot be checked before it is published: a bad line is named and skipped, the good
    lines are published (ids in input order), exit 1, the summary counts the bad ones."""
    lines = '{"ok": 1}\n{"ok": 2}\n{"broken": \n{"ok": 4}\n' + OVERSIZED + "\n[5]\n"
    r = await run_cli(
        "publish", "demo.echo", "-", env=env(broker, SLUICE_MAX_MESSAGE_BYTES="2048"), stdin=lines
    )
    assert r.code == 1, r.err
    errors = [line for line in r.err.splitlines() if line.startswith("sluice: error: ")]
    assert [e.split(": ")[2] for e in errors] == ["stdin line 3", "stdin line 5", "stdin line 6"]
    assert "stdin line 3: not valid JSON" in errors[0]
    assert "stdin line 5: body is" in errors[1] and "over the cap of 2048" in errors[1]
    assert "stdin line 6: expected a JSON object, got an array" in errors[2]
    assert "published 3, failed 3, republished 0" in r.err
    assert "Traceback" not in r.err
    ids = ids_of(r.out)
    msgs = {m.message_id: json.loads(m.body) for m in await broker.take(3)}
    assert [msgs[i] for i in ids] == [{"ok": 1}, {"ok": 2}, {"ok": 4}]


async def test_check_validates_every_line_and_publishes_nothing(broker: Broker) -> None:
    """--check: the all-or-nothing way for a stream: every line checked, nothing published."""
    await broker.declare("default")
    lines = '{"ok": 1}\n{"broken": \n{"ok": 3}\n'
    r = await run_cli("publish", "demo.echo", "-", "--check", env=env(broker), stdin=lines)
    assert r.code == 1
    assert r.out == ""
    assert r.err.splitlines() == [
        "sluice: error: stdin line 2: not valid JSON (Expecting value at column 12)",
        "checked 3 tasks: 1 invalid; nothing published (--check)",
    ]
    good = await run_cli("publish", "demo.echo", "-", "--check", "--json", env=env(broker), stdin="{}\n{}\n")
    assert good.code == 0, good.err
    assert json.loads(good.out) == {"checked": 2, "valid": 2, "invalid": 0, "failures": []}
    assert await broker.count("default") == 0


async def test_unknown_queue_is_refused_and_not_created(broker: Broker) -> None:
    """A queue that is neither creatable (default queue, SLUICE_QUEUES, --tasks queues) nor on the
    broker: one line naming the allowed queues, exit 1, nothing published, no queue created."""
    r = await run_cli("publish", "demo.echo", "--queue", "alt", "-n", "3", env=env(broker))
    assert r.code == 1
    assert r.out == ""
    assert r.err.splitlines() == [
        "sluice: error: unknown queue 'alt': it does not exist and this producer may only create 'default'"
    ]
    assert await broker.count("alt") is None
    # with --tasks, the tasks' queues are creatable too, and named
    r = await run_cli(
        "publish", "demo.echo", "--queue", "alt", "--tasks", "producer_taskdefs", env=env(broker)
    )
    assert r.code == 1
    assert "may only create 'default', 'mail'" in r.err
    assert await broker.count("alt") is None


async def test_unknown_queue_in_envelopes_fails_that_line_only(broker: Broker) -> None:
    lines = "".join(
        json.dumps({"payload": {"n": n}, **({"queue": "alt"} if n % 2 else {})}) + "\n" for n in range(6)
    )
    r = await run_cli("publish", "demo.echo", "-", "--envelopes", env=env(broker), stdin=lines)
    assert r.code == 1
    errors = [line for line in r.err.splitlines() if line.startswith("sluice: error: ")]
    assert errors == [
        f"sluice: error: stdin line {n}: unknown queue 'alt': it does not exist and this producer may "
        "only create 'default'"
        for n in (2, 4, 6)
    ]
    assert "published 3, failed 3" in r.err
    msgs = await broker.take(3)
    assert sorted(json.loads(m.body)["n"] for m in msgs) == [0, 2, 4]
    assert await broker.count("alt") is None


async def test_create_queue_declares_it_and_loses_nothing(broker: Broker) -> None:
    """--create-queue: a fresh queue name is declared before publishing, so `mandatory` never returns
    the task."""
    r = await run_cli("publish", "demo.echo", "--queue", "alt", "-n", "3", "--create-queue", env=env(broker))
    assert r.code == 0, r.err
    msgs = await broker.take(3, queue="alt")
    assert {m.message_id for m in msgs} == set(ids_of(r.out))


async def test_existing_and_configured_queues_are_allowed(broker: Broker) -> None:
    await broker.declare("mail")  # exists on the broker: published to, though not creatable
    r = await run_cli("publish", "demo.echo", "--queue", "mail", env=env(broker))
    assert r.code == 0, r.err
    (msg,) = await broker.take(1, queue="mail")
    assert msg.message_id == ids_of(r.out)[0]
    # SLUICE_QUEUES=alt,other: alt may be created
    r = await run_cli("publish", "demo.echo", "--queue", "alt", env=env(broker, SLUICE_QUEUES="alt,other"))
    assert r.code == 0, r.err
    (msg,) = await broker.take(1, queue="alt")
    assert msg.message_id == ids_of(r.out)[0]
