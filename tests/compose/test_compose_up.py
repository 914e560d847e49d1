"""`docker-compose up` for real: the stack boots, runs tasks, and loses none when containers die.

Needs a Docker engine and the images (`make compose-test` builds the stand-ins with `make images` and
passes deploy/images/local.env in ``SLUICE_COMPOSE_ENV_FILE``). Without an engine the module fails in
one line that says how to start one; it is never skipped. The stack runs as its own compose project
on host ports of its own (beside the machine's RabbitMQ and Redis), and is removed with ``down -v``.

Booted: rabbitmq, redis, producer, worker x3, scheduler x2 (scheduler, scheduler-b), metrics, prometheus. Grafana is left out: it has no
Debian package and no registry answers here, so no image of it can be had; its dashboard keeps its
static checks in tests/deploy/test_monitoring.py.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

pytestmark = [pytest.mark.compose, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BOOTED = ["rabbitmq", "redis", "producer", "worker", "scheduler", "scheduler-b", "metrics", "prometheus"]
HEALTHY_WITHIN_S = 180  # from `up -d` (images already built) to every health check passing
PORTS = {  # host ports of this stack: never the machine's own brokers' ports
    "RABBITMQ_HOST_PORT": 41672,  # (25672 would be the machine's RabbitMQ distribution port)
    "RABBITMQ_MANAGEMENT_HOST_PORT": 41673,
    "REDIS_HOST_PORT": 41379,
    "PRODUCER_HOST_PORT": 41800,
    "PROMETHEUS_HOST_PORT": 41909,
    "GRAFANA_HOST_PORT": 41300,
}


def engine_or_fail() -> None:
    if shutil.which("docker-compose") is None:
        pytest.fail(
            "docker-compose is not installed: apt-get install docker.io docker-compose", pytrace=False
        )
    done = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
    if done.returncode != 0:
        pytest.fail(
            "no Docker engine answers: start it (as root: dockerd &), then run make compose-test",
            pytrace=False,
        )


@dataclass
class Stack:
    project: str
    env: dict[str, str]

    def compose(
        self, *args: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        files = [
            "-f",
            str(ROOT / "docker-compose.yml"),
            "-f",
            str(ROOT / "tests/compose/docker-compose.test.yml"),
        ]
        env_file = os.environ.get("SLUICE_COMPOSE_ENV_FILE")
        extra = ["--env-file", env_file] if env_file else []
        done = subprocess.run(
            ["docker-compose", "-p", self.project, "--project-directory", str(ROOT), *files, *extra, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            check=False,
        )
        if check:
            assert done.returncode == 0, f"docker-compose {' '.join(args)}: {done.stderr[-3000:]}"
        return done

    def containers(self, service: str) -> list[str]:
        out = self.compose("ps", "-q", service).stdout.split()
        return sorted(out)

    def health(self) -> dict[str, str]:
        """container name -> health status (or state, for a container without a check)."""
        ids = self.compose("ps", "-q").stdout.split()
        out: dict[str, str] = {}
        for cid in ids:
            info = json.loads(
                subprocess.run(
                    ["docker", "inspect", cid], capture_output=True, text=True, timeout=30, check=True
                ).stdout
            )[0]
            state = info["State"]
            out[info["Name"].lstrip("/")] = state.get("Health", {}).get("Status", state["Status"])
        return out

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{PORTS['PRODUCER_HOST_PORT']}"

    def redis(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=PORTS["REDIS_HOST_PORT"], socket_timeout=10)

    def rabbitmqctl(self, *args: str) -> str:
        return self.compose("exec", "-T", "rabbitmq", "rabbitmqctl", "-q", *args, timeout=120).stdout

    def summary(self) -> dict[str, Any]:
        """The metrics service's /api/summary, read inside its container (it publishes no host port)."""
        out = self.compose(
            "exec",
            "-T",
            "metrics",
            "sluice",
            "status",
            "--url",
            "http://127.0.0.1:9108",
            "--json",
            timeout=60,
        ).stdout
        doc: dict[str, Any] = json.loads(out)
        return doc


def eventually(what: str, check: Callable[[], Any], limit_s: float, every: float = 1.0) -> Any:
    """Poll ``check`` until it returns something truthy (bounded); its last answer in the failure."""
    deadline = time.monotonic() + limit_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as e:  # not yet (a container restarting): polled again until the deadline
            last = e
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not within {limit_s:g}s; last: {last!r}")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    engine_or_fail()
    project = "sluicetest" + uuid.uuid4().hex[:6]
    env = {**os.environ, **{k: str(v) for k, v in PORTS.items()}, "COMPOSE_PROJECT_NAME": project}
    s = Stack(project, env)
    try:
        # one build: the three sluice services share the image (compose 1.29 would build it per service)
        s.compose("build", "producer", timeout=900)
        started = time.monotonic()
        s.compose("up", "-d", "--no-build", "--scale", "worker=3", *BOOTED, timeout=600)

        def all_healthy() -> bool:
            states = s.health()
            return len(states) == len(BOOTED) + 2 and all(v == "healthy" for v in states.values())

        eventually("every container healthy", all_healthy, HEALTHY_WITHIN_S, every=2)
        s.env["SLUICE_TEST_HEALTHY_AFTER_S"] = f"{time.monotonic() - started:.1f}"
        yield s
    finally:
        logs = s.compose("logs", "--no-color", "--tail", "200", timeout=120, check=False).stdout
        (Path(os.environ.get("TMPDIR", "/tmp")) / f"{project}.log").write_text(logs)
        s.compose("down", "-v", "--remove-orphans", timeout=300, check=False)


@pytest.fixture(autouse=True)
def three_workers(request: pytest.FixtureRequest) -> None:
    """Every test starts with three running workers, whatever the one before it left."""
    if request.node.name == "test_down_leaves_nothing_behind":
        return
    stack: Stack = request.getfixturevalue("stack")
    stack.compose("up", "-d", "--no-build", "--scale", "worker=3", "--no-recreate", "worker", timeout=300)


def publish(stack: Stack, key: str, numbers: range, seconds: float = 0.0) -> None:
    """Publish compose.mark tasks through the producer's HTTP API (batches of 500), all confirmed."""
    nums = list(numbers)
    with httpx.Client(base_url=stack.api, timeout=60) as c:
        for i in range(0, len(nums), 500):
            body = {
                "tasks": [
                    {"task": "compose.mark", "payload": {"key": key, "n": n, "seconds": seconds}}
                    for n in nums[i : i + 500]
                ]
            }
            r = c.post("/v1/tasks/batch", json=body)
            assert r.status_code == 202, r.text


def runs(stack: Stack, key: str) -> dict[int, int]:
    return {int(k): int(v) for k, v in stack.redis().hgetall(key).items()}


class Ran:
    """How many of ``n`` tasks have run: true once all have, and a failed wait shows the count."""

    def __init__(self, count: int, n: int) -> None:
        self.count, self.n = count, n

    def __bool__(self) -> bool:
        return self.count == self.n

    def __repr__(self) -> str:
        return f"{self.count} of {self.n} ran"


def all_ran(stack: Stack, key: str, n: int) -> Callable[[], Ran]:
    return lambda: Ran(len(runs(stack, key)), n)


def test_every_service_healthy_and_1000_tasks_run(stack: Stack) -> None:
    assert float(stack.env["SLUICE_TEST_HEALTHY_AFTER_S"]) < HEALTHY_WITHIN_S
    assert len(stack.containers("worker")) == 3
    publish(stack, "c:first", range(1000))
    eventually("1,000 runs", all_ran(stack, "c:first", 1000), 120)
    assert set(runs(stack, "c:first").values()) == {1}

    def metrics_say_1000() -> bool:
        done = stack.summary()["totals"]["completed"]
        return bool(done.get("success", 0) >= 1000)

    eventually("the metrics service counts 1,000 completed", metrics_say_1000, 60)
    prom = f"http://127.0.0.1:{PORTS['PROMETHEUS_HOST_PORT']}"

    def target_up() -> bool:
        targets = httpx.get(f"{prom}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        return any(t["labels"]["job"] == "sluice" and t["health"] == "up" for t in targets)

    eventually("Prometheus scrapes the sluice target", target_up, 60)
    query = 'sum(sluice_tasks_completed_total{task="compose.mark",outcome="success"})'

    def prom_count() -> float:
        result = httpx.get(f"{prom}/api/v1/query", params={"query": query}, timeout=10).json()["data"][
            "result"
        ]
        return float(result[0]["value"][1]) if result else 0.0

    assert eventually("Prometheus' query returns 1,000", lambda: prom_count() >= 1000, 60)
    assert prom_count() == 1000


def test_stopping_the_workers_loses_nothing(stack: Stack) -> None:
    """`docker-compose stop worker` mid-load: running tasks finish (each once), the rest wait in the queue."""
    n = 2000  # 3 workers x 64 slots, 1 s each: about 10 s of work, so the stop lands mid-load
    publish(stack, "c:stop", range(n), seconds=1.0)
    eventually("some running", lambda: len(runs(stack, "c:stop")) >= 20, 60, every=0.2)
    try:
        stack.compose("stop", "worker", timeout=120)
        stopped_at = runs(stack, "c:stop")
        assert len(stopped_at) < n, "everything had run before the stop: the test proves nothing"
        time.sleep(2)  # nothing may run while the workers are stopped: a bounded look, not a wait
        assert runs(stack, "c:stop") == stopped_at
    finally:
        stack.compose("start", "worker", timeout=120)
    eventually(f"{n} runs after the restart", all_ran(stack, "c:stop", n), 180)
    assert set(runs(stack, "c:stop").values()) == {1}, "a graceful stop ran a task twice"


def test_a_worker_killed_with_sigkill_has_its_tasks_redelivered(stack: Stack) -> None:
    publish(stack, "c:kill", range(1000), seconds=0.5)
    eventually("some running", lambda: len(runs(stack, "c:kill")) >= 20, 60, every=0.2)
    victim = stack.containers("worker")[0]
    subprocess.run(["docker", "kill", "-s", "SIGKILL", victim], check=True, capture_output=True, timeout=60)
    eventually("1,000 runs after the kill", all_ran(stack, "c:kill", 1000), 180)
    assert min(runs(stack, "c:kill").values()) >= 1


def test_a_broker_restart_loses_nothing(stack: Stack) -> None:
    n = 3000  # 3 workers x 64 slots, 1 s each: about 16 s of work, so the restart lands mid-load
    publish(stack, "c:broker", range(n), seconds=1.0)
    eventually("some running", lambda: len(runs(stack, "c:broker")) >= 20, 60, every=0.2)
    stack.compose("restart", "rabbitmq", timeout=180)
    assert len(runs(stack, "c:broker")) < n, "everything had run before the restart: the test proves nothing"
    eventually(f"{n} runs after the broker restart", all_ran(stack, "c:broker", n), 300)
    # the producer answers 503 + Retry-After while its link reconnects; ready again within a bound
    ready = lambda: httpx.get(f"{stack.api}/readyz", timeout=5).status_code == 200  # noqa: E731
    eventually("the producer is ready again", ready, 60)


def test_a_worker_cut_off_from_the_network(stack: Stack) -> None:
    """One worker's network is disconnected, then connected again: nothing is lost and it consumes again.

    The workers run with a 5 s AMQP heartbeat (tests/compose/docker-compose.test.yml): the broker finds
    the cut-off connection dead after missed heartbeats, hands what it held to the other workers, and
    the worker reconnects. Every bound below is several heartbeat timeouts.
    """
    network = f"{stack.project}_default"
    victim = stack.containers("worker")[-1]
    try:
        subprocess.run(
            ["docker", "network", "disconnect", network, victim], check=True, capture_output=True, timeout=60
        )
        try:
            publish(stack, "c:cut", range(300), seconds=0.05)  # the other two workers take these
            eventually("300 runs while one worker is cut off", all_ran(stack, "c:cut", 300), 180)
        finally:
            subprocess.run(
                ["docker", "network", "connect", network, victim], check=True, capture_output=True, timeout=60
            )
        publish(stack, "c:after", range(300), seconds=0.05)
        eventually("300 runs after the reconnect", all_ran(stack, "c:after", 300), 180)

        def three_consumers() -> bool:
            rows = [
                line.split() for line in stack.rabbitmqctl("list_queues", "name", "consumers").splitlines()
            ]
            return any(r[:2] == ["sluice.q.default", "3"] for r in rows if len(r) >= 2)

        eventually("the cut-off worker consumes again (3 consumers)", three_consumers, 180)
    except AssertionError:
        # what the broker held when the wait failed: ready and unacked per queue, and its consumers
        try:
            held = stack.rabbitmqctl(
                "list_queues", "name", "messages_ready", "messages_unacknowledged", "consumers"
            )
        except Exception as e:  # the broker cannot say: keep the logs anyway
            held = f"list_queues failed: {e}"
        print(held)
        logs = stack.compose("logs", "--no-color", "--tail", "300", timeout=120, check=False).stdout
        logs = f"{held}\n{logs}"
        (Path(os.environ.get("TMPDIR", "/tmp")) / f"{stack.project}-cut-off-test.log").write_text(logs)
        raise


def test_two_schedulers_fire_each_occurrence_once(stack: Stack) -> None:
    """The compose file's two scheduler replicas and an every-second schedule added with the host's
    `sluice schedule add`: one replica leads, the workers run each occurrence's task id exactly once, and
    `sluice status` counts the fires under that leader."""
    sluice = str(Path(sys.executable).with_name("sluice"))
    env = {**os.environ, "SLUICE_REDIS_URL": f"redis://127.0.0.1:{PORTS['REDIS_HOST_PORT']}/0"}
    name = "c-every"
    payload = json.dumps({"key": "c:sched", "n": 0, "ids": "c:sched:ids"})

    def cli(*args: str) -> str:
        done = subprocess.run([sluice, *args], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (args, done.stderr)
        return done.stdout

    cli("schedule", "add", name, "--task", "compose.mark", "--every", "1s", "--payload", payload)
    try:
        ids = lambda: {k.decode(): int(v) for k, v in stack.redis().hgetall("c:sched:ids").items()}  # noqa: E731
        eventually("8 occurrences ran", lambda: len(ids()) >= 8, 90)
    finally:
        cli("schedule", "pause", name)
    (row,) = json.loads(cli("schedule", "ls", "--json"))
    assert row["leader"] and row["last_task_id"].startswith(f"{name}:")
    last = row["last_task_id"]
    eventually("the last fired occurrence ran", lambda: last in ids(), 60)
    got = ids()
    assert set(got.values()) == {1}, f"an occurrence ran twice: {got}"
    occurrences = sorted(int(k.rpartition(":")[2]) for k in got)
    assert all((b - a) % 1000 == 0 for a, b in itertools.pairwise(occurrences)), occurrences
    assert sum(runs(stack, "c:sched").values()) == len(got)  # no run without its own occurrence id

    def status_counts_them() -> dict[str, Any] | None:  # `sluice status --json` in the metrics container
        sched = stack.summary()["scheduler"]
        (r,) = [r for r in sched["schedules"] if r["name"] == name]
        return sched if r["fires"] == len(got) and sched["leader"] == row["leader"] else None

    sched = eventually("sluice status counts every fire under the leader", status_counts_them, 60)
    assert sched["term"] >= 1
    (shown,) = sched["schedules"]
    assert shown["last_lag_ms"] is not None and 0 <= shown["last_lag_ms"] < 5000, shown
    cli("schedule", "rm", name)


def test_down_leaves_nothing_behind(stack: Stack) -> None:
    stack.compose("down", "-v", "--remove-orphans", timeout=300)
    label = f"label=com.docker.compose.project={stack.project}"
    for kind in (["ps", "-a"], ["network", "ls"], ["volume", "ls"]):
        left = subprocess.run(
            ["docker", *kind, "-q", "--filter", label], capture_output=True, text=True, timeout=60, check=True
        ).stdout.split()
        assert left == [], (kind, left)
