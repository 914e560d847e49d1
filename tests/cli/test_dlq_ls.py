"""`sluice dlq ls` through the installed console script, against real dead letters of a real worker.

The default is one line per dead letter that fits an 80-column terminal (id, task, reason, age,
attempts); ``--wide`` is the full table (queue, detail, time); ``--json`` is one JSON object a line.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import aio_pika
import pytest

from sluice.protocol import H_DEAD_AT, H_DEAD_DETAIL, H_DEAD_QUEUE, H_DEAD_REASON, TaskMessage, now_ms
from support.queues import queue_state
from support.waiting import wait_until
from support.workers import WorkerProcess

SLUICE = str(Path(sys.executable).with_name("sluice"))
LONG_TASK = "reports.render_the_quarterly_statement_for_every_customer"
LONG_REASON = "retry_budget_exhausted"


def run(env: dict[str, str], *args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SLUICE, *args],
        env={**env, "COLUMNS": str(columns)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ready_messages(amqp_url: str, queue: str) -> int:
    return (queue_state(amqp_url, queue) or (0, 0))[0]


def put_dead_letter(amqp_url: str, prefix: str, task: str, reason: str, detail: str) -> str:
    """One dead letter published to ``{prefix}.dead`` the way a worker's dead copy looks."""
    msg = TaskMessage(task, {"customer": "c1"}, queue="default", attempt=7)
    headers = {
        **msg.headers(),
        H_DEAD_REASON: reason,
        H_DEAD_DETAIL: detail,
        H_DEAD_AT: now_ms() - 3 * 3600 * 1000,  # three hours ago
        H_DEAD_QUEUE: "default",
    }

    async def publish() -> None:
        async with await aio_pika.connect(amqp_url) as conn:
            channel = await conn.channel(publisher_confirms=True)
            dead = await channel.get_exchange(f"{prefix}.dead")
            body = json.dumps(msg.payload).encode()
            await dead.publish(
                aio_pika.Message(body, message_id=msg.id, headers=headers, delivery_mode=2), routing_key=""
            )

    asyncio.run(publish())
    return msg.id


@pytest.fixture
def env(amqp_url: str, redis_url: str, unique: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_") and k != "COLUMNS"}
    return {
        **base,
        "SLUICE_AMQP_URL": amqp_url,
        "SLUICE_REDIS_URL": redis_url,
        "SLUICE_PREFIX": unique,
        "SLUICE_QUEUE_TYPE": "classic",
    }


@pytest.fixture
def dead(env: dict[str, str], amqp_url: str, unique: str, tmp_path: Path) -> list[str]:
    """Four dead letters: three demo.fail runs of a real worker (handler_error), one made by hand
    with a long task name and reason. Yields their ids."""
    message = "the payment provider answered 503 Service Unavailable after 30 s; " * 3
    published = run(
        env, "publish", "demo.fail", "--payload", json.dumps({"message": message}), "--count", "3"
    )
    assert published.returncode == 0, published.stderr
    ids = published.stdout.split()
    assert len(ids) == 3, published.stdout
    # burst: the worker ends once the three ran (each dead letter confirmed before its delivery is acked)
    worker = WorkerProcess(["--concurrency", "4", "--burst"], env, tmp_path / "worker.log")
    assert worker.wait(60) == 0, worker.stderr()[-2000:]
    assert ready_messages(amqp_url, f"{unique}.dlq") == 3
    ids.append(put_dead_letter(amqp_url, unique, LONG_TASK, LONG_REASON, "the fleet's retry budget said no"))
    wait_until(lambda: ready_messages(amqp_url, f"{unique}.dlq") >= 4, 30, "4 dead letters")
    return ids


def test_default_fits_80_columns_one_line_per_dead_letter(dead: list[str], env: dict[str, str]) -> None:
    done = run(env, "dlq", "ls")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    too_wide = [line for line in lines if len(line) > 80]
    assert not too_wide, done.stdout
    header = lines[0].split()
    assert header == ["ID", "TASK", "REASON", "AGE", "ATTEMPTS"], done.stdout
    rows = {line.split()[0]: line for line in lines[1:] if line.split() and line.split()[0] in dead}
    assert sorted(rows) == sorted(dead), done.stdout  # each dead letter is one line, its id whole
    for task_id in dead[:3]:
        cells = rows[task_id].split()
        assert cells[1:3] == ["demo.fail", "handler_error"], rows[task_id]
        assert re.fullmatch(r"\d+s", cells[3]), rows[task_id]  # dead a few seconds ago
        assert cells[4] == "1", rows[task_id]
    long_row = rows[dead[3]].split()
    for cell, whole in ((long_row[1], LONG_TASK), (long_row[2], LONG_REASON)):  # cut to fit, marked
        assert cell.endswith("…") and whole.startswith(cell.removesuffix("…")), rows[dead[3]]
        assert len(cell) >= 10, rows[dead[3]]
    assert long_row[3] == "3h" and long_row[4] == "7", rows[dead[3]]
    # the footer says how many there are and where the rest of the detail is
    assert re.fullmatch(r"4 of 4 dead letters; --wide or --json for more", lines[-1]), lines[-1]
    assert "503 Service Unavailable" not in done.stdout  # the detail is --wide's


def test_default_stays_one_line_a_row_in_a_narrower_terminal(dead: list[str], env: dict[str, str]) -> None:
    done = run(env, "dlq", "ls", columns=64)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert all(len(line) <= 64 for line in lines), done.stdout
    assert len(lines) == 6, done.stdout  # header, 4 rows, footer
    assert sorted(line[:8] for line in lines[1:5]) == sorted(i[:8] for i in dead), done.stdout


def test_wide_terminal_shows_every_cell_whole(dead: list[str], env: dict[str, str]) -> None:
    done = run(env, "dlq", "ls", columns=200)
    assert done.returncode == 0, done.stderr
    assert LONG_TASK in done.stdout and LONG_REASON in done.stdout and "…" not in done.stdout


def test_wide_shows_the_detail(dead: list[str], env: dict[str, str]) -> None:
    done = run(env, "dlq", "ls", "--wide", columns=250)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "dead letters: showing 4 of 4" in out
    for column in ("id", "task", "queue", "reason", "detail", "dead at (UTC)", "attempt"):
        assert column in out, out
    assert all(task_id in out for task_id in dead), out
    assert LONG_TASK in out and "the fleet's retry budget said no" in out
    assert "the payment provider answered 503" in out  # the detail (cut at 60 characters)
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", out)


def test_json_is_one_object_a_line(dead: list[str], env: dict[str, str]) -> None:
    done = run(env, "dlq", "ls", "--json")
    assert done.returncode == 0, done.stderr
    docs = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(d["id"] for d in docs) == sorted(dead)
    by_id = {d["id"]: d for d in docs}
    first = by_id[dead[0]]
    assert first["task"] == "demo.fail" and first["reason"] == "handler_error"
    assert first["error_type"] == "DemoFailure" and "503 Service Unavailable" in first["error_message"]
    assert isinstance(first["dead_at_ms"], int) and first["attempt"] == 1
    assert by_id[dead[3]]["task"] == LONG_TASK and by_id[dead[3]]["attempt"] == 7
    assert not {"headers", "body", "traceback"} & set(first)  # `dlq show --json` has those


def test_filters_and_limit(dead: list[str], env: dict[str, str]) -> None:
    done = run(env, "dlq", "ls", "--reason", LONG_REASON)
    assert done.returncode == 0, done.stderr
    assert dead[3] in done.stdout and not any(i in done.stdout for i in dead[:3])
    assert done.stdout.splitlines()[-1].startswith("1 of 4 dead letters")
    limited = run(env, "dlq", "ls", "--limit", "2", "--json")
    assert limited.returncode == 0 and len(limited.stdout.splitlines()) == 2


def test_empty_dlq_says_so(env: dict[str, str], unique: str, amqp_url: str) -> None:
    done = run(env, "dlq", "ls")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == "no dead letters\n"
    assert run(env, "dlq", "ls", "--json").stdout == ""


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--wide", "--json"], 2, "--wide and --json"),
        (["--limit", "0"], 2, "--limit"),
        (["--nope"], 2, "--nope"),
    ],
)
def test_usage_errors_exit_2_in_one_line(
    env: dict[str, str], args: list[str], code: int, message: str
) -> None:
    done = run(env, "dlq", "ls", *args)
    assert done.returncode == code, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("sluice: error: "), done.stderr
    assert message in done.stderr


def test_unreachable_broker_exits_1_in_one_line(env: dict[str, str]) -> None:
    dead_env = {**env, "SLUICE_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/"}
    done = run(dead_env, "dlq", "ls")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("sluice: error: "), done.stderr


def test_help_states_the_exit_statuses(env: dict[str, str]) -> None:
    done = run(env, "dlq", "ls", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "Exit status: 0 listed (also when empty); 1 the broker cannot be reached; 2 usage error" in text
    for option in ("--wide", "--json", "--limit", "--task", "--reason"):
        assert option in done.stdout
