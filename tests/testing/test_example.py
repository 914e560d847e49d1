"""The example test of docs/testing.md, as it is printed there (keep the two the same)."""

from __future__ import annotations

import time

import pytest

from sluice.testing import TestWorker

from . import example_tasks
from .example_tasks import Gateway


@pytest.fixture(autouse=True)
def gateway(monkeypatch: pytest.MonkeyPatch) -> Gateway:
    fresh = Gateway()
    monkeypatch.setattr(example_tasks, "gateway", fresh)
    return fresh


async def test_a_charge_is_retried_until_the_gateway_answers(gateway: Gateway) -> None:
    gateway.down = 2  # the first two calls time out
    async with TestWorker([example_tasks]) as w:
        task_id = w.enqueue("billing.charge", {"customer": "c1", "cents": 500})
        await w.join()

        history = w.history(task_id)
        assert history.kinds == ["retried", "retried", "acked"]
        assert [r.delay for r in history.retries] == [30, 60]  # the backoff, on the fake clock
        assert [r.attempt for r in history.retries] == [2, 3]
        assert gateway.charged == [("c1", 500)]
        assert w.elapsed == pytest.approx(90, abs=1)  # 30 s + 60 s of simulated time
        assert w.dead_letters == []


async def test_the_rate_limit_defers_a_burst_without_spending_attempts(gateway: Gateway) -> None:
    async with TestWorker([example_tasks]) as w:
        ids = [w.enqueue("billing.charge", {"customer": f"c{i}", "cents": 100}) for i in range(6)]
        await w.join()

        assert all(w.history(i).acked for i in ids)
        assert len(gateway.charged) == 6
        assert w.counts()["deferred_limit"] > 0  # over 2/s: deferred, not failed
        assert w.counts()["retried"] == 0
        assert 2 <= w.elapsed <= 4  # six charges at 2 per second


async def test_a_charge_that_never_goes_through_lands_in_the_dlq(gateway: Gateway) -> None:
    gateway.down = 10
    async with TestWorker([example_tasks]) as w:
        history = await w.run("billing.charge", {"customer": "c1", "cents": 500})

        assert history.runs == 5  # max_attempts
        assert history.dead_letter is not None
        assert history.dead_letter.reason == "handler_error"
        assert history.dead_letter.error_type == "GatewayDown"
        assert gateway.charged == []


async def test_the_example_runs_in_milliseconds(gateway: Gateway) -> None:
    gateway.down = 2
    began = time.perf_counter()
    async with TestWorker([example_tasks]) as w:
        for i in range(10):
            w.enqueue("billing.charge", {"customer": f"c{i}", "cents": 100})
        await w.join()
    wall = time.perf_counter() - began
    assert len(gateway.charged) == 10 and w.elapsed >= 30  # two failures: one 30 s backoff
    assert wall < 1.0, f"{wall:.3f}s of wall time for {w.elapsed:g}s of simulated time"
