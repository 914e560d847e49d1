"""Tasks the producer tests validate against (imported by name with --tasks)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from sluice.tasks import task


class Greet(BaseModel):
    who: str = Field(min_length=1)
    times: int = 1


@task("demo.greet", queue="mail")
async def greet(p: Greet) -> None:
    return None


@task("demo.plain")
def plain() -> None:
    return None
