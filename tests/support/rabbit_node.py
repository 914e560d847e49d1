"""A private RabbitMQ node on a loopback port, for tests that stop and start a broker.

Never the machine's default node: other tests use that one at the same time. The node gets its own
name, ports, data and log directories (owned by the ``rabbitmq`` user, as the start script switches
to it) and a config file whose ``listeners.tcp.local`` pins its AMQP port (the machine's
/etc/rabbitmq/rabbitmq.conf pins 5672, so RABBITMQ_NODE_PORT alone would be ignored).

    with RabbitNode.started(tmp_dir) as node:
        node.url            # amqp://guest:guest@127.0.0.1:<port>/
        node.stop_app()     # the broker stops serving (connections are closed); the node stays up
        node.start_app()

The node is always stopped on exit (``rabbitmqctl stop``, then SIGKILL of the process group it was
started in, if it is still there).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from support.ports import free_port

__all__ = ["RabbitNode", "free_port"]

BOOT_TIMEOUT = 90.0  # seconds; a boot takes about 9 s on an idle machine


class RabbitNode:
    def __init__(self, base: Path) -> None:
        self.name = f"sluicet{uuid.uuid4().hex[:8]}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.base = base
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @classmethod
    @contextlib.contextmanager
    def started(cls, base: Path) -> Iterator[RabbitNode]:
        if shutil.which("rabbitmq-server") is None or shutil.which("rabbitmqctl") is None:
            raise RuntimeError("rabbitmq-server/rabbitmqctl not found: a private RabbitMQ node needs them")
        node = cls(base)
        try:
            node.start()
            yield node
        finally:
            node.stop()

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_PID_FILE": str(self.base / "node.pid"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "node.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
        }

    def start(self) -> None:
        for d in ("mnesia", "log"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        (self.base / "node.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )
        (self.base / "enabled_plugins").write_text("[].\n")
        shutil.chown(self.base, "rabbitmq", "rabbitmq")
        for p in self.base.rglob("*"):
            shutil.chown(p, "rabbitmq", "rabbitmq")
        self._log = (self.base / "server.out").open("wb")
        self._proc = subprocess.Popen(
            ["rabbitmq-server"],
            env=self._env(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killed as one if it will not stop
        )
        # `wait PIDFILE`: until the pid file exists and the app runs (await_startup fails at once while
        # the node is not yet registered with epmd)
        self.ctl(
            "wait",
            str(self.base / "node.pid"),
            "--timeout",
            str(int(BOOT_TIMEOUT)),
            timeout=BOOT_TIMEOUT + 10,
        )
        self.wait_serving()

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """``rabbitmqctl -n NODE ARGS``; raises with the output if it fails."""
        r = subprocess.run(
            ["rabbitmqctl", "-q", "-n", self.name, *args],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if r.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)} failed ({r.returncode}): {r.stderr or r.stdout}"
            )
        return r.stdout

    def stop_app(self) -> None:
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self.wait_serving()

    def wait_serving(self, within: float = 30) -> None:
        """Until the AMQP port accepts connections."""
        deadline = time.monotonic() + within
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"node {self.name} does not listen on {self.port}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired, OSError):
            self.ctl("stop", timeout=60)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        if self._log is not None:
            self._log.close()


@contextlib.contextmanager
def private_node() -> Iterator[RabbitNode]:
    """A started node of its own in a fresh directory (not under pytest's 0700 tmp: the node runs as
    rabbitmq), stopped and its directory deleted after."""
    base = Path(tempfile.mkdtemp(prefix="sluice-rabbit-"))
    try:
        with RabbitNode.started(base) as node:
            yield node
    finally:
        shutil.rmtree(base, ignore_errors=True)
