"""docker-compose.yml: valid for docker-compose 1.29, and consistent with the CLI and the settings."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from sluice.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SLUICE_SERVICES = ("producer", "worker", "metrics")
SCHEDULERS = ("scheduler", "scheduler-b")  # two replicas of `sluice scheduler` (docs/schedules.md)
IMAGE_VARS = {"SLUICE_PYTHON_IMAGE", "SLUICE_RABBITMQ_IMAGE", "SLUICE_REDIS_IMAGE", "SLUICE_PROMETHEUS_IMAGE"}


def compose_file() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())  # resolves the <<: merge keys
    return data


def docker_compose() -> str:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail(
            "docker-compose is not installed: `apt-get update && apt-get install -y docker-compose`",
            pytrace=False,
        )
    return exe


def compose_config(project: Path) -> dict[str, Any]:
    """``docker-compose config`` in ``project`` with a clean environment; its output, parsed."""
    done = subprocess.run(
        [
            docker_compose(),
            "--project-directory",
            str(project),
            "-f",
            str(project / "docker-compose.yml"),
            "config",
        ],
        env={"PATH": os.environ["PATH"], "HOME": str(project)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = yaml.safe_load(done.stdout)
    return out


def test_compose_config_without_env_file(tmp_path: Path) -> None:
    shutil.copy(COMPOSE, tmp_path / "docker-compose.yml")
    config = compose_config(tmp_path)
    env = config["services"]["worker"]["environment"]
    assert env["SLUICE_PREFIX"] == "sluice"
    assert env["SLUICE_AMQP_URL"] == "amqp://guest:guest@rabbitmq:5672/"
    assert config["services"]["producer"]["ports"] == ["127.0.0.1:8000:8000/tcp"]


def test_compose_config_with_env_file(tmp_path: Path) -> None:
    shutil.copy(COMPOSE, tmp_path / "docker-compose.yml")
    example = (ROOT / ".env.example").read_text()
    custom = re.sub(r"^SLUICE_PREFIX=.*$", "SLUICE_PREFIX=custom", example, flags=re.M)
    custom = re.sub(r"^RABBITMQ_PASSWORD=.*$", "RABBITMQ_PASSWORD=s3cret", custom, flags=re.M)
    custom = re.sub(r"^SLUICE_CONCURRENCY=.*$", "SLUICE_CONCURRENCY=7", custom, flags=re.M)
    assert custom.count("custom") == 1 and "s3cret" in custom and "=7\n" in custom
    (tmp_path / ".env").write_text(custom)
    services = compose_config(tmp_path)["services"]
    for name in (*SLUICE_SERVICES, *SCHEDULERS):
        env = services[name]["environment"]
        assert env["SLUICE_PREFIX"] == "custom"
        assert env["SLUICE_AMQP_URL"] == "amqp://guest:s3cret@rabbitmq:5672/"
    assert str(services["worker"]["environment"]["SLUICE_CONCURRENCY"]) == "7"
    assert services["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_PASS"] == "s3cret"


def dockerfile_entrypoint() -> list[str]:
    m = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", (ROOT / "deploy" / "Dockerfile").read_text(), re.M)
    assert m, "deploy/Dockerfile has no exec-form ENTRYPOINT"
    entry: list[str] = json.loads(m.group(1))
    return entry


def sluice_argv(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    assert isinstance(command, list), "use the exec (list) form for commands"
    return [*dockerfile_entrypoint(), *map(str, command)]


@pytest.mark.parametrize("name", [*SLUICE_SERVICES, *SCHEDULERS])
def test_every_sluice_command_and_option_exists(name: str) -> None:
    cli = importlib.import_module("sluice_cli.main")  # the package re-exports main(), shadowing the module
    cli._register()
    if name in SCHEDULERS:  # registered as sluice_cli.main will register it (engineer C wires it in)
        importlib.import_module("sluice_cli.schedule_cmd").register(cli.app)
    root = typer.main.get_command(cli.app)
    argv = sluice_argv(compose_file()["services"][name])
    assert argv[:2] == ["sluice", name.removesuffix("-b")]
    with root.make_context("sluice", ["--help"], resilient_parsing=True) as ctx:
        sub = root.get_command(ctx, argv[1])  # type: ignore[attr-defined]
    assert sub is not None, f"`sluice {argv[1]}` does not exist"
    # parsing checks every option name and value (types, ranges) without running the command
    with sub.make_context(f"sluice {argv[1]}", argv[2:]):
        pass


def test_every_sluice_variable_is_a_setting() -> None:
    fields = {f"SLUICE_{name.upper()}" for name in Settings.model_fields}
    services = compose_file()["services"]
    used = {
        key for s in services.values() for key in (s.get("environment") or {}) if key.startswith("SLUICE_")
    }
    assert used, "the compose file sets no SLUICE_ variable"
    assert used <= fields, f"not settings: {sorted(used - fields)}"
    example = set(re.findall(r"^(SLUICE_[A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert example >= IMAGE_VARS, "the image variables are documented in .env.example"
    example -= IMAGE_VARS  # the compose file's, not the services' settings
    assert example <= fields, f".env.example names non-settings: {sorted(example - fields)}"
    # every variable .env.example documents is used by the compose file
    documented = set(re.findall(r"^([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))
    documented -= {"COMPOSE_PROFILES"}  # docker-compose's own variable: turns Grafana's profile on
    referenced = set(re.findall(r"\$\{([A-Z_]+)[:}-]", COMPOSE.read_text()))
    assert documented == referenced


def test_service_shape() -> None:
    services = compose_file()["services"]
    # every image from a variable whose default is the official image
    assert services["rabbitmq"]["image"] == "${SLUICE_RABBITMQ_IMAGE:-rabbitmq:3.13-management}"
    assert "check_local_alarms" in " ".join(services["rabbitmq"]["healthcheck"]["test"])
    assert services["redis"]["image"] == "${SLUICE_REDIS_IMAGE:-redis:7}"
    assert services["prometheus"]["image"] == "${SLUICE_PROMETHEUS_IMAGE:-prom/prometheus:v2.53.0}"
    assert (
        services["producer"]["build"]["args"]["SLUICE_PYTHON_IMAGE"]
        == "${SLUICE_PYTHON_IMAGE:-python:3.11-slim}"
    )
    for name in SLUICE_SERVICES:
        s = services[name]
        assert s["build"]["dockerfile"] == "deploy/Dockerfile"
        assert s["healthcheck"]["test"], f"{name} has no healthcheck"
        for broker in ("rabbitmq", "redis"):
            assert s["depends_on"][broker]["condition"] == "service_healthy"
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker  # --scale worker=N works
    metrics = services["metrics"]
    assert all(str(p).startswith("127.0.0.1:") for p in metrics.get("ports", []))
    for name, s in services.items():  # nothing listens on the host's public interfaces
        assert all(str(p).startswith("127.0.0.1:") for p in s.get("ports", [])), name


def test_two_scheduler_replicas_in_the_same_image_with_a_healthcheck() -> None:
    services = compose_file()["services"]
    a, b = (services[n] for n in SCHEDULERS)
    assert a == b  # the same service twice: one leads, the other stands by
    assert a["image"] == services["worker"]["image"] and a["build"]["dockerfile"] == "deploy/Dockerfile"
    assert a["healthcheck"]["test"][3:] == ["http", "http://127.0.0.1:9110/healthz"]
    assert "--port" in a["command"] and a["command"][a["command"].index("--port") + 1] == "9110"
    assert "ports" not in a and a["expose"] == ["9110"]  # internal network: Prometheus scrapes it
    for broker in ("rabbitmq", "redis"):
        assert a["depends_on"][broker]["condition"] == "service_healthy"
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    (job,) = [j for j in scrape if j["job_name"] == "sluice-scheduler"]
    (targets_file,) = job["file_sd_configs"][0]["files"]
    (group,) = yaml.safe_load((ROOT / "deploy" / "prometheus" / targets_file).read_text())
    assert group["targets"] == [f"{n}:9110" for n in SCHEDULERS]


def test_healthcheck_scripts_exist() -> None:
    for name in (*SLUICE_SERVICES, *SCHEDULERS):
        test = compose_file()["services"][name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "/app/deploy/healthcheck.py"]
        assert (ROOT / "deploy" / "healthcheck.py").is_file()
        assert test[3] in ("http", "amqp-connection")


def producer_settings(env: dict[str, Any]) -> Settings:
    """The settings the producer container reads from its compose environment."""
    values = {k.removeprefix("SLUICE_").lower(): str(v) for k, v in env.items() if k.startswith("SLUICE_")}
    return Settings.model_validate(values)


def test_producer_starts_with_no_setup_and_auth_can_be_turned_on(tmp_path: Path) -> None:
    """`docker compose up` needs no step: inside the network the producer binds 0.0.0.0, which with
    auth on and no token would refuse to start, so compose states auth off (its port is published on
    the host's loopback only; docs/deploy.md says the risk). .env turns it on with tokens."""
    from sluice_producer import _auth

    shutil.copy(COMPOSE, tmp_path / "docker-compose.yml")
    producer = compose_config(tmp_path)["services"]["producer"]
    assert producer["ports"] == ["127.0.0.1:8000:8000/tcp"]
    assert producer["environment"]["SLUICE_API_AUTH"] == "off"
    assert _auth.resolve(producer_settings(producer["environment"]), "0.0.0.0") is None

    example = (ROOT / ".env.example").read_text()
    custom = re.sub(r"^SLUICE_API_AUTH=.*$", "SLUICE_API_AUTH=on", example, flags=re.M)
    custom = re.sub(r"^SLUICE_API_TOKENS=.*$", "SLUICE_API_TOKENS=tok-a,tok-b", custom, flags=re.M)
    (tmp_path / ".env").write_text(custom)
    producer = compose_config(tmp_path)["services"]["producer"]
    tokens = _auth.resolve(producer_settings(producer["environment"]), "0.0.0.0")
    assert tokens is not None and tokens.accepts(b"tok-b") and not tokens.accepts(b"tok-c")
