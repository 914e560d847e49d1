"""``sluice scheduler`` processes for the tests (the installed console script), and who leads them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import redis as redis_sync

from support.waiting import wait_until
from support.workers import WorkerProcess, worker_env

__all__ = [
    "HERE",
    "SCHEDULER",
    "SLUICE",
    "leader_is",
    "leader_pid",
    "scheduler_env",
    "sluice",
    "start_scheduler",
    "wait_leader",
    "wait_phase",
]

HERE = Path(__file__).resolve().parent
SLUICE = str(Path(sys.executable).with_name("sluice"))
SCHEDULER = [SLUICE, "scheduler"]


def sluice(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The installed console script with ``args``, its output captured (never raises on its status)."""
    return subprocess.run([SLUICE, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def scheduler_env(amqp_url: str, redis_url: str, prefix: str) -> dict[str, str]:
    return worker_env(amqp_url, redis_url, prefix, HERE, SLUICE_QUEUE_TYPE="classic", SLUICE_LOG_LEVEL="INFO")


def start_scheduler(env: dict[str, str], log: Path, *args: str, lease: float = 2.0) -> WorkerProcess:
    argv = ["--tasks", "sched_tasks", "--port", "0", "--lease", str(lease), "--tick", "0.1", *args]
    return WorkerProcess(argv, env, log, command=SCHEDULER)


def leader_pid(r: redis_sync.Redis, prefix: str) -> int | None:
    raw = r.get(f"{prefix}:{{sched}}:leader")
    if raw is None:
        return None
    holder = raw.decode().rpartition("|")[0]
    return int(holder.split("-")[-2])


def leader_is(r: redis_sync.Redis, prefix: str, pid: int) -> bool:
    return leader_pid(r, prefix) == pid


def wait_leader(r: redis_sync.Redis, prefix: str, pid: int | None = None, within: float = 30) -> int:
    """Until a scheduler (the one of ``pid``, if given) leads; its pid."""

    def leads() -> int | None:
        got = leader_pid(r, prefix)
        return got if got is not None and (pid is None or got == pid) else None

    return wait_until(leads, within, f"scheduler {pid or ''} to lead")


def wait_phase(phase: float = 0.5) -> None:
    """Until the wall clock is ``phase`` s past a whole second (half-way between two 1 s occurrences: a
    signal then lands while no fire is in flight)."""
    time.sleep((phase - time.time() % 1.0) % 1.0)
