"""Real ``sluice worker`` processes for the tests: started with task modules importable, watched until
they consume, stopped gracefully (SIGTERM, then the exit status), their log kept in a file.

    env = worker_env(amqp_url, redis_url, prefix, HERE)       # HERE: where the task module lives
    w = WorkerProcess(["--tasks", "e2e_tasks"], env, tmp_path / "worker.log")
    w.wait_consuming(amqp_url, f"{prefix}.q.default")
    ...
    assert w.terminate(timeout=30) == 0, w.stderr()

    # burst mode: the worker ends by itself once the work is done
    assert WorkerProcess(["--tasks", "e2e_tasks", "--burst"], env, log).wait(60) == 0

The log is a file, never a pipe nobody reads (a full pipe would stall the worker).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from support.queues import queue_state
from support.waiting import wait_until

__all__ = ["SLUICE", "SLUICE_WORKER", "TESTS", "WorkerProcess", "run_sluice", "stop_all", "worker_env"]

TESTS = Path(__file__).resolve().parent.parent  # tests/: `support` importable in the child too
SLUICE = str(Path(sys.executable).with_name("sluice"))  # the installed console script, as a user runs it
SLUICE_WORKER = [SLUICE, "worker"]


def run_sluice(
    env: Mapping[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``sluice ARGS``: the console script in a subprocess, to its end (at most 60 s)."""
    return subprocess.run([SLUICE, *args], env=env, input=stdin, capture_output=True, text=True, timeout=60)


def worker_env(
    amqp_url: str, redis_url: str | None, prefix: str, *paths: Path | str, **extra: str
) -> dict[str, str]:
    """This environment without its SLUICE_ variables, plus the test's brokers (``redis_url`` None:
    none set) and prefix, ``paths`` (the task modules' folders) and tests/ on PYTHONPATH, and
    ``extra`` variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    path = [*(str(p) for p in paths), str(TESTS), os.environ.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
    env |= {"SLUICE_AMQP_URL": amqp_url, "SLUICE_PREFIX": prefix}
    if redis_url is not None:
        env["SLUICE_REDIS_URL"] = redis_url
    return env | extra


class WorkerProcess:
    """``sluice worker ARGS`` (or ``command ARGS``) in a subprocess, its stdout and stderr in ``log``."""

    def __init__(
        self,
        args: Sequence[str],
        env: dict[str, str],
        log: Path,
        command: Sequence[str] | None = None,
    ) -> None:
        self.log = log
        with log.open("wb") as err:
            self.proc = subprocess.Popen(
                [*(command or SLUICE_WORKER), *args],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_consuming(self, amqp_url: str, queue: str, consumers: int = 1, within: float = 30) -> None:
        """Until ``queue`` (a RabbitMQ name) has ``consumers`` consumers; fails at once if the worker died."""

        def consuming() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"the worker exited {self.proc.returncode}: {self.stderr()[-2000:]}")
            return (queue_state(amqp_url, queue) or (0, 0))[1] >= consumers

        wait_until(consuming, within, f"{consumers} consumers on {queue}")

    def wait(self, timeout: float) -> int:
        """The exit status of a worker that ends by itself (``--burst``); killed if it overstays."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"worker did not exit within {timeout}s: {self.stderr()[-2000:]}") from None

    def terminate(self, timeout: float) -> int:
        """SIGTERM (a drain), then the exit status (killed if it overstays ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        """SIGKILL, if it still runs, and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def stop_all(workers: Sequence[WorkerProcess], timeout: float = 15) -> list[int | None]:
    """SIGTERM to every worker still running, then each one's exit status (killed if it overstays
    ``timeout``: its status is then the kill's)."""
    for w in workers:
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGTERM)
    for w in workers:
        with contextlib.suppress(AssertionError):
            w.wait(timeout)
    return [w.proc.returncode for w in workers]
