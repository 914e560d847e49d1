"""A process that reports made-up work through the real telemetry path, for the metrics service tests.

    python telemetry_child.py KIND SUCCESS FAILED PUBLISHED

Records the counts, sends snapshots every 0.5 s to SLUICE_PREFIX.metrics, prints "sent" after the
first one, and on SIGTERM sends its final snapshot and exits 0.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from sluice.settings import Settings
from sluice.telemetry import SnapshotPublisher, Telemetry


async def main(kind: str, ok: int, failed: int, published: int) -> None:
    telemetry = Telemetry(kind)
    if kind == "worker":
        telemetry.gauge("in_progress", lambda: 2)
    for i in range(ok):
        telemetry.task_done(
            "demo.echo", "success", queue="default", run_seconds=0.002 * (i % 50), wait_seconds=0.1
        )
    for _ in range(failed):
        telemetry.task_done("demo.fail", "failed", queue="default", run_seconds=0.3, wait_seconds=0.2)
    if published:
        telemetry.published("default", published)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with SnapshotPublisher(Settings(), telemetry, interval=0.5) as pub:
        while pub.sent == 0:
            await asyncio.sleep(0.05)
        print("sent", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
