"""Run-time limits: the Redis store every worker reads, and `sluice limits` (real Redis)."""

from __future__ import annotations

import json
import subprocess

import redis
import redis.asyncio as aioredis

from sluice.limits import LimitStore, effective_rate
from sluice.policy import RateLimit

from .conftest import SLUICE


async def test_store_round_trip_and_cached_reads(redis_url: str, unique: str, r: redis.Redis) -> None:
    now = [0.0]
    client = aioredis.Redis.from_url(redis_url)
    try:
        store = LimitStore(client, unique, refresh=2.0, clock=lambda: now[0])
        reader = LimitStore(client, unique, refresh=2.0, clock=lambda: now[0])
        assert await reader.current("a") is None
        await store.set("a", RateLimit.parse("50/s", burst=5))
        assert await store.all() == {"a": RateLimit(50, 1.0, burst=5)}
        assert await reader.current("a") is None, "read within the refresh period: the cached copy"
        now[0] = 2.0
        assert await reader.current("a") == RateLimit(50, 1.0, burst=5)
        assert await store.remove("a") is True
        assert await store.remove("a") is False
        now[0] = 4.0
        assert await reader.current("a") is None
    finally:
        await client.aclose()


def test_override_keeps_the_declared_tenant_key() -> None:
    declared = RateLimit(10, key="tenant")
    assert effective_rate(declared, None) is declared
    assert effective_rate(declared, RateLimit(3)) == RateLimit(3, key="tenant")
    assert effective_rate(None, RateLimit(3)) == RateLimit(3)


def _sluice(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SLUICE, *args], env=env, capture_output=True, text=True, timeout=30)


def test_limits_cli(env: dict[str, str], r: redis.Redis, unique: str) -> None:
    assert "no run-time limits" in _sluice(env, "limits", "ls").stdout
    out = _sluice(env, "limits", "set", "demo.email", "50/s", "--burst", "10")
    assert out.returncode == 0, out.stderr
    assert _sluice(env, "limits", "set", "demo.sms", "6000/min").returncode == 0
    listed = json.loads(_sluice(env, "limits", "ls", "--json").stdout)
    assert [(r["task"], r["rate"], r["burst"], r["window"], r["effective_rate"]) for r in listed] == [
        ("demo.email", "50/s", 10, "gcra", 50.0),
        ("demo.sms", "6000/min", None, "gcra", 100.0),
    ]
    assert "demo.email" in _sluice(env, "limits", "ls").stdout
    assert r.hget(f"{unique}:limits:{{overrides}}", "demo.email") is not None

    rm = _sluice(env, "limits", "rm", "demo.email")
    assert rm.returncode == 0
    again = _sluice(env, "limits", "rm", "demo.email")
    assert again.returncode == 1
    assert again.stderr.startswith("sluice: error: no run-time limit")
    assert [r["task"] for r in json.loads(_sluice(env, "limits", "ls", "--json").stdout)] == ["demo.sms"]


def test_limits_cli_refuses_bad_input_in_one_line(env: dict[str, str]) -> None:
    for args in (["set", "t", "fast"], ["set", "t", "5/s", "--burst", "0"], ["set", "bad name", "5/s"]):
        out = _sluice(env, "limits", *args)
        assert out.returncode == 2, (args, out.stderr)
        assert out.stderr.startswith("sluice: error:") and "Traceback" not in out.stderr
    down = _sluice({**env, "SLUICE_REDIS_URL": "redis://127.0.0.1:1/0"}, "limits", "ls")
    assert down.returncode == 1
    assert down.stderr.startswith("sluice: error: cannot reach Redis")
