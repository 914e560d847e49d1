"""Tasks for the sweep of the documented series: each produces one documented outcome for one reason.

A task name stands for its scenario in the metrics (``sluice_tasks_completed_total{task=...}``), so each
declares only the policy its scenario needs: an outcome counted under its name has one possible reason.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from sluice import Throttled, task
from sluice.policy import Breaker, Concurrency, Idempotency, RateLimit, RetryBudgetPolicy
from sluice.resilience import BreakerPolicy, ExponentialBackoff, RetryPolicy


class Item(BaseModel):
    n: int = 0


_NO_WAIT = ExponentialBackoff(initial=0.0, jitter="none")


@task("sweep.ok")
async def ok(p: Item) -> None:
    """success."""


@task("sweep.json")
async def json_(p: Item) -> None:
    """Its message's body is not JSON: dead_lettered (not_json)."""


@task("sweep.big")
async def big(p: Item) -> None:
    """Its body is over the worker's SLUICE_MAX_MESSAGE_BYTES: dead_lettered (too_large)."""


@task("sweep.model")
async def model(p: Item) -> None:
    """Its payload fails the model (``n`` not an int): dead_lettered (invalid_payload)."""


@task("sweep.hdr")
async def hdr(p: Item) -> None:
    """Its message has a malformed x-sluice-attempt: dead_lettered (bad_headers)."""


@task("sweep.later")
async def later(p: Item) -> None:
    """Published with a delay: deferred (eta) on its way (a hop to the next delay tier), then success."""


@task("sweep.fail")
async def fail(p: Item) -> None:
    """failed: handler_error."""
    raise RuntimeError(f"item {p.n} fails on purpose")


@task("sweep.flaky", retry=RetryPolicy(max_attempts=2, backoff=_NO_WAIT))
async def flaky(p: Item) -> None:
    """retried (retry), then failed."""
    raise ConnectionError("flaky")


@task(
    "sweep.budget",
    retry=RetryPolicy(max_attempts=3, backoff=_NO_WAIT),
    retry_budget=RetryBudgetPolicy(ratio=0.0, min_per_second=0.0),
)
async def budget(p: Item) -> None:
    """failed: retry_budget_exhausted (a budget that grants no retry at all)."""
    raise ConnectionError("down")


@task("sweep.once", idempotency=True)
async def once(p: Item) -> None:
    """Two with one x-sluice-idempotency-key, one after the other: success, then deduplicated."""


@task("sweep.slowonce", idempotency=Idempotency(lease=3.0))
async def slowonce(p: Item) -> None:
    """Two with one key at once: the second is deferred (in_progress) while the first runs."""
    await asyncio.sleep(1.5)


@task("sweep.rate", rate_limit=RateLimit(1, 30.0, burst=1))
async def rate(p: Item) -> None:
    """One every 30 s: the rest deferred_limit (rate_limited)."""


@task("sweep.pair", concurrency=Concurrency(1, lease=10.0))
async def pair(p: Item) -> None:
    """One at a time fleet-wide, for 1 s: the rest deferred_limit (concurrency)."""
    await asyncio.sleep(1.0)


@task("sweep.throttled")
async def throttled(p: Item) -> None:
    """The upstream answers 429: deferred_limit (throttled), its key frozen for 30 s."""
    raise Throttled(retry_after=30, status=429)


@task("sweep.adaptive", rate_limit="100/s adaptive")
async def adaptive(p: Item) -> None:
    """An adaptive limit throttled: its key frozen for 30 s, and its fleet rate cut below 100/s
    (sluice_rate_limit_effective_rate)."""
    raise Throttled(retry_after=30, status=429)


@task(
    "sweep.guarded",
    breaker=Breaker("sweepbrk", BreakerPolicy(minimum_calls=2, failure_rate=0.5, window=30.0, open_for=60.0)),
)
async def guarded(p: Item) -> None:
    """Always fails: two failures open the breaker, the rest are deferred_breaker (breaker_open)."""
    raise ConnectionError("the dependency is down")


@task("sweep.down", queue="sweepdown", concurrency=1)
async def down(p: Item) -> None:
    """Run by a worker whose Redis is unreachable: deferred (backend_unavailable)."""


@task("sweep.cancelled", track=True)
async def cancelled(p: Item) -> None:
    """Published with a delay and cancelled while it waits in its delay tier (``sluice task cancel``):
    acked without running, cancelled (cancelled); tracked, so its end is a task-handle event."""
