"""A RabbitMQ restart: snapshots flow again afterwards and nothing is counted twice. Marked ``disruptive``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from fleet_helpers import Service, end, start_child, until

from support.brokerctl import rabbitmqctl_argv

pytestmark = [pytest.mark.disruptive, pytest.mark.slow]

FLAG = Path("/tmp/sluice-broker-disruption")


def rabbitmqctl(*args: str) -> None:
    subprocess.run([*rabbitmqctl_argv(), *args], check=True, capture_output=True, timeout=120)


def test_snapshots_resume_after_a_broker_restart(service: Service, env: dict[str, str]) -> None:
    worker = start_child(env, "worker", 17, 3, 0)
    try:
        until(lambda: service.summary()["workers_alive"] == 1)
        FLAG.touch()
        try:
            rabbitmqctl("stop_app")
            until(lambda: service.summary()["broker_up"] is False, seconds=30)
            assert service.metrics()  # the service answers through the outage
        finally:
            rabbitmqctl("start_app")
            rabbitmqctl("await_startup")
            FLAG.unlink(missing_ok=True)
        # the child's robust connection comes back; the service opens a new feed
        doc = until(
            lambda: (
                (d := service.summary())["broker_up"]
                and d["workers_alive"] == 1
                and d["processes"][0]["last_seen_seconds"] < 1
                and d
            ),
            seconds=60,
            every=0.5,
        )
        assert doc["totals"]["completed"]["success"] == 17  # the same instance: counted once
        assert doc["totals"]["completed"]["failed"] == 3
    finally:
        end(worker)
