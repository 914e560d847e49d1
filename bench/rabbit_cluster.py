"""The 3-node loopback RabbitMQ cluster for the benchmarks that run on it, left as it was found.

``deploy/cluster/rabbitmq-cluster.sh`` (nodes sluice-c1..c3@localhost, AMQP 127.0.0.1:5701-5703) is the
one way the cluster is booted, by hand, by the test fixtures and here:

    with cluster_up() as urls:      # "amqp://...:5701/,amqp://...:5702/,amqp://...:5703/"
        ...                         # SLUICE_AMQP_URL for every process of the run

If all three nodes were running, they are left running; if none was, the cluster is booted (``up``, about
30 s on an idle 2-core box) and taken down after (``down``: the nodes stopped, their data deleted); if only
some were, ``up`` starts the missing ones and they are left running (the script cannot stop one node alone
for good). Never the machine's default node (5672).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["PORTS", "SCRIPT", "admin_url", "cluster_up", "cluster_urls", "running_nodes"]

SCRIPT = Path(__file__).resolve().parent.parent / "deploy" / "cluster" / "rabbitmq-cluster.sh"
PORTS = (5701, 5702, 5703)


def cluster_urls() -> str:
    """``SLUICE_AMQP_URL`` for the whole cluster: the three nodes' URLs, comma-separated."""
    return ",".join(f"amqp://guest:guest@127.0.0.1:{p}/" for p in PORTS)


def admin_url() -> str:
    """One node's URL, for the harness's own queue checks (any node answers for every queue)."""
    return f"amqp://guest:guest@127.0.0.1:{PORTS[0]}/"


def _script(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


def running_nodes() -> int:
    """How many of the three nodes serve AMQP now (``status``: one line per node)."""
    out = _script("status", timeout=120).stdout
    return sum(1 for line in out.splitlines() if " running " in line)


@contextmanager
def cluster_up(timeout: float = 400.0) -> Iterator[str]:
    """The cluster up for the block (booted if needed); afterwards as it was found. Yields its URLs."""
    before = running_nodes()
    if before < len(PORTS):
        print(f"rabbitmq cluster: {before} of {len(PORTS)} nodes running, booting it ...", file=sys.stderr)
        r = _script("up", timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"{SCRIPT.name} up failed ({r.returncode}): {r.stderr}{r.stdout}")
        print(r.stdout.strip(), file=sys.stderr)
    try:
        yield cluster_urls()
    finally:
        if before == 0:
            r = _script("down", timeout=300)
            print(
                f"rabbitmq cluster: {r.stdout.strip() or r.stderr.strip()} (it was not running before)",
                file=sys.stderr,
            )
