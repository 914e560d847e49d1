"""Tasks for the metrics tests' real worker: one that succeeds, one that always fails."""

from __future__ import annotations

from pydantic import BaseModel

from sluice import task


class Item(BaseModel):
    n: int


@task("fleet.ok")
async def ok(p: Item) -> None:
    """Succeeds."""


@task("fleet.fail")
async def fail(p: Item) -> None:
    """Fails every time: dead-lettered as handler_error, counted as "failed"."""
    raise RuntimeError(f"item {p.n} fails on purpose")
