"""The producer HTTP API in-process (httpx + ASGITransport, lifespan run by hand) on the real RabbitMQ."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import producer_taskdefs
from producer_helpers import Broker

from sluice import protocol as p
from sluice.settings import Settings
from sluice.tasks import Registry
from sluice_producer import create_app


@asynccontextmanager
async def api(
    settings: Settings, registry: Registry | None = None, *, wait_ready: bool = True, **kw: object
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, registry, **kw)  # type: ignore[arg-type]
    async with app.router.lifespan_context(app):
        if wait_ready:
            async with asyncio.timeout(10):
                await app.state.link.opened.wait()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://producer") as c:
            yield c


REGISTRY = Registry([producer_taskdefs.greet, producer_taskdefs.plain])


async def test_accepts_a_task_once_confirmed(settings: Settings, broker: Broker) -> None:
    async with api(settings) as c:
        r = await c.post(
            "/v1/tasks",
            json={"task": "demo.echo", "payload": {"a": [1, 2]}, "idempotency_key": "k7", "trace_id": "t7"},
        )
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["task"] == "demo.echo"
    assert body["queue"] == "default"
    (msg,) = await broker.take(1)
    assert msg.message_id == body["id"]
    assert json.loads(msg.body) == {"a": [1, 2]}
    assert msg.headers[p.H_IDEMPOTENCY_KEY] == "k7"
    assert msg.headers[p.H_TRACE_ID] == "t7"
    assert msg.headers[p.H_ATTEMPT] == 1
    assert msg.delivery_mode == 2


async def test_known_task_is_validated_and_routed(settings: Settings, broker: Broker) -> None:
    async with api(settings, REGISTRY) as c:
        bad = await c.post("/v1/tasks", json={"task": "demo.greet", "payload": {"times": "many"}})
        ok = await c.post("/v1/tasks", json={"task": "demo.greet", "payload": {"who": "ada"}})
        unknown = await c.post("/v1/tasks", json={"task": "demo.other", "payload": {}})
    assert bad.status_code == 422
    locs = [tuple(e["loc"]) for e in bad.json()["detail"]]
    assert ("body", "payload", "who") in locs
    assert ("body", "payload", "times") in locs
    assert ok.status_code == 202
    assert ok.json()["queue"] == "mail"
    assert unknown.status_code == 202  # not strict: workers may know more tasks
    assert unknown.json()["queue"] == "default"
    (msg,) = await broker.take(1, queue="mail")
    assert msg.message_id == ok.json()["id"]
    (other,) = await broker.take(1)
    assert other.message_id == unknown.json()["id"]


async def test_strict_refuses_unknown_tasks(settings: Settings, broker: Broker) -> None:
    async with api(settings, REGISTRY, strict=True) as c:
        r = await c.post("/v1/tasks", json={"task": "demo.other"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["type"] == "unknown_task"
    assert await broker.count() is None


async def test_rejects_bad_requests(amqp_url: str, broker: Broker) -> None:
    settings = Settings(amqp_url=amqp_url, prefix=broker.prefix, max_message_bytes=2048)
    await broker.declare("default")
    async with api(settings) as c:
        malformed = await c.post(
            "/v1/tasks", content=b'{"task": "a.b", ', headers={"content-type": "application/json"}
        )
        missing = await c.post("/v1/tasks", json={"payload": {}})
        not_object = await c.post("/v1/tasks", json={"task": "a.b", "payload": [1]})
        extra = await c.post("/v1/tasks", json={"task": "a.b", "colour": "red"})
        bad_queue = await c.post("/v1/tasks", json={"task": "a.b", "queue": "a/b"})
        big = await c.post("/v1/tasks", json={"task": "a.b", "payload": {"x": "y" * 3000}})
        huge = await c.post(
            "/v1/tasks", content=b"x" * (2048 + 70_000), headers={"content-type": "application/json"}
        )
        nan = await c.post("/v1/tasks", content=b'{"task": "a.b", "payload": {"x": NaN}}')
    assert malformed.status_code == 400
    assert malformed.json()["detail"].startswith("malformed JSON body")
    for r in (missing, not_object, extra, bad_queue):
        assert r.status_code == 422, r.text
        assert isinstance(r.json()["detail"], list)
    assert big.status_code == 413
    assert "over the cap of 2048" in big.json()["detail"][0]["msg"]
    assert huge.status_code == 413
    assert nan.status_code in (400, 422)
    assert await broker.count() == 0


async def test_batch(settings: Settings, broker: Broker) -> None:
    items = [{"task": "demo.bulk", "payload": {"i": i}} for i in range(300)]
    async with api(settings, REGISTRY, max_batch=500) as c:
        r = await c.post("/v1/tasks/batch", json={"tasks": items})
        assert r.status_code == 202, r.text
        ids = r.json()["ids"]
        assert len(set(ids)) == 300
        msgs = await broker.take(300)
        assert {m.message_id: json.loads(m.body)["i"] for m in msgs} == {i: n for n, i in enumerate(ids)}

        # all-or-nothing validation: one bad item refuses the batch
        mixed = [*items[:5], {"task": "demo.greet", "payload": {}}, *items[:5]]
        bad = await c.post("/v1/tasks/batch", json={"tasks": mixed})
        assert bad.status_code == 422
        assert [e["loc"] for e in bad.json()["detail"]] == [["body", "tasks", 5, "payload", "who"]]

        too_many = await c.post("/v1/tasks/batch", json={"tasks": [{"task": "a.b"}] * 501})
        assert too_many.status_code == 422
        assert "at most 500" in too_many.json()["detail"][0]["msg"]
        empty = await c.post("/v1/tasks/batch", json={"tasks": []})
        assert empty.status_code == 422
    assert await broker.count() == 0


async def test_health_and_readiness(settings: Settings, broker: Broker) -> None:
    async with api(settings) as c:
        health = await c.get("/healthz")
        ready = await c.get("/readyz")
        schema = (await c.get("/openapi.json")).json()
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "broker": "ready"}
    task_in = schema["components"]["schemas"]["TaskIn"]
    assert all(f.get("description") for f in task_in["properties"].values())
    assert await broker.count() is None


async def test_unreachable_broker_answers_503_fast(unique: str) -> None:
    settings = Settings(amqp_url="amqp://guest:guest@127.0.0.1:1/", prefix=unique, connect_timeout=1)
    async with api(settings, wait_ready=False) as c:
        start = time.monotonic()
        one = await c.post("/v1/tasks", json={"task": "a.b"})
        batch = await c.post("/v1/tasks/batch", json={"tasks": [{"task": "a.b"}]})
        ready = await c.get("/readyz")
        health = await c.get("/healthz")
        elapsed = time.monotonic() - start
    for r in (one, batch, ready):
        assert r.status_code == 503, r.text
        assert int(r.headers["Retry-After"]) >= 1
    assert "not connected to RabbitMQ" in one.json()["detail"]
    assert ready.json()["broker"] == "connecting"
    assert health.status_code == 200
    assert elapsed < 1.0
