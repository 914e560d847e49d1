"""deploy/cluster/rabbitmq-cluster.sh and redis-cluster.sh: booted and joined (by the session fixtures),
``status`` says what runs, ``up`` again changes nothing, and the Redis one comes down clean and up again."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import redis as redis_sync

from support.clusters import REDIS_SCRIPT, RabbitCluster, RedisClusterNodes, run_script

# the first test to ask for a cluster boots it (about 30 s for RabbitMQ idle; more on a loaded machine)
pytestmark = pytest.mark.timeout(600)

NODES = ["sluice-c1@localhost", "sluice-c2@localhost", "sluice-c3@localhost"]


def test_rabbitmq_cluster_status(rabbit_cluster: RabbitCluster) -> None:
    lines = rabbit_cluster.status().splitlines()
    assert len(lines) == 3, lines
    for n, line in enumerate(lines, start=1):
        assert line.startswith(f"sluice-c{n}@localhost running pid=")
        assert f"amqp=127.0.0.1:570{n} dist=2570{n}" in line
        assert f"running_nodes=[{' '.join(NODES)}]" in line
    again = rabbit_cluster.up()
    assert "(0 node(s) started)" in again and all(n in again for n in NODES)
    assert rabbit_cluster.running_nodes(via=2) == NODES


def test_redis_cluster_status_down_and_up(redis_cluster: RedisClusterNodes) -> None:
    def roles() -> list[str]:
        status = redis_cluster.status()
        assert status.count("cluster_state=ok") == 6, status
        return re.findall(r"role=(\w+)", status)

    assert sorted(roles()) == ["master"] * 3 + ["slave"] * 3
    slots = re.findall(r"slots=\[([^\]]*)\]", redis_cluster.status())
    assert sorted(s for s in slots if s) == ["0-5460", "10923-16383", "5461-10922"]
    assert "(0 node(s) started)" in redis_cluster.up()

    assert run_script(REDIS_SCRIPT, "down", timeout=120).strip() == "redis cluster down"
    status = subprocess.run(["bash", str(REDIS_SCRIPT), "status"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 1 and status.stdout.count(" stopped") == 6
    assert not Path("/var/tmp/sluice-cluster/redis").exists()
    assert "(6 node(s) started)" in redis_cluster.up()
    assert sorted(roles()) == ["master"] * 3 + ["slave"] * 3
    client = redis_sync.RedisCluster(host="127.0.0.1", port=7002)
    try:
        client.set("gt-scripts:{a}", "1")
        assert client.get("gt-scripts:{a}") == b"1"
        client.delete("gt-scripts:{a}")
    finally:
        client.close()
