"""Shared fixtures: real brokers, unique names.

Which brokers the tests use is chosen deliberately, never by what happens to answer:
``SLUICE_TEST_BROKERS`` is ``local`` (the machine's RabbitMQ and Redis, 127.0.0.1:5672 and :6379),
``containers`` (RabbitMQ and Redis started with testcontainers from ``SLUICE_RABBITMQ_IMAGE`` and
``SLUICE_REDIS_IMAGE``; the session fails if the engine or an image is missing) or ``auto`` (the
default: containers when a Docker engine answers *and* both images are on it or can be pulled, as on
a laptop with a registry; else local, as on a machine whose engine reaches no registry).
``SLUICE_TEST_AMQP_URL`` / ``SLUICE_TEST_REDIS_URL`` name a broker outright and win over all three.
A broker that does not answer fails the session with a message that says how to start one. Never a
silent skip.

The clients every area uses are here once: ``r`` (a blocking Redis client; the test's ``unique*`` keys
are deleted after it) and ``redis`` (an asyncio one). Helpers that are not fixtures live in
``tests/support`` (waits, queue probes, worker processes, the task modules' Redis client).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from urllib.parse import urlsplit

import pytest
import redis as redis_sync
from redis.asyncio import Redis

from support.brokerctl import RABBITMQCTL_VAR, rabbitmqctl_argv

LOCAL_AMQP = "amqp://guest:guest@127.0.0.1:5672/"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"

HOW_TO_START = {
    "amqp": "start RabbitMQ: `rabbitmq-server -detached && rabbitmqctl await_startup`, "
    "or `docker compose up -d rabbitmq`, or set SLUICE_TEST_AMQP_URL",
    "redis": 'start Redis: `redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save ""`, '
    "or `docker compose up -d redis`, or set SLUICE_TEST_REDIS_URL",
}


def _answers(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=1):
            return True
    except OSError:
        return False


def _docker_answers() -> bool:
    """True when a Docker engine answers its /_ping (on DOCKER_HOST or the default socket)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            path = host.removeprefix("unix://")
            if not os.path.exists(path):
                return False
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(2)
            sock.connect(path)
        elif host.startswith("tcp://"):
            parts = urlsplit(host)
            sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 2375), timeout=2)
        else:
            return False
        with sock:
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            head = sock.recv(64)
        return head.startswith(b"HTTP/1.") and b" 200 " in head
    except OSError:
        return False


#: the official images by default, as in docker-compose.yml; `make images` writes local stand-ins' names
IMAGES = {
    "amqp": ("SLUICE_RABBITMQ_IMAGE", "rabbitmq:3.13-management"),
    "redis": ("SLUICE_REDIS_IMAGE", "redis:7"),
}


def _image(kind: str) -> str:
    var, default = IMAGES[kind]
    return os.environ.get(var) or default


def _image_present(image: str) -> bool:
    try:
        r = subprocess.run(["docker", "image", "inspect", image], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def broker_mode() -> str:
    """``local`` or ``containers``, from ``SLUICE_TEST_BROKERS`` (see the module doc)."""
    mode = os.environ.get("SLUICE_TEST_BROKERS", "auto")
    if mode not in ("auto", "local", "containers"):
        pytest.fail(f"SLUICE_TEST_BROKERS={mode!r}: use local, containers or auto", pytrace=False)
    if mode == "auto":
        present = _docker_answers() and all(_image_present(_image(k)) or _pulled(_image(k)) for k in IMAGES)
        return "containers" if present else "local"
    return mode


def _pulled(image: str) -> bool:
    """Pull ``image`` (a laptop with a registry); False at once where no registry answers."""
    try:
        r = subprocess.run(["docker", "pull", "-q", image], capture_output=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def pytest_report_header() -> str:
    mode = os.environ.get("SLUICE_TEST_BROKERS", "auto")
    return f"sluice brokers: SLUICE_TEST_BROKERS={mode} (local, containers or auto; see tests/conftest.py)"


@contextlib.contextmanager
def _container(kind: str) -> Iterator[str]:
    if not _docker_answers():
        pytest.fail(
            "SLUICE_TEST_BROKERS=containers but no Docker engine answers: start dockerd", pytrace=False
        )
    image = _image(kind)
    if not _image_present(image):
        pytest.fail(
            f"SLUICE_TEST_BROKERS=containers but image {image} is not on the engine: run `make images` "
            f"and pass deploy/images/local.env's variables, or pull it",
            pytrace=False,
        )
    # Ryuk, testcontainers' reaper, is an image of its own that no registry here serves; the context
    # manager removes the container itself
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    from testcontainers.core.container import DockerContainer

    port = 5672 if kind == "amqp" else 6379
    with DockerContainer(image).with_exposed_ports(port) as c:
        host, mapped = c.get_container_host_ip(), int(c.get_exposed_port(port))
        url = f"amqp://guest:guest@{host}:{mapped}/" if kind == "amqp" else f"redis://{host}:{mapped}/0"
        _wait_until_it_answers(kind, url, limit_s=120)
        if kind == "amqp":  # tests that ask the broker itself (policies, unacked counts) ask this one
            os.environ[RABBITMQCTL_VAR] = f"docker exec {c.get_wrapped_container().id} rabbitmqctl"
        try:
            yield url
        finally:
            if kind == "amqp":
                os.environ.pop(RABBITMQCTL_VAR, None)


def _wait_until_it_answers(kind: str, url: str, limit_s: float) -> None:
    """A broker in a fresh container accepts TCP before it speaks its protocol: wait for a real answer."""
    import time

    deadline = time.monotonic() + limit_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if kind == "amqp":
                import pika

                pika.BlockingConnection(pika.URLParameters(url)).close()
            else:
                import redis

                redis.Redis.from_url(url, socket_timeout=2).ping()
            return
        except Exception as e:  # not up yet: retried until the deadline
            last = e
            time.sleep(0.5)
    pytest.fail(f"the {kind} container at {url} did not answer within {limit_s:g}s: {last}", pytrace=False)


@contextlib.contextmanager
def _broker_url(kind: str) -> Iterator[str]:
    env = os.environ.get(f"SLUICE_TEST_{kind.upper()}_URL")
    local, port = (LOCAL_AMQP, 5672) if kind == "amqp" else (LOCAL_REDIS, 6379)
    if env:
        yield env
    elif broker_mode() == "containers":
        with _container(kind) as url:
            yield url
    elif _answers(local, port):
        yield local
    else:
        pytest.fail(f"no {kind} broker for the tests: {HOW_TO_START[kind]}", pytrace=False)


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """URL of a real RabbitMQ."""
    with _broker_url("amqp") as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis."""
    with _broker_url("redis") as url:
        yield url


@pytest.fixture
def r(redis_url: str, unique: str) -> Iterator[redis_sync.Redis]:
    """A blocking Redis client; every key starting with this test's ``unique`` is deleted after it."""
    client = redis_sync.Redis.from_url(redis_url)
    yield client
    keys = list(client.scan_iter(f"{unique}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """An asyncio Redis client (closed after the test)."""
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


_PREFIXES: list[str] = []


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> Iterator[str]:
    """A short name unique to this test, for queue prefixes and Redis keys.

    Everything a test declares under this prefix is deleted after it: its queues and exchanges (each
    quorum queue is a Raft group on the broker: hundreds of leftovers slow RabbitMQ down for every later
    test) and, when the test uses ``redis_url``, every key on that Redis starting with it.
    """
    name = "t" + uuid.uuid4().hex[:10]
    _PREFIXES.append(name)
    yield name
    if "amqp_url" in request.fixturenames:
        _delete_prefixes(request.getfixturevalue("amqp_url"), [name], _known_names)
    if "redis_url" in request.fixturenames:
        _delete_keys(request.getfixturevalue("redis_url"), name)


def _delete_keys(redis_url: str, prefix: str) -> None:
    """Delete every key starting with ``prefix`` on ``redis_url`` (the processes a test started, a
    scheduler or a worker, write under its prefix too: their keys are the test's). A test that took
    Redis down and did not bring it back has already failed; its keys are not worth a second error."""
    client = redis_sync.Redis.from_url(redis_url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(f"{prefix}*", count=1000))  # (a test's keys: a few thousand at most)
        for lo in range(0, len(keys), 1000):
            client.unlink(*keys[lo : lo + 1000])
    except redis_sync.RedisError:
        pass
    finally:
        client.close()


def _known_names(prefix: str) -> tuple[list[str], list[str]]:
    """(queues, exchanges) sluice declares under a prefix, without asking the broker."""
    from sluice.topology import DELAY_TIERS_MS

    queues = [f"{prefix}.dlq", f"{prefix}.q.default"] + [f"{prefix}.delay.{t}" for t in DELAY_TIERS_MS]
    exchanges = [f"{prefix}.{x}" for x in ("tasks", "dead", "delay", "requeue", "metrics")]
    return queues, exchanges


def _listed_names(prefix: str) -> tuple[list[str], list[str]]:
    """(queues, exchanges) the broker lists under a prefix (rabbitmqctl; empty lists without it)."""
    found: dict[str, list[str]] = {"queues": [], "exchanges": []}
    for kind in found:
        try:
            out = subprocess.run(
                [*rabbitmqctl_argv(), "-q", f"list_{kind}", "name"],
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        found[kind] = [n for n in out.split() if n.startswith(prefix + ".")]
    return found["queues"], found["exchanges"]


def _delete_prefixes(
    url: str, prefixes: list[str], names: Callable[[str], tuple[list[str], list[str]]]
) -> None:
    import pika

    try:
        conn = pika.BlockingConnection(pika.URLParameters(url))
    except Exception:
        return  # the broker is gone (a disruptive test failed): nothing to tidy
    try:
        for prefix in prefixes:
            queues, exchanges = names(prefix)
            for q in queues:
                ch = conn.channel()
                ch.queue_delete(q)  # deleting a queue that does not exist is fine
                ch.close()
            for ex in exchanges:
                ch = conn.channel()
                ch.exchange_delete(ex)
                ch.close()
    except Exception:
        pass  # tidying must never fail a test
    finally:
        if conn.is_open:
            conn.close()


@pytest.fixture(scope="session", autouse=True)
def _tidy_broker_at_the_end(request: pytest.FixtureRequest) -> Iterator[None]:
    """Queues a test declared under its prefix with names we cannot guess (other queue names)."""
    yield
    if not _PREFIXES:
        return
    url = os.environ.get("SLUICE_TEST_AMQP_URL", LOCAL_AMQP)
    queues, exchanges = _listed_names("t")
    mine = set(_PREFIXES)
    left = [n for n in queues + exchanges if n.split(".", 1)[0] in mine]
    if left:
        _delete_prefixes(
            url, ["t"], lambda _p: ([n for n in left if n in queues], [n for n in left if n in exchanges])
        )
