"""Built-in demo tasks, always loaded, so a fresh stack does something visible.

``demo.noop`` does nothing, ``demo.sleep`` waits, ``demo.fail`` raises, ``demo.flaky`` raises with a given
probability. All on the ``default`` queue.
"""

from __future__ import annotations

import asyncio
import random

from pydantic import BaseModel, ConfigDict, Field

from sluice.tasks import task

__all__ = ["DemoFailure", "FailArgs", "FlakyArgs", "NoopArgs", "SleepArgs", "fail", "flaky", "noop", "sleep"]


class DemoFailure(Exception):
    """What ``demo.fail`` and ``demo.flaky`` raise."""


class NoopArgs(BaseModel):
    model_config = ConfigDict(extra="allow")


class SleepArgs(BaseModel):
    seconds: float = Field(1.0, ge=0, le=3600, description="how long to sleep")


class FailArgs(BaseModel):
    message: str = Field("demo.fail failed, as asked", max_length=1000)


class FlakyArgs(BaseModel):
    probability: float = Field(0.5, ge=0, le=1, description="chance of failing")
    message: str = Field("demo.flaky failed", max_length=1000)


@task("demo.noop")
async def noop(args: NoopArgs) -> None:
    """Do nothing (any payload object is accepted)."""


@task("demo.sleep")
async def sleep(args: SleepArgs) -> None:
    """Sleep ``seconds`` without blocking the worker."""
    await asyncio.sleep(args.seconds)


@task("demo.fail")
async def fail(args: FailArgs) -> None:
    """Raise :class:`DemoFailure` with ``message``."""
    raise DemoFailure(args.message)


@task("demo.flaky")
async def flaky(args: FlakyArgs) -> None:
    """Raise :class:`DemoFailure` with probability ``probability``."""
    if random.random() < args.probability:
        raise DemoFailure(args.message)
