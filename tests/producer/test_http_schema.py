"""The producer's OpenAPI document says exactly what the server accepts: schemathesis against a real
``sluice producer`` process, with its own /openapi.json.

Checks: no 5xx, every status and answer as documented, no schema-violating request accepted, no
schema-valid request rejected. The fuzzer publishes real tasks: the server runs on the test's unique
prefix, and the queues it made are listed (only configured ones) and deleted after.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from producer_helpers import Broker
from test_http_queues import run_until_exit, running_producer

from support.brokerctl import rabbitmqctl_argv

ST = str(Path(sys.executable).with_name("st"))
TOKEN = "schema-test-token-7c1f"
# the checks run are in schemathesis.toml beside this file
EXAMPLES = 30  # per operation in the fuzzing phase; the run takes about 35 s
ALLOWED = {"default", "a", "mail"}  # SLUICE_QUEUES=a, the default queue, producer_taskdefs' queue


def work_queues(prefix: str) -> set[str]:
    """The work queues under ``prefix`` the broker lists."""
    out = subprocess.run(
        [*rabbitmqctl_argv(), "-q", "list_queues", "name"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    head = f"{prefix}.q."
    return {name.removeprefix(head) for name in out.split() if name.startswith(head)}


@pytest.mark.slow
async def test_schemathesis_finds_no_disagreement(
    broker: Broker, tmp_path: Path, redis_url: str, r: object
) -> None:  # r: the Redis keys under the test's prefix (task handles) are deleted after it
    env = {"SLUICE_API_TOKENS": TOKEN, "SLUICE_QUEUES": "a", "SLUICE_REDIS_URL": redis_url}
    # --max-wait 1: the fuzzer long-polls GET /v1/tasks/{id}?wait=S at the bound for ids that never end
    args = ("--tasks", "producer_taskdefs", "--max-batch", "20", "--max-wait", "1")
    async with running_producer(broker, tmp_path / "producer.log", *args, env=env) as server:
        st_env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        code, out, err = await run_until_exit(
            ST,
            "--config-file",
            str(Path(__file__).with_name("schemathesis.toml")),
            "run",
            f"{server.url}/openapi.json",
            "--max-examples",
            str(EXAMPLES),
            "--seed",
            os.environ.get("SLUICE_TEST_FUZZ_SEED", "20261201"),
            "--generation-database",
            "none",
            "--request-timeout",
            "30",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--no-color",
            env=st_env,
            cwd=tmp_path,
            limit_s=110,
        )
        made = work_queues(broker.prefix)
    report = (out + err).decode(errors="replace")
    assert code == 0, report[-6000:]
    assert "No issues found" in report, report[-6000:]
    assert re.search(r"\b\d{3,} generated", report), report[-3000:]  # it really ran hundreds of cases
    assert made <= ALLOWED, f"the fuzzer made the producer create queues {sorted(made - ALLOWED)}"
    log = server.stderr()
    assert "Traceback" not in log, log[-4000:]
    assert TOKEN not in log


async def test_the_fuzzers_findings(broker: Broker, tmp_path: Path) -> None:
    """What the fuzzer found once, asked directly: ``"delay": false`` was accepted though the schema
    says number or string; any string was schema-valid though a bad duration is a 422."""
    bad: tuple[object, ...] = (False, True, "abc", "31d", "2592001", "1e3s", "")
    good: tuple[object, ...] = ("30S", "1500ms", 0.5, "30d", 2592000)
    async with running_producer(broker, tmp_path / "producer.log") as server, server.client() as c:
        doc = (await c.get("/openapi.json")).json()
        refused = [
            (await c.post("/v1/tasks", json={"task": "demo.noop", "delay": d})).status_code for d in bad
        ]
        accepted = [
            (await c.post("/v1/tasks", json={"task": "demo.noop", "delay": d})).status_code for d in good
        ]
    assert refused == [422] * len(bad)
    assert accepted == [202] * len(good)
    delay = doc["components"]["schemas"]["TaskIn"]["properties"]["delay"]["anyOf"]
    (number,) = [s for s in delay if s.get("type") == "number"]
    (string,) = [s for s in delay if s.get("type") == "string"]
    assert (number["minimum"], number["maximum"]) == (0, 2592000)
    pattern = re.compile(string["pattern"])
    for text in (d for d in bad if isinstance(d, str)):
        assert pattern.search(text) is None, text
    for text in (d for d in good if isinstance(d, str)):
        assert pattern.search(text), text
