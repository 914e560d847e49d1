"""What tests/scheduler/test_fair_fires.py loads with ``--tasks sched_fair_tasks``: a fair task of queue
``schedfair`` (its tenant the payload's ``tenant``) and a schedule firing it every second for tenant
``t1``. No worker runs it: the test reads where the fires landed."""

from __future__ import annotations

from pydantic import BaseModel

from sluice import task
from sluice.schedules import every


class Tenanted(BaseModel):
    tenant: str


@task("sched.fair", queue="schedfair", fair="tenant")
async def fair(p: Tenanted) -> None: ...


fairtick = every("1s", name="fairtick", task="sched.fair", payload={"tenant": "t1"})
