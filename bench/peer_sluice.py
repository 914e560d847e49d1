"""sluice as a system under test in the peer harness (../shared/bench/peers).

Same contract as the harness's peer modules:

    python peer_sluice.py publish noop|io N   -> prints {"t0","t1","n"} (common.emit_publish_result)

and a task module for ``sluice worker --tasks peer_sluice`` whose tasks call ``common.done()`` as their
last statement. Queue type and prefix come from the environment (SLUICE_QUEUE_TYPE, SLUICE_PREFIX),
set by bench/run.py per variant. The payload is the harness's (~100 B of JSON), validated by a
pydantic model like any real sluice task.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from common import AMQP_URL, IO_SLEEP, done, emit_publish_result, payload
from pydantic import BaseModel

from sluice.policy import Idempotency, RateLimit
from sluice.protocol import TaskMessage
from sluice.publisher import Publisher
from sluice.settings import Settings
from sluice.tasks import task


class BenchPayload(BaseModel):
    i: int
    kind: str
    user: str
    data: str


@task("bench.noop")
async def noop(p: BenchPayload) -> None:
    done()


@task("bench.io")
async def io(p: BenchPayload) -> None:
    await asyncio.sleep(IO_SLEEP)
    done()


# the policy variants (bench/run.py): a rate limit never reached, dedup off; and dedup on (a key per task
# and run, from the message header)
NEVER_REACHED = RateLimit(1_000_000, 1.0)
DEDUP = Idempotency(ttl=600.0)


@task("bench.noop_policy", rate_limit=NEVER_REACHED)
async def noop_policy(p: BenchPayload) -> None:
    done()


@task("bench.io_policy", rate_limit=NEVER_REACHED)
async def io_policy(p: BenchPayload) -> None:
    await asyncio.sleep(IO_SLEEP)
    done()


@task("bench.noop_idem", rate_limit=NEVER_REACHED, idempotency=DEDUP)
async def noop_idem(p: BenchPayload) -> None:
    done()


@task("bench.io_idem", rate_limit=NEVER_REACHED, idempotency=DEDUP)
async def io_idem(p: BenchPayload) -> None:
    await asyncio.sleep(IO_SLEEP)
    done()


# the tracking variant (bench/run.py sluice-*-track, issue 13): state tracked and result stored. Declared only
# when that variant runs (BENCH_SLUICE_POLICY=track), so the other variants load with a sluice that has no
# tracking yet
if os.environ.get("BENCH_SLUICE_POLICY") == "track":

    @task("bench.noop_track", track=True, result=True)
    async def noop_track(p: BenchPayload) -> int:
        done()
        return p.i

    @task("bench.io_track", track=True, result=True)
    async def io_track(p: BenchPayload) -> int:
        await asyncio.sleep(IO_SLEEP)
        done()
        return p.i


async def publish(workload: str, n: int) -> None:
    # the variant's broker (bench/run.py sets SLUICE_AMQP_URL: one node, or the cluster's three)
    settings = Settings(amqp_url=os.environ.get("SLUICE_AMQP_URL", AMQP_URL))
    async with Publisher(settings, name="bench-publisher") as pub:
        await pub.ensure_queue(settings.default_queue)
        flavour = os.environ.get("BENCH_SLUICE_POLICY", "")  # "", "policy", "idem" or "track"
        name = f"bench.{workload}" + (f"_{flavour}" if flavour else "")
        run = os.environ.get("BENCH_RUN", "run")
        t0 = time.time()
        report = await pub.publish_many(
            TaskMessage(name, payload(i), idempotency_key=f"{run}:{i}" if flavour == "idem" else None)
            for i in range(n)
        )
        t1 = time.time()
    if report.failed:
        sys.exit(f"{len(report.failed)} publishes not confirmed, first: {report.failed[0].error}")
    emit_publish_result(t0, t1, n)


def main() -> None:
    if len(sys.argv) != 4 or sys.argv[1] != "publish":
        sys.exit("usage: peer_sluice.py publish noop|io N")
    try:
        import uvloop

        uvloop.run(publish(sys.argv[2], int(sys.argv[3])))
    except ImportError:
        asyncio.run(publish(sys.argv[2], int(sys.argv[3])))


if __name__ == "__main__":
    main()
