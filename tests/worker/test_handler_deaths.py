"""A handler that dies in any way never holds back the acks of later deliveries (issue 10, item 4).

Through the user's door: the installed ``sluice`` console script runs ``sluice worker --prefetch 16`` in a
subprocess with ``--tasks dying_tasks``. Deliveries whose handler dies (a CancelledError it raises itself,
a BaseException subclass, SystemExit, KeyboardInterrupt, GeneratorExit; async on the loop and sync in the
thread pool; with a policy and without; a hang cut by its timeout) are published before healthy ones:
every healthy one runs once, the dying ones are in the DLQ with a reason and their error (or retried per
their policy first), each is logged once, the work queue ends empty with nothing unacked, and the worker
keeps running (and drains with exit 0). The defect as reported (2 CancelledError tasks, then 200) has a
worker per case; every other way of dying shares one worker, each with its own task name.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pika
import pytest
import redis

from sluice.protocol import H_ATTEMPT, H_DEAD_DETAIL, H_DEAD_REASON, H_ERROR_TYPE, TaskMessage
from sluice.publisher import Publisher
from sluice.settings import Settings
from sluice.topology import Topology
from support.brokerctl import rabbitmqctl_argv

from .conftest import SLUICE_WORKER, WorkerProcess

HEALTHY = 200
PREFETCH = 16
WITHIN = 30.0  # seconds for a case to settle (it takes 1-3 s when nothing stalls)


def worker_for(start_worker: Callable[..., WorkerProcess], *args: str) -> WorkerProcess:
    """``sluice worker --tasks dying_tasks --prefetch 16`` (the installed console script)."""
    return start_worker("--tasks", "dying_tasks", "--prefetch", str(PREFETCH), *args, command=SLUICE_WORKER)


def unacked(queue: str) -> int | None:
    """Unacked deliveries of ``queue``, from ``rabbitmqctl`` (AMQP cannot tell them; about 1 s a call)."""
    out = subprocess.run(
        [
            *rabbitmqctl_argv(),
            "-q",
            "list_queues",
            "name",
            "messages_unacknowledged",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == queue:
            return int(parts[1])
    return None


def ready(amqp_url: str, queue: str) -> int:
    """Messages ready in ``queue`` (a passive declare)."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        conn.close()


def until(check: Callable[[], Any], what: str, w: WorkerProcess, within: float = WITHIN) -> Any:
    """Poll ``check`` until truthy; fail naming ``what`` (and the worker's log) after ``within`` s."""
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        if w.proc.poll() is not None:
            raise AssertionError(
                f"the worker exited ({w.proc.returncode}) before {what}:\n{w.stderr()[-3000:]}"
            )
        time.sleep(0.1)
    raise AssertionError(
        f"timed out after {within}s waiting for {what} (last: {last!r}):\n{w.stderr()[-3000:]}"
    )


def take_dead(amqp_url: str, dlq: str) -> dict[str, dict[str, Any]]:
    """Headers of every message in the DLQ (consumed), by message id."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ch = conn.channel()
        out = {}
        while True:
            method, props, _body = ch.basic_get(dlq, auto_ack=True)
            if method is None:
                return out
            out[props.message_id] = dict(props.headers or {})
    finally:
        conn.close()


def ran_all(r: redis.Redis, key: str, n: int) -> dict[int, int] | None:
    """Runs of each healthy task (n -> count) once all ``n`` of them ran, else None."""
    got = {int(k): int(v) for k, v in r.hgetall(f"{key}:ok").items()}
    return got if len(got) == n else None


def tries(r: redis.Redis, key: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in r.hgetall(f"{key}:tries").items()}


async def publish(settings: Settings, key: str, plan: list[tuple[str, int]]) -> dict[str, list[str]]:
    """Publish in order, for each (task, n) of ``plan``: ``n`` tasks (``die.ok`` ones numbered on from
    the previous ones). The ids of each dying task's messages, by task name."""
    ids: dict[str, list[str]] = {}
    healthy = 0
    async with Publisher(settings) as pub:
        for name, n in plan:
            if name == "die.ok":
                msgs = [TaskMessage(name, {"key": key, "n": healthy + i}) for i in range(n)]
                rep = await pub.publish_many(msgs)
                assert rep.confirmed == n
                healthy += n
            else:
                ids[name] = [await pub.publish(TaskMessage(name, {"key": key, "n": i})) for i in range(n)]
    return ids


def check_the_end(
    w: WorkerProcess,
    r: redis.Redis,
    amqp_url: str,
    topo: Topology,
    key: str,
    ids: dict[str, list[str]],
    healthy: int,
    expect: dict[str, tuple[str, int]],
) -> None:
    """Every healthy task ran once; each dying one is in the DLQ with its reason, error type and attempt
    (``expect``: task -> (error type, calls)); an empty queue with nothing unacked; each dying task
    logged once; the worker kept running and drains with exit 0, without a traceback."""
    dying = sum(len(v) for v in ids.values())
    got = until(lambda: ran_all(r, key, healthy), f"{healthy} healthy runs", w)
    assert got == dict.fromkeys(range(healthy), 1)
    until(lambda: ready(amqp_url, topo.dead_queue) == dying, f"{dying} dead letters", w)
    until(lambda: ready(amqp_url, topo.queue("default")) == 0, "an empty work queue", w)
    until(lambda: unacked(topo.queue("default")) == 0, "nothing unacked", w)
    assert w.proc.poll() is None, "the worker must keep running"

    dead = take_dead(amqp_url, topo.dead_queue)
    assert sorted(dead) == sorted(i for v in ids.values() for i in v)
    for name, (error_type, calls) in expect.items():
        for task_id in ids[name]:
            h = dead[task_id]
            assert h[H_DEAD_REASON] == "handler_error", (name, h)
            assert h[H_ERROR_TYPE] == error_type, (name, h)
            assert str(h[H_DEAD_DETAIL]).startswith(error_type), (name, h)
            assert h.get(H_ATTEMPT, 1) == calls, (name, h)
    assert tries(r, key) == {name: len(ids[name]) * calls for name, (_, calls) in expect.items()}

    assert w.terminate(timeout=20) == 0
    log = w.stderr()
    lines = log.splitlines()
    logged = 0
    for task_id in (i for v in ids.values() for i in v):
        n = sum(task_id in line for line in lines)
        assert n <= 1, f"{task_id} logged {n} times:\n{log}"
        logged += n
    # the dead-letter warnings are throttled (10 per 10 s): the rest are counted in one line
    held = sum(int(m) for m in re.findall(r"(\d+) more dead-lettered messages were not logged", log))
    assert logged + held == dying, log
    assert "Traceback" not in log, log


@pytest.mark.parametrize("dying", ["die.cancel.async.policy", "die.cancel.async"])
async def test_a_handler_raising_cancelled_error_stalls_nothing(
    dying: str,
    settings: Settings,
    start_worker: Callable[..., WorkerProcess],
    r: redis.Redis,
    unique: str,
    amqp_url: str,
) -> None:
    """The defect as reported: a task with a policy (timeout="10s") raising CancelledError itself, twice,
    then 200 healthy tasks, prefetch 16 (and the same without a policy)."""
    key = f"{unique}:cancel"
    ids = await publish(settings, key, [(dying, 2), ("die.ok", HEALTHY)])
    w = worker_for(start_worker)
    topo = Topology.from_settings(settings)
    check_the_end(w, r, amqp_url, topo, key, ids, HEALTHY, {dying: ("CancelledError", 1)})


ERROR_TYPES = {
    "cancel": "CancelledError",
    "custom": "Custom",
    "sysexit": "SystemExit",
    "kbint": "KeyboardInterrupt",
    "genexit": "GeneratorExit",
}
# task -> (the error type its DLQ copy names, calls per message): every way x async/sync x plain/policy
WAYS = {
    f"die.{way}.{kind}{policy}": (error, 1)
    for way, error in ERROR_TYPES.items()
    for kind in ("async", "sync")
    for policy in ("", ".policy")
    if not (way == "cancel" and kind == "sync")  # a CancelledError is an asyncio matter
} | {
    "die.cancel.async.retry": ("CancelledError", 1),  # a retry policy never retries a cancellation
    "die.custom.async.retry": ("Custom", 2),  # its retry policy names it: retried once, then the DLQ
    "die.genexit.awaited": ("GeneratorExit", 1),  # a future it awaits fails with GeneratorExit
    "die.genexit.awaited.policy": ("GeneratorExit", 1),
    "die.hang.async": ("TaskTimeout", 1),  # never returns: its timeout= cancels it
}
BETWEEN = 20  # healthy tasks after each dying pair


async def test_every_way_a_handler_can_die_is_a_dead_letter_and_holds_back_no_ack(
    settings: Settings, start_worker: Callable[..., WorkerProcess], r: redis.Redis, unique: str, amqp_url: str
) -> None:
    key = f"{unique}:ways"
    plan = [step for name in WAYS for step in ((name, 2), ("die.ok", BETWEEN))] + [("die.ok", HEALTHY)]
    ids = await publish(settings, key, plan)
    w = worker_for(start_worker)
    topo = Topology.from_settings(settings)
    check_the_end(w, r, amqp_url, topo, key, ids, len(WAYS) * BETWEEN + HEALTHY, WAYS)


async def test_handlers_that_cannot_be_stopped_hold_only_their_own_delivery(
    settings: Settings, start_worker: Callable[..., WorkerProcess], r: redis.Redis, unique: str, amqp_url: str
) -> None:
    """A sync handler that never returns (a thread cannot be killed) and an async one that swallows its
    timeout's cancellation each keep their own slot and their own unacked delivery, nothing more: the 200
    after them run and are acked, and the worker still drains once they return."""
    key = f"{unique}:hang"
    topo = Topology.from_settings(settings)
    await publish(settings, key, [("die.hang.sync", 1), ("die.hang.stubborn", 1), ("die.ok", HEALTHY)])
    w = worker_for(start_worker, "--grace-period", "1")

    got = until(lambda: ran_all(r, key, HEALTHY), f"{HEALTHY} healthy runs", w)
    assert got == dict.fromkeys(range(HEALTHY), 1)
    until(lambda: ready(amqp_url, topo.queue("default")) == 0, "an empty work queue", w)
    until(lambda: unacked(topo.queue("default")) == 2, "only the 2 hung deliveries unacked", w)
    assert ready(amqp_url, topo.dead_queue) == 0

    r.set(f"{key}:release", 1)  # the sync one returns; the stubborn one returns when the drain cancels it
    assert w.terminate(timeout=20) == 0
    # both returned, so both were acked (the broker settles a closed channel's deliveries in a moment)
    deadline = time.monotonic() + 15
    while (state := (ready(amqp_url, topo.queue("default")), unacked(topo.queue("default")))) != (0, 0):
        assert time.monotonic() < deadline, f"(ready, unacked) after the drain: {state}\n{w.stderr()[-3000:]}"
        await asyncio.sleep(0.2)
    assert "Traceback" not in w.stderr()
