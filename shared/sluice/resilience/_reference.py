"""Pure-Python models of the algorithms, step for step the same arithmetic as the Lua scripts.

The tests check the scripts against these on generated schedules (same inputs, same replies) and
check the models' invariants with hypothesis on a fake clock. The limiters also run them, on the
local monotonic clock, as the conservative local limit of the fail-open outage policy, and the
in-memory backend (:mod:`sluice.resilience.memory`) runs every decision on them.
Times are microseconds; doubles with the operations in the scripts' order, so results are bit-equal.

A model holds what one script's keys hold and takes the script's arguments per call (as the script
does), so one model serves every primitive sharing a name. Key expiry (the scripts' TTLs) is not in
the models: the in-memory backend keeps it, where each script sets it.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

__all__ = [
    "BreakerModel",
    "BudgetModel",
    "ClaimModel",
    "GCRAModel",
    "GCRAReply",
    "LeaseModel",
    "SlidingLogModel",
    "SlidingWindowModel",
    "WindowReply",
]

#: allowed, retry_after µs (-1 never), remaining, reset_after µs, now
GCRAReply = tuple[int, int, int, int, int]
#: allowed, retry_after µs (-1 never), remaining, now
WindowReply = tuple[int, int, int, int]


@dataclass(slots=True)
class GCRAModel:
    """GCRA: one theoretical arrival time ``tat``; a call fits if ``tat + T*cost - tau <= now``."""

    emission_us: float  # T: microseconds per unit of cost
    tau_us: float  # burst * T
    tat: float | None = None

    def decide(self, now: int, cost: int = 1, peek: bool = False) -> GCRAReply:
        tat: float = now if self.tat is None or self.tat < now else self.tat
        new_tat = tat + self.emission_us * cost
        diff = now - (new_tat - self.tau_us)
        if diff < 0:
            retry = math.ceil(-diff) if self.emission_us * cost <= self.tau_us else -1
            remaining = math.floor((now - (tat - self.tau_us)) / self.emission_us)
            return 0, retry, remaining, math.ceil(tat - now), now
        if not peek:
            self.tat = new_tat
        return 1, 0, math.floor(diff / self.emission_us), math.ceil(new_tat - now), now


@dataclass(slots=True)
class SlidingWindowModel:
    """Sliding-window counter: this window's count plus the last one's, weighted by what is left of it."""

    window_us: int
    limit: int
    index: int | None = None
    current: int = 0
    previous: int = 0

    def decide(self, now: int, cost: int = 1, peek: bool = False) -> WindowReply:
        w, limit = self.window_us, self.limit
        idx = math.floor(now / w)
        c, p = 0, 0
        if self.index == idx:
            c, p = self.current, self.previous
        elif self.index == idx - 1:
            p = self.current
        elapsed = now - idx * w
        est = p * ((w - elapsed) / w) + c
        if est + cost > limit:
            retry = -1
            if cost <= limit:
                if c + cost > limit:
                    retry = (idx + 1) * w - now + math.ceil(w * (1 - (limit - cost) / c))
                else:
                    retry = math.ceil(w * (1 - (limit - cost - c) / p) - elapsed)
                retry = max(retry, 1)
            return 0, retry, max(0, math.floor(limit - est)), now
        if not peek:
            self.index, self.current, self.previous = idx, c + cost, p
        return 1, 0, math.floor(limit - est - cost), now


@dataclass(slots=True)
class SlidingLogModel:
    """The exact sliding log: one stamp per unit admitted; a unit counts while ``stamp >= t - period``.

    ``t`` is the decision's time: ``now``, but never below the newest stamp (stamps never go back); the
    log keeps what is within a period of its newest stamp.
    """

    period_us: int
    limit: int
    stamps: list[int] = field(default_factory=list)  # ascending

    def decide(self, now: int, cost: int = 1, peek: bool = False) -> WindowReply:
        p, limit, stamps = self.period_us, self.limit, self.stamps
        t, n = now, 0
        if stamps:
            t = max(t, stamps[-1])
            # what left the newest stamp's window goes (no later decision counts it: t never goes below
            # the newest stamp); n counts this decision's window
            del stamps[: bisect.bisect_left(stamps, stamps[-1] - p)]
            n = len(stamps) - bisect.bisect_left(stamps, t - p)
        if n + cost > limit:
            retry = stamps[len(stamps) + cost - limit - 1] + p + 1 - t if cost <= limit else -1
            return 0, retry, max(0, limit - n), t
        if not peek and cost > 0:
            stamps.extend([t] * cost)
        return 1, 0, limit - n - cost, t

    def settle(self, now: int, stamp: int, margin: int) -> tuple[int, int]:
        """A unit admitted at ``stamp`` whose call ended ``now``: stamped again ``t - margin`` (never
        below ``stamp``), or added there if it already left the log. (found, new stamp)."""
        stamps = self.stamps
        t = max(now, stamps[-1]) if stamps else now
        s = max(stamp, t - margin)
        i = bisect.bisect_left(stamps, stamp)
        found = i < len(stamps) and stamps[i] == stamp
        if found and s == stamp:
            return 1, s
        if found:
            del stamps[i]
        bisect.insort(stamps, s)
        return int(found), s


@dataclass(slots=True)
class LeaseModel:
    """The semaphore: leases by fencing token with their expiry; expired ones reclaimed on acquire."""

    limit: int
    lease_us: int
    leases: dict[int, int] = field(default_factory=dict)
    last_token: int = 0

    def acquire(self, now: int) -> tuple[int, int, int, int]:
        """granted, token (or µs until the oldest lease expires), holders, now."""
        self.leases = {token: expiry for token, expiry in self.leases.items() if expiry > now}
        held = len(self.leases)
        if held >= self.limit:
            return 0, math.ceil(min(self.leases.values()) - now), held, now
        token = max(self.last_token + 1, now)
        self.last_token = token
        self.leases[token] = now + self.lease_us
        return 1, token, held + 1, now

    def renew(self, now: int, token: int) -> int:
        expiry = self.leases.pop(token, None)
        if expiry is None or expiry <= now:
            return 0
        self.leases[token] = now + self.lease_us
        return 1

    def release(self, token: int) -> None:
        self.leases.pop(token, None)


@dataclass(slots=True)
class BreakerModel:
    """BREAKER_ALLOW and BREAKER_RECORD: ``state`` None (closed), ``"o"`` (open) or ``"h"`` (half-open).

    ``until`` ends the open time or the half-open round, ``permits`` are the trial permits left,
    ``ok`` the trial successes; ``calls``/``fails`` count outcomes per bucket while closed.
    """

    state: str | None = None
    until: float = 0.0
    permits: int = 0
    ok: int = 0
    calls: dict[int, int] = field(default_factory=dict)
    fails: dict[int, int] = field(default_factory=dict)

    def allow(self, now: int, permits: int, trial_us: int) -> tuple[int, int, int, int, int]:
        """allowed, trial, retry_after µs, state (0 closed, 1 open, 2 half-open), now."""
        if self.state not in ("o", "h"):
            return 1, 0, 0, 0, now
        if now < self.until:
            if self.state == "o":
                return 0, 0, math.ceil(self.until - now), 1, now
            if self.permits <= 0:
                return 0, 0, math.ceil(self.until - now), 2, now
            self.permits -= 1
            return 1, 1, 0, 2, now
        # the open time is over, or a half-open round stalled: a new round
        self.state, self.until, self.permits, self.ok = "h", now + trial_us, permits - 1, 0
        return 1, 1, 0, 2, now

    def record(
        self,
        now: int,
        success: bool,
        trial: bool,
        *,
        bucket_us: int,
        buckets: int,
        minimum_calls: int,
        failure_rate: float,
        open_us: int,
        permits: int,
    ) -> tuple[int, int, int]:
        """state (0 closed, 1 open, 2 half-open), retry_after µs, now."""
        if self.state in ("o", "h"):
            if trial and self.state == "h":
                if not success:
                    return self._open(now, open_us)
                self.ok += 1
                if self.ok >= permits:
                    self.clear()
                    return 0, 0, now
            # a call let through before the state changed: not counted
            return (1 if self.state == "o" else 2), max(0, math.ceil(self.until - now)), now
        if trial:
            return 0, 0, now
        b = math.floor(now / bucket_us)
        for old in [k for k in self.calls if k <= b - buckets]:
            del self.calls[old]
        for old in [k for k in self.fails if k <= b - buckets]:
            del self.fails[old]
        self.calls[b] = self.calls.get(b, 0) + 1
        if not success:
            self.fails[b] = self.fails.get(b, 0) + 1
        calls = sum(self.calls.get(i, 0) for i in range(b - buckets + 1, b + 1))
        fails = sum(self.fails.get(i, 0) for i in range(b - buckets + 1, b + 1))
        if calls >= minimum_calls and fails >= failure_rate * calls:
            return self._open(now, open_us)
        return 0, 0, now

    def _open(self, now: int, open_us: int) -> tuple[int, int, int]:
        self.clear()
        self.state, self.until = "o", now + open_us
        return 1, open_us, now

    def clear(self) -> None:
        """What a DEL of the breaker's hash leaves: closed, no counts."""
        self.state, self.until, self.permits, self.ok = None, 0.0, 0, 0
        self.calls.clear()
        self.fails.clear()


@dataclass(slots=True)
class BudgetModel:
    """BUDGET: first attempts and retries counted per second; a retry fits within ratio x calls + floor."""

    calls: dict[int, int] = field(default_factory=dict)
    retries: dict[int, int] = field(default_factory=dict)

    def call(self, now: int, n: int, window: int) -> tuple[int, int, int, int]:
        s = self._prune(now, window)
        self.calls[s] = self.calls.get(s, 0) + n
        return 1, 0, 0, now

    def retry(self, now: int, window: int, ratio: float, min_per_second: float) -> tuple[int, int, int, int]:
        """allowed, retries in the window (this one included when allowed), calls in the window, now."""
        s = self._prune(now, window)
        calls = sum(self.calls.get(i, 0) for i in range(s - window + 1, s + 1))
        retries = sum(self.retries.get(i, 0) for i in range(s - window + 1, s + 1))
        if retries + 1 > ratio * calls + min_per_second * window:
            return 0, retries, calls, now
        self.retries[s] = self.retries.get(s, 0) + 1
        return 1, retries + 1, calls, now

    def _prune(self, now: int, window: int) -> int:
        s = math.floor(now / 1_000_000)
        for counts in (self.calls, self.retries):
            for old in [k for k in counts if k <= s - window]:
                del counts[old]
        return s


@dataclass(slots=True)
class ClaimModel:
    """CLAIM and its complete/release/renew: ``state`` None (no claim), ``"p"`` in progress, ``"d"`` done.

    The claim's lease is its key's expiry (the scripts' PEXPIRE): kept by the in-memory backend.
    """

    state: str | None = None
    token: str | None = None
    result: bytes | None = None

    def claim(self, token: str) -> int | tuple[int] | tuple[int, int, bytes]:
        """1 claimed; (2,) in progress (the caller adds the time left); (3, has result, result) done."""
        if self.state is None:
            self.state, self.token = "p", token
            return 1
        if self.state == "p" and self.token == token:  # the same claim sent again is still ours
            return 1
        if self.state == "p":
            return (2,)
        if self.result is not None:
            return 3, 1, self.result
        return 3, 0, b""

    def complete(self, token: str, result: bytes | None) -> int:
        if self.state != "p" or self.token != token:
            return 0
        self.state = "d"
        if result is not None:
            self.result = result
        return 1

    def release(self, token: str) -> int:
        """1 released (the key is gone: :meth:`clear`), 0 lost."""
        if self.state != "p" or self.token != token:
            return 0
        self.clear()
        return 1

    def renew(self, token: str) -> int:
        return 1 if self.state == "p" and self.token == token else 0

    def clear(self) -> None:
        self.state, self.token, self.result = None, None, None
