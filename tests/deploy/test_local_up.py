"""deploy/local_up.py (`make up`): the one-line hint without brokers; start and stop of the three services."""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, suppress
from pathlib import Path

import httpx
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "local_up.py"


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env(**sluice: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update({f"SLUICE_{k.upper()}": v for k, v in sluice.items()})
    return env


def run_up(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_unreachable_rabbitmq_gives_one_line_and_exit_1(redis_url: str) -> None:
    dead = f"amqp://guest:secret@127.0.0.1:{free_port()}/"
    done = run_up(base_env(amqp_url=dead, redis_url=redis_url))
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("sluice up: RabbitMQ (amqp://guest:***@127.0.0.1:")
    assert "Redis" not in lines[0].split(";")[0]
    assert "`rabbitmq-server -detached`" in lines[0]
    assert "`docker compose up -d rabbitmq redis`" in lines[0]
    assert "secret" not in done.stderr


def test_both_brokers_unreachable() -> None:
    done = run_up(
        base_env(
            amqp_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/",
            redis_url=f"redis://127.0.0.1:{free_port()}/0",
        )
    )
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1
    assert re.match(
        r"sluice up: RabbitMQ \(.*\) and Redis \(.*\) do not answer; start the brokers", done.stderr
    )


def test_bad_setting_is_one_line() -> None:
    done = run_up(base_env(metrics_port="not-a-port"))
    assert done.returncode == 1
    assert done.stderr.strip().startswith("sluice: error: invalid setting metrics_port")
    assert len(done.stderr.splitlines()) == 1


@pytest.fixture
def prometheus_log(tmp_path: Path) -> Path:
    """Where the stack's Prometheus writes its log (``PROMETHEUS_LOG``; the test's own file)."""
    return tmp_path / "prometheus.log"


@pytest.fixture
def prometheus_port() -> int:
    return free_port()


@pytest.fixture
def scheduler_port() -> int:
    return free_port()


@pytest.fixture
def stack(
    amqp_url: str,
    redis_url: str,
    unique: str,
    prometheus_log: Path,
    prometheus_port: int,
    scheduler_port: int,
) -> Iterator[tuple[subprocess.Popen[str], int, int, int]]:
    producer_port, metrics_port = free_port(), free_port()
    env = base_env(
        amqp_url=amqp_url,
        redis_url=redis_url,
        prefix=unique,
        producer_port=str(producer_port),
        metrics_port=str(metrics_port),
        grace_period="5",
    )
    env["PROMETHEUS_PORT"] = str(prometheus_port)
    env["PROMETHEUS_LOG"] = str(prometheus_log)
    env["SCHEDULER_PORT"] = str(scheduler_port)
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        yield proc, producer_port, metrics_port, prometheus_port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
        _delete_topology(amqp_url, unique)


def _delete_topology(amqp_url: str, prefix: str) -> None:
    """Remove what the services declared under the test's prefix."""
    import asyncio

    import aio_pika

    async def delete() -> None:
        conn = await aio_pika.connect(amqp_url)
        async with conn:
            for q in (f"{prefix}.q.default", f"{prefix}.dlq"):
                channel = await conn.channel()
                with suppress(aio_pika.exceptions.ChannelClosed):
                    await channel.queue_delete(q)
            channel = await conn.channel()
            for x in (f"{prefix}.tasks", f"{prefix}.dead", f"{prefix}.requeue", f"{prefix}.metrics"):
                await channel.exchange_delete(x)

    asyncio.run(delete())


def read_until(
    proc: subprocess.Popen[str], pattern: str, seconds: float, seen: list[str]
) -> re.Match[str] | None:
    assert proc.stdout is not None
    deadline = time.monotonic() + seconds
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not sel.select(left):
                continue
            line = proc.stdout.readline()
            if not line:
                return None
            seen.append(line)
            if m := re.search(pattern, line):
                return m
    return None


def get_ok(url: str, seconds: float) -> httpx.Response:
    deadline = time.monotonic() + seconds
    while True:
        try:
            resp = httpx.get(url, timeout=2)
            if resp.status_code == 200 or time.monotonic() > deadline:
                return resp
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


@pytest.mark.slow
def test_starts_the_services_and_prometheus_and_stops_them_on_sigterm(
    stack: tuple[subprocess.Popen[str], int, int, int],
    unique: str,
    prometheus_log: Path,
    scheduler_port: int,
) -> None:
    proc, producer_port, metrics_port, prometheus_port = stack
    seen: list[str] = []
    urls = read_until(proc, r"sluice up: producer (\S+)  metrics (\S+)", 30, seen)
    assert urls, "".join(seen)
    assert urls.groups() == (f"http://127.0.0.1:{producer_port}", f"http://127.0.0.1:{metrics_port}/metrics")
    assert get_ok(f"http://127.0.0.1:{producer_port}/healthz", 30).status_code == 200
    assert get_ok(f"http://127.0.0.1:{scheduler_port}/healthz", 30).status_code == 200  # the scheduler
    metrics = get_ok(f"http://127.0.0.1:{metrics_port}/metrics", 30)
    assert metrics.status_code == 200
    # the worker is up once it consumes the default queue: the metrics service sees its consumer
    consumer = f'sluice_queue_consumers{{queue="{unique}.q.default"}} 1.0'
    deadline = time.monotonic() + 30
    while consumer not in metrics.text and time.monotonic() < deadline:
        time.sleep(0.2)
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
    assert consumer in metrics.text, metrics.text
    # Prometheus (installed here: .ci/run apt-installs it) scrapes the local metrics service
    deadline = time.monotonic() + 30
    health = None
    while time.monotonic() < deadline:
        with suppress(httpx.TransportError):
            targets = httpx.get(f"http://127.0.0.1:{prometheus_port}/api/v1/targets", timeout=2).json()
            active = targets["data"]["activeTargets"]
            health = [(t["scrapeUrl"], t["health"]) for t in active]
            if health == [(f"http://127.0.0.1:{metrics_port}/metrics", "up")]:
                break
        time.sleep(0.3)
    assert health == [(f"http://127.0.0.1:{metrics_port}/metrics", "up")], "".join(seen)

    proc.send_signal(signal.SIGTERM)
    assert read_until(proc, r"sluice up: stopped$", 30, seen), "".join(seen)
    assert proc.wait(10) == 0, "".join(seen)
    out = "".join(seen)
    for name in ("producer", "worker", "metrics"):
        assert re.search(rf"^{name}\s* \| ", out, re.M), f"no prefixed output from {name}"
    # Prometheus' own log goes to a file, named once at start; none of its lines reach the terminal
    told = re.findall(r"^sluice up: prometheus logs to (\S+)$", out, re.M)
    assert told == [str(prometheus_log)], out
    assert not re.search(r"^prometheus\s* \| ", out, re.M), out
    assert not re.search(r"\bts=\S+ caller=\S+ level=", out), out
    logged = prometheus_log.read_text()
    assert re.search(r"^ts=\S+ caller=\S+ level=info .*Server is ready to receive web requests", logged, re.M)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{metrics_port}/healthz", timeout=2)


@pytest.fixture
def held_port(prometheus_port: int) -> Iterator[int]:
    """Prometheus' port, already bound and listening before the stack starts."""
    with closing(socket.socket()) as holder:
        holder.bind(("127.0.0.1", prometheus_port))
        holder.listen()
        yield prometheus_port


@pytest.mark.slow
def test_prometheus_that_cannot_start_is_one_line_quoting_its_log(
    held_port: int, stack: tuple[subprocess.Popen[str], int, int, int], prometheus_log: Path
) -> None:
    proc, producer_port, _, prometheus_port = stack
    assert prometheus_port == held_port
    seen: list[str] = []
    gone = read_until(
        proc,
        r"^sluice up: prometheus exited with (\d+) \(last line of (\S+): (.*)\); the services go on$",
        30,
        seen,
    )
    assert gone, "".join(seen)
    assert gone.group(1) != "0" and gone.group(2) == str(prometheus_log)
    assert "address already in use" in gone.group(3), gone.group(0)
    assert get_ok(f"http://127.0.0.1:{producer_port}/healthz", 30).status_code == 200
    proc.send_signal(signal.SIGTERM)
    assert read_until(proc, r"sluice up: stopped$", 30, seen), "".join(seen)
    assert proc.wait(10) == 0, "".join(seen)
    others = [line for line in seen if not line.startswith("sluice up: prometheus exited")]
    assert not re.search(r"\bts=\S+ caller=\S+ level=", "".join(others)), "".join(seen)
