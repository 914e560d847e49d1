"""deploy/k8s/keda/worker-queue-length.yaml's trigger, read the way KEDA's RabbitMQ scaler reads it, against
the management API of the loopback cluster (node 1, 127.0.0.1:15701).

The trigger names the work queue ``sluice.q.default`` (the ConfigMap's prefix and default queue). A fair
queue keeps its tasks in sub-queues ``sluice.q.default.f{i}`` (sluice.fair): with the plain queue name
KEDA counted only the tasks outside them, and a backlog of fair tasks never scaled the workers (seen
with that trigger: 5 counted of the test's 45). The tasks are published through the ``sluice`` console script; the queues it declares
(prefix ``sluice``, the manifest's own) are deleted before and after the test.

KEDA's two reads (its rabbitmq scaler, protocol http, mode QueueLength):

* ``useRegex: "true"``: ``GET /api/queues/{vhost}?page=1&use_regex=true&pagination=false&name={queueName}
  &page_size={pageSize}``, then ``operation`` (sum, max, avg) over each queue's ``messages`` (ready +
  unacknowledged; ``messages_ready`` with ``excludeUnacknowledged``);
* otherwise ``GET /api/queues/{vhost}/{queueName}`` and its ``messages``.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import yaml

from support.clusters import RabbitCluster
from support.waiting import wait_until
from support.workers import run_sluice

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
HERE = Path(__file__).resolve().parent
AUTH = "Basic " + base64.b64encode(b"guest:guest").decode()


def trigger_metadata() -> dict[str, str]:
    (so,) = [d for d in yaml.safe_load_all((K8S / "keda" / "worker-queue-length.yaml").read_text()) if d]
    (trigger,) = so["spec"]["triggers"]
    meta: dict[str, str] = trigger["metadata"]
    return meta


def manifest_data(name: str, kind: str, field: str) -> dict[str, str]:
    (doc,) = [d for d in yaml.safe_load_all((K8S / "base" / name).read_text()) if d and d["kind"] == kind]
    data: dict[str, str] = doc[field]
    return data


def api(base: str, path: str, method: str = "GET") -> Any:
    req = urllib.request.Request(base + path, method=method, headers={"Authorization": AUTH})
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
    return json.loads(body) if body else None


def keda_queue_length(meta: dict[str, str], base: str, vhost: str) -> float:
    """The value KEDA's RabbitMQ scaler computes from this trigger's metadata (see the module docstring)."""
    field = "messages_ready" if meta.get("excludeUnacknowledged") == "true" else "messages"
    if meta.get("useRegex") == "true":
        page_size = meta.get("pageSize", "100")
        path = (
            f"/api/queues/{vhost}?page=1&use_regex=true&pagination=false"
            f"&name={quote(meta['queueName'], safe='')}&page_size={page_size}"
        )
        values = [float(q[field]) for q in api(base, path)["items"]]
        op = meta.get("operation", "sum")
        if op == "sum":
            return sum(values)
        if op == "max":
            return max(values, default=0.0)
        assert op == "avg", f"KEDA knows no operation {op!r}"
        return sum(values) / len(values) if values else 0.0
    return float(api(base, f"/api/queues/{vhost}/{quote(meta['queueName'], safe='')}")[field])


def sluice_queues(base: str, vhost: str) -> dict[str, Any]:
    return {q["name"]: q for q in api(base, f"/api/queues/{vhost}") if q["name"].startswith("sluice.")}


def delete_sluice_names(base: str, vhost: str) -> None:
    for name in sluice_queues(base, vhost):
        api(base, f"/api/queues/{vhost}/{quote(name, safe='')}", method="DELETE")
    for x in api(base, f"/api/exchanges/{vhost}"):
        if x["name"].startswith("sluice."):
            api(base, f"/api/exchanges/{vhost}/{quote(x['name'], safe='')}", method="DELETE")


@pytest.fixture
def management(rabbit_cluster: RabbitCluster) -> Iterator[tuple[str, str]]:
    """(node 1's API, the vhost as the Secret's rabbitmq-management-url spells it); the manifest's
    ``sluice.*`` names are deleted before and after the test."""
    secret = manifest_data("secret.yaml", "Secret", "stringData")
    vhost = urlsplit(secret["rabbitmq-management-url"]).path.lstrip("/")
    assert vhost == "%2F"
    base = rabbit_cluster.management_url(1)
    delete_sluice_names(base, vhost)
    yield base, vhost
    delete_sluice_names(base, vhost)


def publish(env: dict[str, str], *args: str, stdin: str | None = None) -> None:
    r = run_sluice(env, "publish", *args, stdin=stdin)
    assert r.returncode == 0, r.stderr


def test_a_fair_backlog_scales_the_workers_and_nothing_else_does(
    rabbit_cluster: RabbitCluster, management: tuple[str, str]
) -> None:
    base, vhost = management
    config = manifest_data("configmap.yaml", "ConfigMap", "data")
    env = {
        **os.environ,
        "SLUICE_AMQP_URL": rabbit_cluster.url(1),
        "SLUICE_PREFIX": config["SLUICE_PREFIX"],
        "SLUICE_DEFAULT_QUEUE": config["SLUICE_DEFAULT_QUEUE"],
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    assert (env["SLUICE_PREFIX"], env["SLUICE_DEFAULT_QUEUE"]) == ("sluice", "default")
    tenants = [json.dumps({"tenant": f"t{i}"}) + "\n" for i in range(40)]
    # counted: 40 fair tasks over default.f0..f3 and 5 plain tasks in sluice.q.default
    publish(env, "--tasks", "keda_tasks", "keda.fair", "-", stdin="".join(tenants))
    publish(env, "plain.work", "-n", "5")
    # not counted: a fair queue of another name, a queue whose name starts the same, a delay tier
    publish(env, "--tasks", "keda_tasks", "keda.other", "-", stdin="".join(tenants[:20]))
    publish(env, "plain.work", "-n", "7", "-q", "default2", "--create-queue")
    publish(env, "plain.work", "-n", "3", "--delay", "10m")

    def counted() -> dict[str, Any] | None:
        q = sluice_queues(base, vhost)
        return q if sum(int(x.get("messages") or 0) for x in q.values()) == 40 + 5 + 20 + 7 + 3 else None

    queues = wait_until(counted, within=30, what="the management API's counts to show every published task")
    fair = {n: int(q["messages"]) for n, q in queues.items() if n.startswith("sluice.q.default.f")}
    assert len(fair) == 4 and sum(fair.values()) == 40 and all(fair.values())  # spread over the shards
    assert int(queues["sluice.q.default"]["messages"]) == 5

    meta = trigger_metadata()
    assert keda_queue_length(meta, base, vhost) == 45
    # what the trigger read before it named the sub-queues: the plain work queue only
    plain = {**meta, "queueName": "sluice.q.default"}
    plain.pop("useRegex")
    assert keda_queue_length(plain, base, vhost) == 5
    # why the expression is anchored: RabbitMQ finds it anywhere in a queue's name
    loose = {**meta, "queueName": r"sluice\.q\.default"}
    assert keda_queue_length(loose, base, vhost) == 45 + 7
