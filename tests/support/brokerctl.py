"""``rabbitmqctl`` of the broker under test: the machine's own, or, with ``SLUICE_TEST_BROKERS=containers``,
``docker exec`` into the RabbitMQ container the session started (tests/conftest.py sets the variable)."""

from __future__ import annotations

import os
import shlex

__all__ = ["RABBITMQCTL_VAR", "rabbitmqctl_argv"]

RABBITMQCTL_VAR = "SLUICE_TEST_RABBITMQCTL"


def rabbitmqctl_argv() -> list[str]:
    """The command that starts ``rabbitmqctl`` for the broker the tests use."""
    return shlex.split(os.environ.get(RABBITMQCTL_VAR, "rabbitmqctl"))
