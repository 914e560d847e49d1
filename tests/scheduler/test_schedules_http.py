"""``/v1/schedules`` on a real HTTP server (uvicorn on a loopback port) with the router included in a test-only
FastAPI app, as engineer C's create_app will include it; the real Redis and RabbitMQ."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from redis.asyncio import Redis

from sluice.publisher import Publisher
from sluice.runtime import listen
from sluice.schedules import ScheduleStore
from sluice.settings import Settings
from sluice_producer.schedules_api import schedule_router

from .conftest import drain


@pytest.fixture
async def api(settings: Settings, redis: Redis, unique: str) -> AsyncIterator[httpx.AsyncClient]:
    async with ScheduleStore(redis, unique) as store, Publisher(settings) as publisher:
        app = FastAPI()
        app.include_router(schedule_router(store, lambda: publisher, default_queue=settings.default_queue))
        sock = listen("127.0.0.1", 0)
        server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
        serving = asyncio.ensure_future(server.serve(sockets=[sock]))
        port = sock.getsockname()[1]
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                while not server.started:
                    await asyncio.sleep(0.01)
                yield client
        finally:
            server.should_exit = True
            await serving
            sock.close()
    found = [k async for k in redis.scan_iter(match=f"{unique}:*", count=1000)]
    if found:
        await redis.delete(*found)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"cron": "0 6 * *"}, "bad cron expression '0 6 * *'"),
        ({"cron": "0 6 * * *", "tz": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"every": "5 parsecs"}, "bad duration '5 parsecs'"),
        ({}, "exactly one of --cron and --every"),
        ({"every": "1m", "catch_up": "sometimes"}, "bad catch-up 'sometimes'"),
    ],
)
async def test_a_bad_schedule_is_422_with_the_reason(
    api: httpx.AsyncClient, body: dict[str, str], says: str
) -> None:
    got = await api.post("/v1/schedules", json={"name": "nightly", "task": "demo.noop", **body})
    assert got.status_code == 422, got.text
    [error] = got.json()["detail"]  # FastAPI's shape of a 422 (the OpenAPI document says so)
    assert error["loc"] == ["body"] and says in error["msg"], error


async def test_add_list_pause_resume_run_delete(api: httpx.AsyncClient, amqp_url: str, unique: str) -> None:
    body = {
        "name": "nightly",
        "task": "demo.noop",
        "cron": "0 6 * * *",
        "tz": "Europe/Paris",
        "payload": {"a": 1},
    }
    created = await api.post("/v1/schedules", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["name"] == "nightly" and created.json()["next_fire"] is not None
    assert (await api.post("/v1/schedules", json={**body, "tz": "UTC"})).status_code == 200
    (listed,) = (await api.get("/v1/schedules")).json()
    assert listed["tz"] == "UTC" and listed["paused"] is False
    assert (await api.post("/v1/schedules/nightly/pause")).json()["paused"] is True
    assert (await api.post("/v1/schedules/nightly/resume")).json()["paused"] is False
    ran = await api.post("/v1/schedules/nightly/run")
    assert ran.status_code == 202
    (fired,) = drain(amqp_url, f"{unique}.q.default")
    assert fired.id == ran.json()["task_id"] and fired.schedule == "nightly"
    assert (await api.delete("/v1/schedules/nightly")).status_code == 204
    assert (await api.get("/v1/schedules/nightly")).status_code == 404
    assert (await api.delete("/v1/schedules/nightly")).status_code == 404
    assert (await api.post("/v1/schedules/nightly/run")).status_code == 404
