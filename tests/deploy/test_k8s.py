"""deploy/k8s: valid against Kubernetes' schemas (kubernetes-validate) and KEDA's (a JSON Schema beside this
file), and consistent with the CLI, the settings, the health endpoints and the queue names, as
test_compose.py checks docker-compose.yml. Offline: no cluster, no kubectl, no kustomize (a small loader
renders the kustomizations, which use ``resources`` and ``images`` only)."""

from __future__ import annotations

import copy
import functools
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer
import yaml

from sluice.fair import sub_queues
from sluice.settings import Settings
from sluice.topology import DELAY_TIERS_MS, Topology
from support.ports import free_port
from support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BASE, KEDA = K8S / "base", K8S / "keda"
KEDA_SCHEMA = Path(__file__).with_name("keda-v2.16-v1alpha1.schema.json")
ALTERNATIVE = KEDA / "worker-queue-length.yaml"  # swapped in for worker-busy-slots.yaml, never both
# the first Kubernetes where every field used works by default (PDB unhealthyPodEvictionPolicy: beta in
# 1.27; 1.26's schema has it behind a feature gate, 1.25's not at all), and the newest kubernetes-validate knows
K8S_VERSIONS = ("1.27.0", "1.37.0")
SLUICE = Path(sys.executable).with_name("sluice")
WORKER_PEAK_RSS_MIB = 55.2 * 1000**2 / 1024**2  # docs/benchmarks.md: 52.4-55.2 MB on every workload
INSTALL = (
    "install the test dependencies: `.venv/bin/pip install 'kubernetes-validate>=1.31' 'jsonschema>=4.18'`"
)


def _needed(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        pytest.fail(f"{module} is not installed (these tests are never skipped): {INSTALL}", pytrace=False)


# ---- loading


def documents(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} holds no object"
    return docs


def render(directory: Path) -> list[dict[str, Any]]:
    """What ``kustomize build directory`` gives for a kustomization of ``resources`` only."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    unknown = set(kustomization) - {"apiVersion", "kind", "resources", "images"}
    assert not unknown, (
        f"{directory}: the test's loader renders resources and images only, not {sorted(unknown)}"
    )
    out: list[dict[str, Any]] = []
    for entry in kustomization["resources"]:
        target = (directory / entry).resolve()
        out += render(target) if target.is_dir() else documents(target)
    for image in kustomization.get("images", []):  # what `kustomize edit set image` writes
        for doc in out:
            for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                name, _, tag = c["image"].partition(":")
                if name == image["name"]:
                    c["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    return out


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def all_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in manifest_files() for doc in documents(path)]


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def base() -> list[dict[str, Any]]:
    return render(BASE)


def config_map() -> dict[str, str]:
    data: dict[str, str] = by_kind(base(), "ConfigMap")["sluice-config"]["data"]
    return data


def secret() -> dict[str, str]:
    data: dict[str, str] = by_kind(base(), "Secret")["sluice-secrets"]["stringData"]
    return data


def deployments() -> dict[str, dict[str, Any]]:
    return by_kind(base(), "Deployment")


def containers() -> list[tuple[str, dict[str, Any]]]:
    return [
        (name, c) for name, d in deployments().items() for c in d["spec"]["template"]["spec"]["containers"]
    ]


CONTAINERS = [f"{d}/{c['name']}" for d, c in containers()]


def container(key: str) -> dict[str, Any]:
    return next(c for d, c in containers() if f"{d}/{c['name']}" == key)


def container_env(c: dict[str, Any]) -> dict[str, str]:
    """The variables the container gets: the ConfigMaps of envFrom, then env (secrets resolved)."""
    env: dict[str, str] = {}
    maps = by_kind(base(), "ConfigMap")
    for source in c.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]]["data"])
    secrets = by_kind(base(), "Secret")
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secrets[ref["name"]]["stringData"][ref["key"]]
    return env


def settings_of(env: dict[str, str], **override: Any) -> Settings:
    values: dict[str, Any] = {k.removeprefix("SLUICE_").lower(): v for k, v in env.items()}
    return Settings.model_validate({**values, **override})


def option(args: list[str], name: str) -> str:
    assert name in args, f"{name} not in {args}"
    return args[args.index(name) + 1]


# ---- the files and their schemas


def listed_files(directory: Path) -> set[Path]:
    """The files a kustomization's resources name, through the kustomizations it names."""
    files: set[Path] = set()
    for entry in yaml.safe_load((directory / "kustomization.yaml").read_text())["resources"]:
        target = (directory / entry).resolve()
        files |= listed_files(target) if target.is_dir() else {target}
    return files


def test_every_file_is_rendered_by_a_kustomization() -> None:
    left_out = set(manifest_files()) - listed_files(BASE) - listed_files(KEDA)
    assert left_out == {ALTERNATIVE}, "every manifest but the alternative ScaledObject is applied"
    assert render(BASE) == render(KEDA)[: len(render(BASE))], "the keda kustomization is the base plus KEDA"


@pytest.mark.parametrize("variant", ["busy-slots", "queue-length"])
def test_no_object_twice(variant: str) -> None:
    objects = render(KEDA)
    if variant == "queue-length":  # the documented swap: the other ScaledObject of the same name
        objects = [o for o in objects if o["kind"] != "ScaledObject"] + documents(ALTERNATIVE)
    keys = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(keys) == len(set(keys))
    assert sum(k == "ScaledObject" for k, _ in keys) == 1  # KEDA lets one ScaledObject drive a Deployment
    assert all("namespace" not in o["metadata"] for o in objects)  # kubectl -n / kustomize namespace: decide


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_valid_against_the_kubernetes_schemas(version: str) -> None:
    kv = _needed("kubernetes_validate")
    checked = 0
    for path, doc in all_objects():
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        try:  # strict: an unknown or misspelt field is an error, not silently dropped
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            pytest.fail(f"{path.relative_to(ROOT)}: {doc['kind']}/{doc['metadata']['name']}: {e.message}")
        checked += 1
    assert checked >= 10


def keda_validator() -> Any:
    jsonschema = _needed("jsonschema")
    schema = json.loads(KEDA_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def keda_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p, d in all_objects() if d["apiVersion"].startswith("keda.sh/")]


def test_keda_objects_valid_against_the_keda_schema() -> None:
    validator = keda_validator()
    kinds = []
    for path, doc in keda_objects():
        errors = sorted(validator.iter_errors(doc), key=str)
        assert not errors, f"{path.relative_to(ROOT)}: {errors[0].message}"
        kinds.append(doc["kind"])
    assert sorted(kinds) == ["ScaledObject", "ScaledObject", "TriggerAuthentication"]


def test_the_keda_schema_rejects_what_keda_would_not_take() -> None:
    validator = keda_validator()
    (so,) = documents(ALTERNATIVE)
    bad_value = copy.deepcopy(so)
    bad_value["spec"]["triggers"][0]["metadata"]["value"] = 512  # the CRD holds strings only
    misspelt = copy.deepcopy(so)
    misspelt["spec"]["minReplicas"] = 1
    no_trigger = copy.deepcopy(so)
    no_trigger["spec"]["triggers"] = []
    for broken in (bad_value, misspelt, no_trigger):
        assert not validator.is_valid(broken)


def test_hpa_behavior_valid_as_kubernetes_autoscaling_v2() -> None:
    kv = _needed("kubernetes_validate")
    for path, so in keda_objects():
        if so["kind"] != "ScaledObject":
            continue
        behavior = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        hpa = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "x"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
                "maxReplicas": so["spec"]["maxReplicaCount"],
                "behavior": behavior,
            },
        }
        for version in K8S_VERSIONS:
            kv.validate(hpa, version, strict=True)
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 60, path


# ---- KEDA: what it scales, on which signal


def test_scaled_objects_drive_the_worker_deployment() -> None:
    objects = render(KEDA) + documents(ALTERNATIVE)
    worker = deployments()["sluice-worker"]
    auths = by_kind(objects, "TriggerAuthentication")
    names = set()
    for so in (o for o in objects if o["kind"] == "ScaledObject"):
        names.add(so["metadata"]["name"])
        assert so["spec"]["scaleTargetRef"] == {"name": worker["metadata"]["name"]}  # apps/v1 Deployment
        assert 1 <= so["spec"]["minReplicaCount"] < so["spec"]["maxReplicaCount"]
        for trigger in so["spec"]["triggers"]:
            if "authenticationRef" in trigger:
                auth = auths[trigger["authenticationRef"]["name"]]
                for ref in auth["spec"]["secretTargetRef"]:
                    assert ref["name"] == "sluice-secrets" and ref["key"] in secret()
    assert names == {"sluice-worker"}  # one name: applying one replaces the other


def test_queue_length_trigger_reads_the_queue_sluice_declares() -> None:
    (so,) = documents(ALTERNATIVE)
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "rabbitmq"
    meta = trigger["metadata"]
    settings = settings_of(config_map(), amqp_url=secret()["amqp-url"], redis_url=secret()["redis-url"])
    topology = Topology.from_settings(settings)
    work = topology.queue(settings.default_queue)
    assert work == "sluice.q.default"
    # the work queue and its fair sub-queues (sluice.fair), as many shards as a Fair may have; read the
    # way RabbitMQ's management API selects them (a search anywhere in the name), summed
    assert meta["useRegex"] == "true" and meta.get("operation", "sum") == "sum"
    named = re.compile(meta["queueName"])
    fair = [topology.queue(q) for q in sub_queues(settings.default_queue, 64)]
    assert all(named.search(q) for q in [work, *fair])
    others = [
        topology.queue(settings.default_queue + "2"),  # another queue whose name starts the same
        topology.queue("other"),
        *(topology.queue(q) for q in sub_queues("other", 4)),
        "x" + work,
        topology.dead_queue,
        *(topology.delay_queue(ms) for ms in DELAY_TIERS_MS),
    ]
    assert not [q for q in others if named.search(q)]
    # the management API counts ready + unacknowledged: busy workers never look idle
    assert meta["protocol"] == "http" and meta["mode"] == "QueueLength"
    assert "excludeUnacknowledged" not in meta
    # a worker's own prefetched and running tasks must not ask for another worker
    assert float(meta["value"]) > settings.prefetch
    url = urlsplit(secret()["rabbitmq-management-url"])
    assert url.scheme in ("http", "https") and url.port == 15672 and url.path == "/%2F"


def metric_names() -> set[str]:
    """The series of docs/metrics.md's table (the metrics service's, swept by tests/metrics)."""
    return set(re.findall(r"^\| `(sluice_[a-z_]+)`", (ROOT / "docs" / "metrics.md").read_text(), re.M))


def test_busy_slots_trigger_counts_handler_time_not_deferrals() -> None:
    (so,) = documents(KEDA / "worker-busy-slots.yaml")
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    meta = trigger["metadata"]
    series = set(re.findall(r"sluice_[a-z_]+", meta["query"]))
    assert series == {"sluice_task_run_seconds_sum", "sluice_up"}
    assert {re.sub(r"_(sum|count|bucket)$", "", s) for s in series} <= metric_names()
    for word in ("deferred", "delay", "rate_limit", "queue_messages", "in_progress"):
        assert word not in meta["query"], "deferrals, parked tasks and waiting deliveries must not scale up"
    settings = settings_of(config_map(), amqp_url=secret()["amqp-url"], redis_url=secret()["redis-url"])
    assert float(meta["threshold"]) == 0.75 * settings.concurrency  # 75 % of a worker's slots
    assert meta["ignoreNullValues"] == "false" and so["spec"]["fallback"]["replicas"] >= 1
    assert urlsplit(meta["serverAddress"]).scheme == "http"


# ---- the CLI, the settings, the health checks


def dockerfile_entrypoint() -> list[str]:
    m = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", (ROOT / "deploy" / "Dockerfile").read_text(), re.M)
    assert m, "deploy/Dockerfile has no exec-form ENTRYPOINT"
    entry: list[str] = json.loads(m.group(1))
    return entry


def help_options(argv: list[str]) -> set[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{argv}: exit {done.returncode}: {done.stderr}"
    _, _, options = done.stdout.partition("Options:")
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", options))


@pytest.mark.parametrize("key", CONTAINERS)
def test_every_command_and_option_exists(key: str) -> None:
    c = container(key)
    assert "command" not in c, "keep the image's ENTRYPOINT (sluice): set args"
    argv = [*dockerfile_entrypoint(), *c["args"]]
    assert argv[0] == "sluice" and argv[1] == key.split("/")[1]
    service = argv[1]
    known = help_options([str(SLUICE), service, "--help"])  # through the user's door: the console script
    used = {a for a in argv[2:] if a.startswith("--")}
    assert used <= known, f"`sluice {service}` has no {sorted(used - known)}"
    # parsing checks the values too (types, ranges) without running the command
    cli = importlib.import_module("sluice_cli.main")  # the package re-exports main(), shadowing the module
    cli._register()
    root = typer.main.get_command(cli.app)
    with root.make_context("sluice", ["--help"], resilient_parsing=True) as ctx:
        sub = root.get_command(ctx, service)  # type: ignore[attr-defined]
    assert sub is not None, f"`sluice {service}` does not exist"
    with sub.make_context(f"sluice {service}", argv[2:]):
        pass


def test_scheduler_is_a_command_of_the_console_script() -> None:
    assert "--lease" in help_options([str(SLUICE), "scheduler", "--help"])


def test_every_variable_is_a_setting_and_every_container_has_valid_settings() -> None:
    fields = {f"SLUICE_{name.upper()}" for name in Settings.model_fields}
    assert set(config_map()) <= fields, f"not settings: {sorted(set(config_map()) - fields)}"
    for key in CONTAINERS:
        env = container_env(container(key))
        assert set(env) <= fields, f"{key}: not settings: {sorted(set(env) - fields)}"
        assert {"SLUICE_AMQP_URL", "SLUICE_REDIS_URL"} <= set(env), key
        settings_of(env)  # every value parses (URL schemes, ranges, queue names)
    plain = json.dumps(config_map())
    assert "@" not in plain and "change-me" not in plain, "credentials belong in the Secret"


def test_every_reference_resolves() -> None:
    objects = base()
    maps, secrets = by_kind(objects, "ConfigMap"), by_kind(objects, "Secret")
    for name, d in deployments().items():
        pod = d["spec"]["template"]
        assert d["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items(), name
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        for c in pod["spec"]["containers"]:
            for source in c.get("envFrom", []):
                assert source["configMapRef"]["name"] in maps
            for var in c.get("env", []):
                if "valueFrom" in var:
                    ref = var["valueFrom"]["secretKeyRef"]
                    assert ref["key"] in secrets[ref["name"]]["stringData"], (name, var["name"])
            for mount in c.get("volumeMounts", []):
                assert mount["name"] in volumes, (name, mount["name"])
        for v in volumes.values():
            if "secret" in v:
                held = secrets[v["secret"]["secretName"]]["stringData"]
                assert all(item["key"] in held for item in v["secret"]["items"])
    for kind in ("Service", "PodDisruptionBudget"):
        for name, o in by_kind(objects, kind).items():
            selector = o["spec"]["selector"]
            selector = selector.get("matchLabels", selector)
            matched = [
                d
                for d in deployments().values()
                if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
            ]
            assert len(matched) == 1, f"{kind}/{name} selects {len(matched)} Deployments"


def ports_of(c: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in c.get("ports", [])}


def probes(c: dict[str, Any]) -> list[dict[str, Any]]:
    return [c[k] for k in ("readinessProbe", "livenessProbe") if k in c]


@pytest.mark.parametrize("key", CONTAINERS)
def test_probes_and_ports_match_the_service(key: str) -> None:
    c = container(key)
    args, ports = c["args"], ports_of(c)
    assert "readinessProbe" in c and "livenessProbe" in c, key
    if ports:  # an HTTP service: it binds every interface of the pod, on the port it declares
        assert option(args, "--host") == "0.0.0.0"
        assert list(ports.values()) == [int(option(args, "--port"))]
    for probe in probes(c):
        for kind in ("httpGet", "tcpSocket"):
            if kind in probe:
                assert probe[kind]["port"] in ports, f"{key}: probe on a port the container does not name"
        if "exec" in probe:  # the image's check script (deploy/Dockerfile copies it there)
            command = probe["exec"]["command"]
            assert command[:2] == ["python3.11", "/app/deploy/healthcheck.py"]
            assert (
                "COPY deploy/healthcheck.py /app/deploy/healthcheck.py"
                in (ROOT / "deploy" / "Dockerfile").read_text()
            )
        assert probe["timeoutSeconds"] < probe["periodSeconds"]


def test_worker_probe_checks_the_connection_to_the_brokers_port() -> None:
    sys.path.insert(0, str(ROOT / "deploy"))
    try:
        healthcheck = importlib.import_module("healthcheck")
    finally:
        sys.path.remove(str(ROOT / "deploy"))
    c = container("sluice-worker/worker")
    for probe in probes(c):
        assert probe["exec"]["command"][2:] == ["auto"]
    env = container_env(c)
    port = urlsplit(env["SLUICE_AMQP_URL"]).port
    assert healthcheck.auto_check([*dockerfile_entrypoint(), *c["args"]], env) == [
        "amqp-connection",
        str(port),
    ]
    # what `auto` reads: the container's PID 1 is the ENTRYPOINT (no shell, no shared process namespace)
    assert not deployments()["sluice-worker"]["spec"]["template"]["spec"].get("shareProcessNamespace", False)


def test_services_and_scrape_annotations() -> None:
    services = by_kind(base(), "Service")
    for name, svc in services.items():
        (d,) = [d for d in deployments().values() if d["metadata"]["name"] == name]
        (c,) = d["spec"]["template"]["spec"]["containers"]
        for port in svc["spec"]["ports"]:
            assert ports_of(c)[port["targetPort"]] == port["port"]
    metrics = services["sluice-metrics"]
    notes = metrics["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true" and notes["prometheus.io/path"] == "/metrics"
    assert (
        int(notes["prometheus.io/port"]) == ports_of(container("sluice-metrics/metrics"))["metrics"] == 9108
    )
    scheduler_pod = deployments()["sluice-scheduler"]["spec"]["template"]["metadata"]["annotations"]
    assert int(scheduler_pod["prometheus.io/port"]) == int(
        option(container("sluice-scheduler/scheduler")["args"], "--port")
    )
    assert "type" not in metrics["spec"], "ClusterIP: /metrics stays inside the cluster"


def test_graceful_termination_outlasts_each_drain() -> None:
    settings = settings_of(config_map(), amqp_url=secret()["amqp-url"], redis_url=secret()["redis-url"])
    pod = {name: d["spec"]["template"]["spec"] for name, d in deployments().items()}
    # the worker drains its running tasks for SLUICE_GRACE_PERIOD, then acks and closes
    assert pod["sluice-worker"]["terminationGracePeriodSeconds"] >= settings.grace_period + 10
    # the producer: preStop, then a long poll may hold the drain SLUICE_PUBLISH_TIMEOUT + 2 s
    (producer,) = pod["sluice-producer"]["containers"]
    pre_stop = producer["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert (
        pod["sluice-producer"]["terminationGracePeriodSeconds"]
        > int(pre_stop[1]) + settings.publish_timeout + 2
    )
    # the scheduler gives its lease up on SIGTERM; a killed one is replaced within the lease
    assert pod["sluice-scheduler"]["terminationGracePeriodSeconds"] > 5
    assert "replicas" not in deployments()["sluice-worker"]["spec"], "kubectl apply would undo the autoscaler"
    pdbs = by_kind(base(), "PodDisruptionBudget")
    assert pdbs["sluice-worker"]["spec"]["maxUnavailable"] == 1
    assert deployments()["sluice-worker"]["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1.0, "Gi": 1024.0}
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", quantity)
    assert m, f"write memory in Ki/Mi/Gi: {quantity}"
    return int(m.group(1)) * units[m.group(2)]


def test_resources_from_the_measured_figures() -> None:
    for key in CONTAINERS:
        res = container(key)["resources"]
        assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"]), key
        assert mebibytes(res["requests"]["memory"]) <= mebibytes(res["limits"]["memory"])
        assert mebibytes(res["requests"]["memory"]) >= 64, f"{key}: every service measured at 55-67 MB"
    settings = settings_of(config_map(), amqp_url=secret()["amqp-url"], redis_url=secret()["redis-url"])
    worker = container("sluice-worker/worker")["resources"]
    assert mebibytes(worker["requests"]["memory"]) > WORKER_PEAK_RSS_MIB
    # room for a full prefetch of the largest messages on top of the measured peak
    full_prefetch = settings.prefetch * settings.max_message_bytes / 1024**2
    assert mebibytes(worker["limits"]["memory"]) >= WORKER_PEAK_RSS_MIB + full_prefetch


def test_producer_auth_on_with_the_mounted_token_file(tmp_path: Path) -> None:
    from sluice_producer import _auth

    c = container("sluice-producer/producer")
    env = container_env(c)
    assert env["SLUICE_API_AUTH"] == "on" and "SLUICE_API_TOKENS" not in env
    path = Path(env["SLUICE_API_TOKEN_FILE"])
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "api-tokens"]
    assert mount["readOnly"] and path.parent == Path(mount["mountPath"])
    volumes = {v["name"]: v for v in deployments()["sluice-producer"]["spec"]["template"]["spec"]["volumes"]}
    (item,) = volumes["api-tokens"]["secret"]["items"]
    assert item["path"] == path.name
    token_file = tmp_path / path.name
    token_file.write_text(secret()[item["key"]])
    tokens = _auth.resolve(settings_of(env, api_token_file=str(token_file)), option(c["args"], "--host"))
    assert tokens is not None and tokens.accepts(secret()[item["key"]].strip().encode())


# ---- the probes against the real services


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def answers_200(url: str) -> bool:
    return get(url) == 200


@pytest.fixture
def service_env(amqp_url: str, redis_url: str, unique: str, r: object, tmp_path: Path) -> dict[str, str]:
    """The manifests' settings on this machine's brokers, under this test's prefix (tidied after it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update(config_map())
    token_file = tmp_path / "api-tokens"
    token_file.write_text(secret()["api-tokens"])
    env.update(
        SLUICE_PREFIX=unique,
        SLUICE_AMQP_URL=amqp_url,
        SLUICE_REDIS_URL=redis_url,
        SLUICE_API_TOKEN_FILE=str(token_file),
    )
    return env


@pytest.mark.parametrize(
    "key", ["sluice-producer/producer", "sluice-metrics/metrics", "sluice-scheduler/scheduler"]
)
def test_http_probes_answer_200_on_the_real_service(
    key: str, service_env: dict[str, str], tmp_path: Path
) -> None:
    c = container(key)
    args = list(c["args"])
    port = free_port()
    args[args.index("--host") + 1] = "127.0.0.1"  # the test listens on loopback only
    args[args.index("--port") + 1] = str(port)
    argv = [str(SLUICE), *args]
    paths = sorted({p["httpGet"]["path"] for p in probes(c) if "httpGet" in p})
    assert paths
    log = tmp_path / "service.log"
    with log.open("w") as out:
        proc = subprocess.Popen(argv, env=service_env, stdout=out, stderr=subprocess.STDOUT)
    try:
        for path in paths:
            url = f"http://127.0.0.1:{port}{path}"
            try:
                wait_until(
                    functools.partial(answers_200, url), within=30, what=f"{key}: GET {path} answers 200"
                )
            except BaseException:
                print(log.read_text())  # the service's own account, shown with the failure
                raise
        proc.send_signal(signal.SIGTERM)  # what the kubelet sends: a drain, exit 0
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---- the scaling signal, measured on real processes

SIGNAL_TASKS = """
import asyncio

from sluice import task
from sluice.policy import RateLimit


@task("k8s.limited", rate_limit=RateLimit(10, 1.0, burst=1))
async def limited() -> None:
    return None


@task("k8s.slow")
async def slow() -> None:
    await asyncio.sleep(0.3)
"""
LIMIT, CONCURRENCY, SLOW_TASKS, SLOW_SECONDS = 10, 16, 300, 0.3


def scrape(port: int) -> dict[str, float]:
    """The series the test follows, summed over their labels, from the metrics service's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as resp:
        text = resp.read().decode()
    out = {"run_seconds": 0.0, "deferred": 0.0, "slow_done": 0.0, "workers": 0.0}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith("sluice_task_run_seconds_sum"):
            out["run_seconds"] += float(value)
        elif name.startswith("sluice_rate_limit_decisions_total") and 'decision="deferred"' in name:
            out["deferred"] += float(value)
        elif name.startswith("sluice_tasks_completed_total") and 'task="k8s.slow"' in name:
            out["slow_done"] += float(value) if 'outcome="success"' in name else 0.0
        elif name == "sluice_workers_alive":
            out["workers"] = float(value)
    return out


def test_handler_time_rises_for_slow_tasks_not_for_a_rate_limited_backlog(
    amqp_url: str, redis_url: str, unique: str, r: object, tmp_path: Path
) -> None:
    """The busy-slots ScaledObject's signal on a real worker and metrics service: a backlog held back by a
    fleet-wide rate limit adds at most about limit x 0.25 s of handler time a second (what more workers
    cannot raise), slow tasks that may run fill the slots (what more workers do raise)."""
    from support.workers import WorkerProcess, worker_env

    (tmp_path / "k8s_signal_tasks.py").write_text(SIGNAL_TASKS)
    env = worker_env(amqp_url, redis_url, unique, tmp_path, SLUICE_CONCURRENCY=str(CONCURRENCY))
    port = free_port()
    with (tmp_path / "metrics.log").open("w") as out:
        metrics = subprocess.Popen(
            [str(SLUICE), "metrics", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    worker = WorkerProcess(["--tasks", "k8s_signal_tasks"], env, tmp_path / "worker.log")
    try:
        worker.wait_consuming(amqp_url, f"{unique}.q.default")
        wait_until(lambda: answers_200(f"http://127.0.0.1:{port}/healthz"), within=30, what="metrics up")
        wait_until(lambda: scrape(port)["workers"] >= 1, within=30, what="the worker reports")

        def publish(task: str, n: int) -> None:
            done = subprocess.run(
                [str(SLUICE), "publish", task, "--count", str(n)],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert done.returncode == 0, done.stderr

        t0, before = time.monotonic(), scrape(port)
        publish("k8s.limited", 400)
        # every task was refused at least once (its first pass through the worker is over)
        wait_until(lambda: scrape(port)["deferred"] >= 350, within=60, what="the backlog deferred")
        t1, after = time.monotonic(), scrape(port)
        limited = (after["run_seconds"] - before["run_seconds"]) / (t1 - t0)

        t2, before = time.monotonic(), scrape(port)
        publish("k8s.slow", SLOW_TASKS)
        wait_until(lambda: scrape(port)["slow_done"] >= SLOW_TASKS, within=60, what="the slow tasks ran")
        t3, after = time.monotonic(), scrape(port)
        slow = (after["run_seconds"] - before["run_seconds"]) / (t3 - t2)
        print(f"busy slots of handler time: {limited:.2f} rate-limited backlog, {slow:.2f} slow tasks")
        assert limited <= LIMIT * 0.25 + 1, "a rate-limited backlog must not look like work for more workers"
        assert slow >= 0.5 * CONCURRENCY, "tasks that may run fill the slots: the signal rises"
        assert after["run_seconds"] - before["run_seconds"] >= SLOW_TASKS * SLOW_SECONDS
    finally:
        for proc in (worker.proc, metrics):
            proc.send_signal(signal.SIGTERM)
        for proc in (worker.proc, metrics):
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
