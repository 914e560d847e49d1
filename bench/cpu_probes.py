"""What bench/workers.py reads around a drain: the broker nodes' processes, their CPU (and the workers' and
Redis's) sampled over time, Redis's command counters, and their background before the drain.

Imported after the peer harness's folder is on ``sys.path`` (bench/workers.py puts it there): the CPU of a
process tree is the harness's ``tree_cpu`` (/proc), interpolated with its ``cpu_between``.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import redis

import run as harness  # the peer harness (its folder first on sys.path)

__all__ = ["Sampler", "background", "beam_pids", "redis_counts"]


def beam_pids() -> dict[str, list[int]]:
    """The broker nodes' processes (beam.smp running ``-s rabbit boot``; rabbitmqctl's own beams are not):
    the loopback cluster's three (RABBITMQ_NODENAME=sluice-c*) and the machine's default node (the rest)."""
    found: dict[str, list[int]] = {"cluster": [], "standalone": []}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (d / "comm").read_text().strip() != "beam.smp":
                continue
            if b"rabbit\0boot" not in (d / "cmdline").read_bytes():
                continue
            cluster = b"RABBITMQ_NODENAME=sluice-c" in (d / "environ").read_bytes()
            found["cluster" if cluster else "standalone"].append(int(d.name))
    return {k: sorted(v) for k, v in found.items()}


class Sampler:
    """CPU seconds of the workers, the broker and Redis, sampled every 50 ms (interpolated at any time)."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.samples: dict[str, list[tuple[float, float]]] = {g: [] for g in groups}

    def sample(self) -> None:
        now = time.time()
        for g, pids in self.groups.items():
            self.samples[g].append((now, sum(harness.tree_cpu(p) for p in pids)))

    def between(self, group: str, t0: float, t1: float) -> float:
        return float(harness.cpu_between(self.samples[group], t0, t1))


def redis_counts(rds: redis.Redis) -> tuple[int, int]:
    """(commands processed, those inside scripts included; script calls: EVAL, EVALSHA, FCALL) so far."""
    stats = rds.info("commandstats")
    scripts = sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("eval", "evalsha", "fcall"))
    return int(rds.info("stats")["total_commands_processed"]), scripts


def background(sampler: Sampler, rds: redis.Redis, seconds: float = 1.0) -> dict[str, float]:
    """A second of the broker's and Redis's CPU (s/s) and Redis's commands and script calls (a second)
    with this point's workers stopped: other users of the machine's broker and Redis, and idle timers."""
    cmds0, scripts0 = redis_counts(rds)
    t0 = time.time()
    sampler.sample()
    time.sleep(seconds)
    sampler.sample()
    cmds1, scripts1 = redis_counts(rds)
    t1 = time.time()
    return {
        "broker": sampler.between("broker", t0, t1) / (t1 - t0),
        "redis": sampler.between("redis", t0, t1) / (t1 - t0),
        "cmds": (cmds1 - cmds0) / (t1 - t0),
        "scripts": (scripts1 - scripts0) / (t1 - t0),
    }
