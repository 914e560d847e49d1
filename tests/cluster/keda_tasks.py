"""Tasks for the KEDA queue-length test: fair tasks on the default queue (sub-queues ``default.f0..f3``) and
on another queue (``other.f0..f3``), whose sub-queues the default queue's trigger must not count. They are
only published, never run."""

from __future__ import annotations

from pydantic import BaseModel

from sluice import task
from sluice.policy import Fair

SHARDS = 4


class Work(BaseModel):
    tenant: str


@task("keda.fair", queue="default", fair=Fair("tenant", shards=SHARDS))
async def fair_work(p: Work) -> None:
    return None


@task("keda.other", queue="other", fair=Fair("tenant", shards=SHARDS))
async def other_work(p: Work) -> None:
    return None
