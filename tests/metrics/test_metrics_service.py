"""The metrics service against the real RabbitMQ: the ASGI app in-process, and ``sluice metrics`` as a process."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from asyncio.subprocess import PIPE, STDOUT
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager, closing

import aio_pika
import httpx
import pytest
from aio_pika.abc import AbstractIncomingMessage
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from sluice.settings import Settings
from sluice.topology import Topology
from sluice_metrics import QueueCollector, QueueStatsSource, build_app, queues_to_watch
from support.brokerctl import rabbitmqctl_argv

Broker = tuple[Settings, aio_pika.abc.AbstractConnection]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str, parser: Callable[[str], Iterable[Metric]] = text_string_to_metric_families) -> Samples:
    """Every sample of an exposition, keyed by (sample name, sorted labels)."""
    out: Samples = {}
    for family in parser(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def q(name: str) -> tuple[tuple[str, str], ...]:
    return (("queue", name),)


@asynccontextmanager
async def metrics_client(
    settings: Settings, extra: tuple[str, ...] = (), scrape_timeout: float = 3.0
) -> AsyncIterator[httpx.AsyncClient]:
    registry = CollectorRegistry()
    collector = QueueCollector()
    registry.register(collector)
    async with QueueStatsSource(settings, queues_to_watch(settings, extra), timeout=scrape_timeout) as source:
        transport = httpx.ASGITransport(app=build_app(registry, source, collector))
        async with httpx.AsyncClient(transport=transport, base_url="http://metrics") as client:
            yield client


async def scrape(client: httpx.AsyncClient) -> Samples:
    resp = await client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(resp.text)


async def scrape_until(
    client: httpx.AsyncClient, key: tuple[str, tuple[tuple[str, str], ...]], want: float
) -> Samples:
    """Scrape until ``key`` has value ``want`` (quorum queue counts settle shortly after a confirm)."""
    deadline = time.monotonic() + 10
    while True:
        got = await scrape(client)
        if got.get(key) == want or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.05)


@pytest.fixture
async def broker(
    amqp_url: str, unique: str
) -> AsyncIterator[tuple[Settings, aio_pika.abc.AbstractConnection]]:
    """Settings with a unique prefix, the base topology and the default work queue declared; removed after."""
    settings = Settings(amqp_url=amqp_url, prefix=unique)
    topo = Topology.from_settings(settings)
    conn = await aio_pika.connect(amqp_url)
    try:
        channel = await conn.channel()
        await topo.declare_base(channel)
        await topo.declare_queue(channel, settings.default_queue)
        await channel.close()
        yield settings, conn
        cleanup = await conn.channel()
        for name in (topo.queue(settings.default_queue), topo.dead_queue):
            await cleanup.queue_delete(name)
        for name in (topo.tasks_exchange, topo.dead_exchange):
            await cleanup.exchange_delete(name)
    finally:
        await conn.close()


async def test_queue_depth_then_consumer(broker: Broker) -> None:
    settings, conn = broker
    channel = await conn.channel()
    topo = Topology.from_settings(settings)
    work, dlq = topo.queue(settings.default_queue), topo.dead_queue
    n = 7
    tasks = await channel.get_exchange(topo.tasks_exchange)
    for i in range(n):  # confirmed publishes through the tasks exchange
        await tasks.publish(aio_pika.Message(b"{}", message_id=f"m{i}"), routing_key=settings.default_queue)

    async with metrics_client(settings) as client:
        got = await scrape_until(client, ("sluice_queue_messages", q(work)), n)
        assert got[("sluice_queue_messages", q(work))] == n
        assert got[("sluice_queue_consumers", q(work))] == 0
        assert got[("sluice_queue_present", q(work))] == 1
        assert got[("sluice_queue_messages", q(dlq))] == 0
        assert got[("sluice_broker_up", ())] == 1
        assert got[("sluice_up", ())] == 1
        assert got[("sluice_metrics_scrape_errors_total", (("kind", "missing_queue"),))] == 0

        # a consumer holding one unacked delivery: 1 consumer, one message fewer ready
        consumer_channel = await conn.channel()
        await consumer_channel.set_qos(prefetch_count=1)
        held = asyncio.Event()

        async def hold(message: AbstractIncomingMessage) -> None:
            held.set()

        queue = await consumer_channel.get_queue(work)
        tag = await queue.consume(hold)
        async with asyncio.timeout(10):
            await held.wait()
        got = await scrape_until(client, ("sluice_queue_consumers", q(work)), 1)
        assert got[("sluice_queue_consumers", q(work))] == 1
        assert got[("sluice_queue_messages", q(work))] == n - 1
        await queue.cancel(tag)
        await consumer_channel.close()


async def test_missing_queue_is_reported_absent_and_the_rest_still_read(
    broker: Broker,
) -> None:
    settings, _ = broker
    topo = Topology.from_settings(settings)
    missing = topo.queue("nothere")
    async with metrics_client(settings, extra=("nothere",)) as client:
        first = await scrape(client)
        second = await scrape(client)
    assert first[("sluice_queue_present", q(missing))] == 0
    assert ("sluice_queue_messages", q(missing)) not in first
    assert ("sluice_queue_consumers", q(missing)) not in first
    # the DLQ is read after the missing queue, on a reopened channel
    assert first[("sluice_queue_present", q(topo.dead_queue))] == 1
    assert first[("sluice_queue_messages", q(topo.dead_queue))] == 0
    assert first[("sluice_broker_up", ())] == 1
    errors = ("sluice_metrics_scrape_errors_total", (("kind", "missing_queue"),))
    assert first[errors] == 1
    assert second[errors] == 2


def close_connection_named(name: str) -> None:
    """Make RabbitMQ close our client's connection, as a broker restart would."""
    listed = subprocess.run(
        [*rabbitmqctl_argv(), "list_connections", "pid", "client_properties", "-q"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    pids = [line.split("\t", 1)[0] for line in listed.stdout.splitlines() if f'"{name}"' in line]
    assert len(pids) == 1, listed.stdout
    subprocess.run(
        [*rabbitmqctl_argv(), "close_connection", pids[0], "test"],
        capture_output=True,
        timeout=30,
        check=True,
    )


async def test_connection_dropped_by_the_broker_is_replaced_within_the_scrape(broker: Broker) -> None:
    settings, _ = broker
    work = Topology.from_settings(settings).queue(settings.default_queue)
    async with metrics_client(settings) as client:
        assert (await scrape(client))[("sluice_broker_up", ())] == 1
        await asyncio.to_thread(close_connection_named, f"sluice-metrics {settings.prefix}")
        got = await scrape(client)
    assert got[("sluice_broker_up", ())] == 1
    assert got[("sluice_queue_present", q(work))] == 1
    assert got[("sluice_metrics_scrape_errors_total", (("kind", "broker"),))] == 0


async def test_healthz(broker: Broker) -> None:
    settings, _ = broker
    async with metrics_client(settings) as client:
        before = await client.get("/healthz")
        await scrape(client)
        after = await client.get("/healthz")
    assert before.status_code == 200
    assert before.json()["broker_up"] is None  # no scrape yet
    assert after.json() == {
        "status": "ok",
        "broker_up": True,
        "queues": list(queues_to_watch(settings)),
    }


def dead_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_broker_refusing_connections_still_answers_quickly(unique: str) -> None:
    settings = Settings(amqp_url=f"amqp://guest:guest@127.0.0.1:{dead_port()}/", prefix=unique)
    async with metrics_client(settings, scrape_timeout=2.0) as client:
        started = time.monotonic()
        got = await scrape(client)
        elapsed = time.monotonic() - started
    assert elapsed < 2.0
    assert got[("sluice_broker_up", ())] == 0
    assert got[("sluice_up", ())] == 1
    assert got[("sluice_metrics_scrape_errors_total", (("kind", "broker"),))] == 1
    assert not [k for k in got if k[0] == "sluice_queue_messages"]


async def test_silent_broker_times_out_instead_of_hanging(unique: str) -> None:
    """A peer that accepts TCP and never speaks AMQP: the scrape gives up at its timeout."""
    with closing(socket.socket()) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        settings = Settings(amqp_url=f"amqp://guest:guest@127.0.0.1:{port}/", prefix=unique)
        async with metrics_client(settings, scrape_timeout=0.5) as client:
            started = time.monotonic()
            got = await scrape(client)
            elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 2.0
    assert got[("sluice_broker_up", ())] == 0
    assert got[("sluice_metrics_scrape_errors_total", (("kind", "timeout"),))] == 1


async def test_openmetrics_when_asked(broker: Broker) -> None:
    settings, _ = broker
    work = Topology.from_settings(settings).queue(settings.default_queue)
    async with metrics_client(settings) as client:
        resp = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/openmetrics-text")
    assert resp.text.endswith("# EOF\n")
    got = samples(resp.text, parse_openmetrics)
    assert got[("sluice_queue_present", q(work))] == 1
    assert got[("sluice_broker_up", ())] == 1


async def test_promtool_accepts_the_exposition(broker: Broker) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool is not installed: `apt-get install -y prometheus` (Debian) provides it", pytrace=False
        )
    settings, _ = broker
    async with metrics_client(settings, extra=("nothere",)) as client:
        text = (await client.get("/metrics")).text
    check = await asyncio.create_subprocess_exec(
        promtool, "check", "metrics", stdin=PIPE, stdout=PIPE, stderr=STDOUT
    )
    async with asyncio.timeout(30):
        out, _ = await check.communicate(text.encode())
    assert check.returncode == 0, out.decode()
