"""LimitStore on the in-memory backend: the run-time overrides ``sluice limits set`` writes, without Redis
(the rate-limit step reads them on every delivery, so sluice.testing needs them in memory)."""

from __future__ import annotations

from sluice.limits import LimitStore
from sluice.policy import RateLimit
from sluice.resilience import FakeClock, MemoryBackend


async def test_overrides_are_kept_in_the_backend_and_shared_by_its_stores() -> None:
    clock = FakeClock()
    backend = MemoryBackend(clock=clock)
    writer = LimitStore.in_memory(backend, "lim", clock=clock.monotonic)
    reader = LimitStore.in_memory(backend, "lim", refresh=2.0, clock=clock.monotonic)
    assert await reader.current("t.a") is None

    await writer.set("t.a", RateLimit.parse("50/s", burst=10))
    await writer.set("t.b", RateLimit.parse("1/m"))
    assert await writer.all() == {"t.a": RateLimit.parse("50/s", burst=10), "t.b": RateLimit.parse("1/m")}
    assert backend.keys("lim:") == [writer.key]
    assert await reader.current("t.a") is None  # its copy is at most 2 s old
    clock.advance(2)
    assert await reader.current("t.a") == RateLimit.parse("50/s", burst=10)

    assert await writer.remove("t.a") and not await writer.remove("t.a")
    await writer.remove("t.b")
    assert await writer.all() == {} and backend.keys("lim:") == []


async def test_an_unavailable_backend_keeps_the_last_known_overrides() -> None:
    clock = FakeClock()
    backend = MemoryBackend(clock=clock)
    store = LimitStore.in_memory(backend, "lim", clock=clock.monotonic)
    await store.set("t.a", RateLimit.parse("5/s"))
    assert await store.current("t.a") == RateLimit.parse("5/s")
    backend.available = False
    clock.advance(5)
    assert await store.current("t.a") == RateLimit.parse("5/s")
