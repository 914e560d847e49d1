"""429s after freezes: GCRA before and after issue 14's "a freeze's end resumes at the rate", in
interleaved rounds against the fake upstream (tests/support/fake_upstream.py), one process.

Three clients (each its own Redis client and limiter, as three workers would have), 32 concurrent
callers each, GCRA 100/s (burst 100) against the upstream's 50/s sliding window per API key; a 429
freezes the key for its Retry-After (``Freezes``), and every decision reads the freeze in the
limiter's script (``freeze=``), as the worker's rate-limit step does. "before" runs the GCRA script as
it was before the change (embedded below), "after" the library's. Prints the 200s and 429s of each
round. Needs Redis on localhost:6379::

    .venv/bin/python bench/freeze_resume.py [--rounds 3] [--seconds 12]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

import httpx
from redis.asyncio import Redis

from sluice.resilience import Freezes, GCRALimiter, KeySpace, Rate
from sluice.resilience._lua_base import build
from sluice.resilience._scripts import Script

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.fake_upstream import FakeUpstream, running_upstream

# the GCRA script before the change: a freeze's end found the bucket full (it refilled while frozen)
BEFORE = build(
    "gcra_before_resume",
    """
local now = now_us()
local fz = frozen(now)
if fz then return {ok = string.format('0 %d 0 0 %d 1', math.ceil(fz - now), now)} end
local a, b, c, peek = string.match(ARGV[2], '(%S+) (%S+) (%S+) (%S+)')
local T, tau, cost = tonumber(a), tonumber(b), tonumber(c)
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local new_tat = tat + T * cost
local diff = now - (new_tat - tau)
if diff < 0 then
  local retry = -1
  if T * cost <= tau then retry = math.ceil(-diff) end
  return {ok = string.format('0 %d %d %d %d', retry, math.floor((now - (tat - tau)) / T), math.ceil(tat - now), now)}
end
if peek == '0' then
  redis.call('SET', KEYS[1], string.format('%.17g', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
end
return {ok = string.format('1 0 %d %d %d', math.floor(diff / T), math.ceil(new_tat - now), now)}
""",
)


class BeforeGCRA(GCRALimiter):
    @property
    def _script(self) -> Script:
        return BEFORE


async def one_round(kind: str, up: FakeUpstream, seconds: float, redis_url: str) -> tuple[int, int]:
    prefix = f"bench:{uuid.uuid4().hex[:8]}"
    keys = KeySpace(prefix)
    clients = [Redis.from_url(redis_url) for _ in range(3)]
    make = BeforeGCRA if kind == "before" else GCRALimiter
    limiters = [make(c, Rate(100, 1.0), keys=keys, timeout=5.0) for c in clients]
    freezes = [Freezes(c, keys=keys) for c in clients]
    up.reset()
    end = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=up.url) as http:
        await asyncio.gather(*(http.get("/stats") for _ in range(96)))  # connections opened first

        async def caller(lim: GCRALimiter, fz: Freezes) -> None:
            while time.monotonic() < end:
                d = await lim.try_acquire("api", freeze="api")
                if not d.allowed:
                    await asyncio.sleep(min(d.retry_after, 0.5))
                    continue
                answer = await http.get("/v1/thing", headers={"X-API-Key": "api"})
                if answer.status_code == 429:
                    await fz.freeze("api", float(answer.headers.get("retry-after", "1")))

        await asyncio.gather(*(caller(limiters[i % 3], freezes[i % 3]) for i in range(96)))
    for c in clients:
        found = [k async for k in c.scan_iter(match=f"{prefix}:*")]
        if found:
            await c.delete(*found)
        await c.aclose()
    return up.total_admitted, up.total_refused


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    args = parser.parse_args()
    up = FakeUpstream(limit=50, period=1.0)
    totals = {"before": [0, 0], "after": [0, 0]}
    with running_upstream(up):
        for r in range(args.rounds):
            for kind in ("before", "after"):
                ok, refused = await one_round(kind, up, args.seconds, args.redis_url)
                totals[kind][0] += ok
                totals[kind][1] += refused
                print(f"round {r} {kind:6s}: 200s {ok:5d}  429s {refused:5d}", flush=True)
    b, a = totals["before"], totals["after"]
    print(f"429s after/before: {a[1] / max(1, b[1]):.2f}x; 200s after/before: {a[0] / max(1, b[0]):.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
