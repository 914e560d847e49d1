"""The user's door on a Redis Cluster: ``SLUICE_REDIS_CLUSTER=true`` with ``SLUICE_REDIS_URL`` naming one
node, and the ``sluice`` console script's Redis commands work on every key, whichever node holds it.

With a standalone client pointed at one node, most keys live on another master and the node answers
MOVED: ``sluice task cancel`` and ``status`` then failed with exit 1 (seen before the services built
their clients with :func:`sluice.redis_client.redis_client`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from redis.asyncio import RedisCluster

from support.clusters import RedisClusterNodes

SLUICE = Path(sys.executable).with_name("sluice")


def sluice(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SLUICE), *args], env=env, capture_output=True, text=True, timeout=60)


async def test_task_cancel_and_status_through_the_console_script_on_a_cluster(
    redis_cluster: RedisClusterNodes, rc: RedisCluster, cprefix: str
) -> None:
    env = {
        **os.environ,
        "SLUICE_REDIS_URL": redis_cluster.url,
        "SLUICE_REDIS_CLUSTER": "true",
        "SLUICE_PREFIX": cprefix,
    }
    ids = [uuid.uuid4().hex for _ in range(12)]  # their hash tags spread over the three masters
    slots = {await rc.cluster_keyslot(f"{cprefix}:task:{{{i}}}") for i in ids}
    assert len(slots) > 1
    done = sluice(env, "task", "cancel", *ids)
    assert done.returncode == 0, done.stderr
    for i in ids[:3]:
        got = sluice(env, "task", "status", i, "--json")
        assert got.returncode == 0, got.stderr
        assert json.loads(got.stdout)["state"] == "cancelled"
