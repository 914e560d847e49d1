"""A 3-node RabbitMQ cluster and a 6-node Redis Cluster on loopback, booted once per test run.

Both are the scripts a person runs by hand (``deploy/cluster/rabbitmq-cluster.sh`` and
``redis-cluster.sh``): the session fixtures call ``up`` (idempotent: nodes left running by an earlier,
interrupted run are reused, missing ones started) and ``down`` after the last test (every node stopped,
the data deleted). Never the machine's default RabbitMQ (5672) or Redis (6379):

    rabbit_cluster   RabbitMQ sluice-c1..c3@localhost, AMQP 127.0.0.1:5701-5703, distribution 25701-25703,
                     management HTTP API 127.0.0.1:15701-15703
    redis_cluster    Redis 127.0.0.1:7001-7006, three masters and three replicas, node timeout 2 s

Import the fixtures in a conftest (``tests/cluster/conftest.py`` does).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["RabbitCluster", "RedisClusterNodes", "rabbit_cluster", "redis_cluster"]

ROOT = Path(__file__).resolve().parents[2]
RABBIT_SCRIPT = ROOT / "deploy" / "cluster" / "rabbitmq-cluster.sh"
REDIS_SCRIPT = ROOT / "deploy" / "cluster" / "redis-cluster.sh"
BOOT_TIMEOUT = 400.0  # seconds for `up`: about 30 s for RabbitMQ on an idle 2-core machine, 3 s for Redis


def run_script(script: Path, *args: str, timeout: float = BOOT_TIMEOUT, check: bool = True) -> str:
    """The script's stdout; raises with its output if it fails (``check``)."""
    r = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{script.name} {' '.join(args)} failed ({r.returncode}): {r.stderr}{r.stdout}")
    return r.stdout


@dataclass(frozen=True)
class RabbitCluster:
    ports: tuple[int, ...] = (5701, 5702, 5703)

    def url(self, n: int) -> str:
        """The AMQP URL of node ``n`` (1-3)."""
        return f"amqp://guest:guest@127.0.0.1:{self.ports[n - 1]}/"

    @property
    def urls(self) -> list[str]:
        return [self.url(n) for n in (1, 2, 3)]

    @property
    def amqp_url(self) -> str:
        """``SLUICE_AMQP_URL`` for the whole cluster: the three URLs, comma-separated."""
        return ",".join(self.urls)

    def management_url(self, n: int) -> str:
        """The management HTTP API of node ``n`` (1-3), without credentials (guest/guest)."""
        return f"http://127.0.0.1:{15700 + n}"

    def node_of_port(self, port: int) -> int:
        return self.ports.index(port) + 1

    @staticmethod
    def name(n: int) -> str:
        return f"sluice-c{n}@localhost"

    def kill(self, n: int) -> None:
        """SIGKILL node ``n`` (its beam process), as a crash."""
        run_script(RABBIT_SCRIPT, "kill", str(n), timeout=60)

    def up(self) -> str:
        """Start the nodes that are not running (a killed one rejoins with its data)."""
        return run_script(RABBIT_SCRIPT, "up")

    def status(self) -> str:
        return run_script(RABBIT_SCRIPT, "status", timeout=120, check=False)

    def ctl(self, n: int, *args: str, timeout: float = 60) -> str:
        """``rabbitmqctl -n sluice-cN@localhost ARGS`` (as the script runs it)."""
        r = subprocess.run(
            ["rabbitmqctl", "-q", "-n", self.name(n), *args], capture_output=True, text=True, timeout=timeout
        )
        if r.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed ({r.returncode}): {r.stderr}{r.stdout}")
        return r.stdout

    def running_nodes(self, via: int) -> list[str]:
        return sorted(json.loads(self.ctl(via, "cluster_status", "--formatter", "json"))["running_nodes"])

    def queue_leader(self, queue: str, via: int) -> tuple[int, list[str]]:
        """(node number of the quorum queue's leader, its online members) as node ``via`` sees them."""
        out = self.ctl(via, "list_queues", "name", "leader", "online", "--formatter", "json")
        for row in json.loads(out):
            if row["name"] == queue:
                return int(row["leader"].split("@")[0].removeprefix("sluice-c")), sorted(row["online"])
        raise LookupError(f"no queue {queue} on the cluster")


@dataclass(frozen=True)
class RedisClusterNodes:
    ports: tuple[int, ...] = (7001, 7002, 7003, 7004, 7005, 7006)

    @property
    def url(self) -> str:
        """``SLUICE_REDIS_URL`` with ``SLUICE_REDIS_CLUSTER=true``: any node will do."""
        return "redis://127.0.0.1:7001/0"

    def kill(self, port: int) -> None:
        run_script(REDIS_SCRIPT, "kill", str(port), timeout=60)

    def up(self) -> str:
        return run_script(REDIS_SCRIPT, "up", timeout=120)

    def status(self) -> str:
        return run_script(REDIS_SCRIPT, "status", timeout=60, check=False)


@pytest.fixture(scope="session")
def rabbit_cluster() -> Iterator[RabbitCluster]:
    """The 3-node cluster, up for the whole run (booted by the first test that asks for it)."""
    started = time.monotonic()
    run_script(RABBIT_SCRIPT, "up")
    print(f"rabbitmq cluster up in {time.monotonic() - started:.1f}s")
    try:
        yield RabbitCluster()
    finally:
        run_script(RABBIT_SCRIPT, "down", timeout=300, check=False)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterNodes]:
    """The 6-node Redis Cluster, up for the whole run."""
    run_script(REDIS_SCRIPT, "up", timeout=120)
    try:
        yield RedisClusterNodes()
    finally:
        run_script(REDIS_SCRIPT, "down", timeout=120, check=False)
