"""Every command's documented exit status, through the installed ``sluice`` console script.

The contract (docs/cli.md, and each command's ``--help``): 0 success; 1 a failure sluice expected
(an unreachable broker, a bad input, some tasks or dead letters not handled); 2 a usage error; 130
interrupted. A command that failed must never exit 0: ``main`` once dropped the code click returns
with ``standalone_mode=False``, and ``sluice publish`` with 19,261 unconfirmed tasks exited 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from support.brokerctl import rabbitmqctl_argv
from support.waiting import wait_until

SLUICE = str(Path(sys.executable).with_name("sluice"))
DEAD_AMQP = "amqp://guest:guest@127.0.0.1:1/"  # nothing listens on port 1: refused at once
DEAD_REDIS = "redis://127.0.0.1:1/0"


def sluice(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SLUICE, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "SLUICE_CONNECT_TIMEOUT": "3", **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    """The single ``sluice: error: ...`` line a failing command prints, and no traceback."""
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("sluice: error: "), r.stderr
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def env(amqp_url: str, redis_url: str, unique: str) -> dict[str, str]:
    return {"SLUICE_AMQP_URL": amqp_url, "SLUICE_REDIS_URL": redis_url, "SLUICE_PREFIX": unique}


# ---- usage errors: 2, whatever the command

USAGE = [
    ["--bogus"],
    ["nosuchcommand"],
    ["config", "--bogus"],
    ["status", "--interval", "soon"],
    ["publish", "demo.noop", "--count", "abc"],
    ["publish", "demo.noop", "--count", "0"],
    ["worker", "--prefetch", "many"],
    ["producer", "--port", "http"],
    ["metrics", "--port", "http"],
    ["dlq", "ls", "--limit", "0"],
    ["dlq", "show"],
    ["dlq", "nosuch"],
    ["limits", "set", "demo.noop"],
    ["limits", "set", "demo.noop", "fast"],
    ["limits", "rm"],
    ["limits", "thaw"],
    ["limits", "thaw", "a{b}"],
    ["limits", "set", "demo.noop", "5/s sliding", "--burst", "2"],
]


@pytest.mark.parametrize("args", USAGE, ids=[" ".join(a) for a in USAGE])
def test_usage_error_exits_2(args: list[str]) -> None:
    r = sluice(*args, env={"SLUICE_AMQP_URL": DEAD_AMQP, "SLUICE_REDIS_URL": DEAD_REDIS})
    assert r.returncode == 2, (r.returncode, r.stderr)
    one_error_line(r)


# ---- an unreachable broker: 1, one line

UNREACHABLE = [
    ["publish", "demo.noop"],
    ["dlq", "ls"],
    ["dlq", "show", "some-id"],
    ["dlq", "replay", "--all"],
    ["dlq", "purge", "--yes"],
    ["limits", "ls"],
    ["limits", "set", "demo.noop", "5/s"],
    ["limits", "rm", "demo.noop"],
    ["limits", "thaw", "demo.noop"],
    ["worker"],
]


@pytest.mark.parametrize("args", UNREACHABLE, ids=[" ".join(a) for a in UNREACHABLE])
def test_unreachable_broker_exits_1(args: list[str]) -> None:
    r = sluice(*args, env={"SLUICE_AMQP_URL": DEAD_AMQP, "SLUICE_REDIS_URL": DEAD_REDIS})
    assert r.returncode == 1, (r.returncode, r.stderr)
    if args[0] == "worker":  # a service logs its start; its last line is the error
        assert r.stderr.strip().splitlines()[-1].startswith("sluice: error: cannot reach RabbitMQ")
        assert "Traceback" not in r.stderr
    else:
        assert "cannot reach" in one_error_line(r)


def test_status_with_no_metrics_service_exits_1() -> None:
    r = sluice("status", "--url", f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 1
    assert "cannot reach the metrics service" in one_error_line(r)


def test_bad_setting_exits_1() -> None:
    r = sluice("config", env={"SLUICE_QUEUE_TYPE": "stream"})
    assert r.returncode == 1
    assert "queue_type" in one_error_line(r)


# ---- success: 0


def test_success_exits_0(env: dict[str, str]) -> None:
    for args in (
        ["config", "--json"],
        ["publish", "demo.noop", "--count", "3"],
        ["dlq", "ls", "--json"],
        ["limits", "set", "demo.noop", "5/s"],
        ["limits", "ls", "--json"],
        ["limits", "rm", "demo.noop"],
        ["dlq", "purge", "--yes"],
    ):
        r = sluice(*args, env=env)
        assert r.returncode == 0, (args, r.stderr)
    assert json.loads(sluice("limits", "ls", "--json", env=env).stdout) == []


# ---- partial failure: 1 (the defect: these exited 0)


@contextlib.contextmanager
def queue_policy(unique: str, definition: dict[str, object]) -> Iterator[None]:
    """A broker policy on this test's work queues only (removed after)."""
    name = f"{unique}-policy"
    pattern = f"^{unique}\\.q\\.default$"
    subprocess.run(
        [
            *rabbitmqctl_argv(),
            "-q",
            "set_policy",
            "--apply-to",
            "queues",
            name,
            pattern,
            json.dumps(definition),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    try:
        yield
    finally:
        subprocess.run([*rabbitmqctl_argv(), "-q", "clear_policy", name], capture_output=True, timeout=60)


def test_publish_with_unconfirmed_tasks_exits_1(env: dict[str, str], unique: str) -> None:
    """The queue refuses publishes past 5 (reject-publish; a quorum queue enforces it a little late):
    some confirmed, the rest nacked, exit 1."""
    with queue_policy(unique, {"max-length": 5, "overflow": "reject-publish"}):
        r = sluice("publish", "demo.noop", "--count", "200", env=env)
    assert r.returncode == 1, r.stderr
    confirmed = len(r.stdout.split())
    assert 5 <= confirmed < 200
    assert f"published {confirmed}, failed {200 - confirmed}" in r.stderr
    assert "Traceback" not in r.stderr


def test_dlq_replay_with_unroutable_dead_letters_exits_1(
    env: dict[str, str], amqp_url: str, unique: str
) -> None:
    """A dead letter that records no task or queue cannot be replayed: said, kept, exit 1."""
    ok = sluice("dlq", "ls", env=env)  # declares the topology (the DLQ) under this prefix
    assert ok.returncode == 0, ok.stderr
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ch = conn.channel()
        ch.basic_publish(
            "", f"{unique}.dlq", b"{}", pika.BasicProperties(message_id="orphan-1", delivery_mode=2)
        )
    finally:
        conn.close()
    r = sluice("dlq", "replay", "--all", env=env)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "orphan-1" in r.stderr
    assert json.loads(sluice("dlq", "ls", "--json", env=env).stdout.splitlines()[0])["id"] == "orphan-1"


def test_dlq_show_of_a_missing_id_exits_1(env: dict[str, str]) -> None:
    r = sluice("dlq", "show", "no-such-id", env=env)
    assert r.returncode == 1
    one_error_line(r)


def test_purge_without_yes_off_a_terminal_exits_1(env: dict[str, str]) -> None:
    r = sluice("dlq", "purge", env=env)
    assert r.returncode == 1
    assert "--yes" in one_error_line(r)


# ---- services: 0 after a drain on SIGTERM, 1 when they cannot start


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [SLUICE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
    )


def wait_for_port(port: int, proc: subprocess.Popen[str], limit_s: float = 30) -> None:
    def listening() -> bool:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_until(listening, limit_s, f"a listener on {port}")


def stop(proc: subprocess.Popen[str], limit_s: float = 40) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, err


@pytest.mark.parametrize("service", ["producer", "metrics"])
def test_http_service_drains_to_0_and_a_taken_port_is_1(service: str, env: dict[str, str]) -> None:
    port = free_port()
    proc = start([service, "--port", str(port)], env)
    try:
        wait_for_port(port, proc)
        second = sluice(service, "--port", str(port), env=env, timeout=60)
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert second.returncode == 1, (second.returncode, second.stderr)
    assert "Traceback" not in second.stderr
    assert second.stderr.strip().splitlines()[-1].startswith("sluice: error: cannot listen on")


def test_worker_drains_to_0(env: dict[str, str]) -> None:
    proc = start(["worker", "--concurrency", "2"], env)
    deadline = time.monotonic() + 30
    assert proc.stderr is not None
    seen = ""
    while "consuming" not in seen and time.monotonic() < deadline:
        line = proc.stderr.readline()
        assert line or proc.poll() is None, seen
        seen += line
    assert "consuming" in seen, seen
    code, err = stop(proc)
    assert code == 0, seen + err


@pytest.mark.parametrize(
    ("service", "probe", "down"), [("producer", "/readyz", 503), ("metrics", "/metrics", 200)]
)
def test_http_service_waits_for_an_unreachable_broker(
    service: str, probe: str, down: int, unique: str
) -> None:
    """Documented: an unreachable broker does not stop the HTTP services; they say so, and drain to 0."""
    import httpx

    port = free_port()
    proc = start([service, "--port", str(port)], {"SLUICE_AMQP_URL": DEAD_AMQP, "SLUICE_PREFIX": unique})
    try:
        wait_for_port(port, proc)
        r = httpx.get(f"http://127.0.0.1:{port}{probe}", timeout=10)
        assert r.status_code == down, r.text
        if service == "metrics":
            assert "sluice_broker_up 0.0" in r.text
        assert proc.poll() is None
    finally:
        code, err = stop(proc)
    assert code == 0, err


def test_every_command_documents_its_exit_status() -> None:
    """Each command's --help ends with its exit statuses, and docs/cli.md lists the same table."""
    from sluice_cli.exits import EXITS, epilog

    doc = (Path(__file__).parents[2] / "docs" / "cli.md").read_text()
    for command, statuses in EXITS.items():
        r = sluice(*command.split(), "--help", env={"COLUMNS": "2000"})
        assert r.returncode == 0, r.stderr
        assert epilog(command) in " ".join(r.stdout.split()), command
        assert f"| `sluice {command}` | {statuses} |" in doc, command
