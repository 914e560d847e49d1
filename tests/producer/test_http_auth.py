"""Bearer-token auth of the producer API, through a real ``sluice producer`` process.

On when tokens are configured or the bind address is not loopback; a non-loopback bind address with
auth on and no token refuses to start (exit 1, one line). 401 with ``WWW-Authenticate: Bearer`` for
a missing or wrong token, before the body is read; ``/healthz`` and ``/readyz`` stay open. Tokens
never show in logs or ``sluice config``. The metrics service has no endpoint that changes state:
it stays open to read.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from producer_helpers import SLUICE, Broker
from test_http_queues import free_port, producer_env, run_until_exit, running_producer

from sluice.settings import Settings

TOKENS = ("tok-0a8f3c1e9b7d", "tok-5e2d4b6a1c3f")


async def run_producer_until_exit(broker: Broker, *args: str, env: dict[str, str]) -> tuple[int, str]:
    """``sluice producer ARGS`` that must exit by itself: (exit status, stderr)."""
    code, out, err = await run_until_exit(SLUICE, "producer", *args, env=producer_env(broker, **env))
    assert out == b""
    return code, err.decode()


def assert_challenge(r: httpx.Response) -> None:
    assert r.status_code == 401, r.text
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert isinstance(r.json()["detail"], str)


async def test_tokens_are_required_and_checked(broker: Broker, tmp_path: Path) -> None:
    env = {"SLUICE_API_TOKENS": ",".join(TOKENS)}  # on loopback: on because tokens are configured
    body = {"task": "demo.noop", "payload": {"n": 1}}
    async with running_producer(broker, tmp_path / "p.log", env=env) as server:
        async with server.client() as anon:
            missing = await anon.post("/v1/tasks", json=body)
            batch = await anon.post("/v1/tasks/batch", json={"tasks": [body]})
            malformed = await anon.post(
                "/v1/tasks", content=b"{not json", headers={"content-type": "application/json"}
            )
            basic = await anon.post("/v1/tasks", json=body, headers={"Authorization": "Basic dTpw"})
            health = await anon.get("/healthz")
            ready = await anon.get("/readyz")
            doc = (await anon.get("/openapi.json")).json()
        async with server.client("tok-wrong") as wrong_client:
            wrong = await wrong_client.post("/v1/tasks", json=body)
        assert not await broker.count("default"), "an unauthenticated request published"
        async with server.client(TOKENS[1]) as ok_client:
            ok = await ok_client.post("/v1/tasks", json=body)
        (msg,) = await broker.take(1)
    for r in (missing, batch, malformed, basic, wrong):
        assert_challenge(r)
    assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    assert health.status_code == 200 and ready.status_code == 200
    assert ok.status_code == 202, ok.text
    assert msg.message_id == ok.json()["id"]
    # the OpenAPI document declares the scheme on the task endpoints, not on the health checks
    schemes = doc["components"]["securitySchemes"]
    (name,) = schemes
    assert schemes[name]["type"] == "http" and schemes[name]["scheme"] == "bearer"
    for path in ("/v1/tasks", "/v1/tasks/batch"):
        assert doc["paths"][path]["post"]["security"] == [{name: []}]
        assert "401" in doc["paths"][path]["post"]["responses"]
    for path in ("/healthz", "/readyz"):
        assert "security" not in doc["paths"][path]["get"]
    log = server.stderr()
    assert "2 tokens" in log
    assert all(t not in log for t in TOKENS)


async def test_token_file(broker: Broker, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# API tokens\n\n  {TOKENS[0]}  \n")
    env = {"SLUICE_API_TOKEN_FILE": str(tokens), "SLUICE_API_AUTH": "on"}
    async with running_producer(broker, tmp_path / "p.log", env=env) as server:
        async with server.client(TOKENS[1]) as c:
            wrong = await c.post("/v1/tasks", json={"task": "demo.noop"})
        async with server.client(TOKENS[0]) as c:
            ok = await c.post("/v1/tasks", json={"task": "demo.noop"})
        (msg,) = await broker.take(1)
    assert_challenge(wrong)
    assert ok.status_code == 202, ok.text
    assert msg.message_id == ok.json()["id"]


async def test_non_loopback_bind_without_token_refuses_to_start(broker: Broker) -> None:
    code, err = await run_producer_until_exit(broker, "--host", "0.0.0.0", "--port", "1", env={})
    assert code == 1, err
    (line,) = err.splitlines()
    assert line.startswith("sluice: error: refusing to serve the producer API on 0.0.0.0")
    assert "SLUICE_API_TOKENS" in line


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SLUICE_API_AUTH": "on"}, "refusing to serve the producer API on 127.0.0.1"),
        ({"SLUICE_API_TOKEN_FILE": "/nonexistent/tokens"}, "SLUICE_API_TOKEN_FILE /nonexistent/tokens"),
        ({"SLUICE_API_TOKENS": "good-token,sec ret"}, "token #2 has characters"),
        ({"SLUICE_API_AUTH": "maybe"}, "invalid setting api_auth"),
    ],
)
async def test_bad_auth_settings_are_one_line(broker: Broker, env: dict[str, str], expected: str) -> None:
    code, err = await run_producer_until_exit(broker, "--port", "1", env=env)
    assert code == 1, err
    (line,) = err.splitlines()
    assert line.startswith("sluice: error: ") and expected in line, line
    assert "sec ret" not in line and "good-token" not in line


async def test_non_loopback_bind_with_a_token_serves(broker: Broker, tmp_path: Path) -> None:
    env = {"SLUICE_API_TOKENS": TOKENS[0]}
    async with running_producer(broker, tmp_path / "p.log", host="0.0.0.0", env=env) as server:
        async with server.client() as anon:
            assert_challenge(await anon.post("/v1/tasks", json={"task": "demo.noop"}))
        async with server.client(TOKENS[0]) as c:
            ok = await c.post("/v1/tasks", json={"task": "demo.noop"})
        assert ok.status_code == 202, ok.text
        (msg,) = await broker.take(1)
        assert msg.message_id == ok.json()["id"]


async def test_auth_off_is_explicit(broker: Broker, tmp_path: Path) -> None:
    """SLUICE_API_AUTH=off (as docker-compose.yml sets it, the port published on loopback only)."""
    env = {"SLUICE_API_AUTH": "off"}
    async with running_producer(broker, tmp_path / "p.log", host="0.0.0.0", env=env) as server:
        async with server.client() as anon:
            ok = await anon.post("/v1/tasks", json={"task": "demo.noop"})
            doc = (await anon.get("/openapi.json")).json()
        assert ok.status_code == 202, ok.text
        assert "securitySchemes" not in doc["components"]
        assert len(await broker.take(1)) == 1


def test_sluice_config_masks_the_tokens(tmp_path: Path) -> None:
    env = {
        **producer_env(Broker("amqp://guest:guest@127.0.0.1:5672/", "unused")),
        "SLUICE_API_TOKENS": ",".join(TOKENS),
    }
    as_json = subprocess.run(
        [SLUICE, "config", "--json"], env=env, capture_output=True, text=True, timeout=30, check=True
    )
    table = subprocess.run(
        [SLUICE, "config"],
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert json.loads(as_json.stdout)["api_tokens"] == ["***", "***"]
    for out in (as_json.stdout, table.stdout):
        assert all(t not in out for t in TOKENS)
    assert "SLUICE_API_TOKENS" in table.stdout
    assert all(t not in repr(Settings(api_tokens=TOKENS)) for t in TOKENS)  # type: ignore[arg-type]


def test_metrics_service_changes_no_state_and_stays_readable(amqp_url: str, unique: str) -> None:
    """No endpoint of ``sluice metrics`` changes state (so none needs a token, even with tokens set):
    every route answers GET only, /metrics is readable as documented, anything else is 405."""
    env = {
        **producer_env(Broker(amqp_url, unique)),
        "SLUICE_API_TOKENS": TOKENS[0],
        "SLUICE_API_AUTH": "on",
    }
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [SLUICE, "metrics", "--port", str(port)],
        env=env,
        stderr=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # until it answers
            assert proc.poll() is None, "sluice metrics exited"
            assert time.monotonic() < deadline, "sluice metrics did not answer within 30 s"
            try:
                httpx.get(base + "/healthz", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        paths = ("/metrics", "/healthz", "/api/summary", "/")
        for path in paths:
            assert httpx.get(base + path, timeout=10).status_code == 200, path
            for method in ("POST", "PUT", "PATCH", "DELETE"):
                assert httpx.request(method, base + path, timeout=10).status_code == 405, (method, path)
    finally:
        proc.kill()
        proc.wait(10)
