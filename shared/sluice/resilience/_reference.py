"""Pure-Python models of the algorithms, step for step the same arithmetic as the Lua scripts.

The tests check the scripts against these on generated schedules (same inputs, same replies) and
check the models' invariants with hypothesis on a fake clock. The limiters also run them, on the
local monotonic clock, as the conservative local limit of the fail-open outage policy.
Times are microseconds; doubles with the operations in the scripts' order, so results are bit-equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["GCRAModel", "GCRAReply", "LeaseModel", "SlidingWindowModel", "WindowReply"]

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
