"""The in-memory backend's runner: each script call answered by its reference model.

:class:`MemoryRunner` has the interface of :class:`~._scripts.ScriptRunner` (``run``, ``run_many``,
``command``, ``aclose``), so a primitive does not know which one it holds. Each handler reads the
script's keys and arguments as the script does, runs the model, keeps the keys' TTLs where the script
sets them, and answers the script's reply (the rate limiters' one-line status string, the others'
arrays). ``ARGV[1]``, the scripts' clock override (tests only), is honoured the same way; without it
"now" is the backend's clock. A call yields to the event loop once, as a round trip would, so tasks
interleave as they do on Redis; each decision is still atomic.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sluice.errors import ConfigError

from . import _lua
from ._memory_throttle import frozen_reply, gcra_after_freeze, handlers
from ._reference import BreakerModel, BudgetModel, ClaimModel, GCRAModel, LeaseModel, SlidingWindowModel
from ._scripts import Arg, Call, Script
from .errors import BackendUnavailable
from .memory import MemoryBackend, keep_ms

if TYPE_CHECKING:
    from ._multi import MultiScript

__all__ = ["MemoryRunner"]

Handler = Callable[[Sequence[str], Sequence[Arg]], Any]


def _text(arg: Arg) -> str:
    return arg.decode() if isinstance(arg, bytes) else str(arg)


def _blob(arg: Arg) -> bytes:
    return arg if isinstance(arg, bytes) else str(arg).encode()


class MemoryRunner:
    """Runs the library's script calls on a :class:`MemoryBackend` (see the module docstring)."""

    def __init__(self, backend: MemoryBackend, *, timeout: float = 0.5) -> None:
        if timeout <= 0:
            raise ConfigError("timeout must be positive")
        self.backend = backend
        self.timeout = timeout
        self._handlers: dict[str, Handler] = {
            _lua.GCRA.sha: self._gcra,
            _lua.WINDOW.sha: self._window,
            _lua.LEASE_ACQUIRE.sha: self._lease_acquire,
            _lua.LEASE_RENEW.sha: self._lease_renew,
            _lua.BREAKER_ALLOW.sha: self._breaker_allow,
            _lua.BREAKER_RECORD.sha: self._breaker_record,
            _lua.BUDGET.sha: self._budget,
            _lua.CLAIM.sha: self._claim,
            _lua.CLAIM_COMPLETE.sha: self._claim_complete,
            _lua.CLAIM_RELEASE.sha: self._claim_release,
            _lua.CLAIM_RENEW.sha: self._claim_renew,
            **handlers(backend),  # the sliding log, freezes, the adaptive rate
        }

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        await asyncio.sleep(0)  # a round trip's worth of interleaving
        self._check()
        return self._handler(script)(keys, args)

    async def run_many(self, calls: Sequence[Call], multi: MultiScript | None = None) -> list[Any]:
        """Every call in order; an error in one is that call's answer, as in a pipeline."""
        await asyncio.sleep(0)
        self._check()
        out: list[Any] = []
        for script, keys, args in calls:
            try:
                out.append(self._handler(script)(keys, args))
            except Exception as exc:  # a bad call is its own answer, as a Redis error reply would be
                out.append(exc)
        return out

    async def command(self, *args: Arg) -> Any:
        """The few plain commands the primitives send: DEL, ZREM (a lease), HGET (a breaker's state)."""
        await asyncio.sleep(0)
        self._check()
        name, rest = _text(args[0]).upper(), [_text(a) for a in args[1:]]
        backend = self.backend
        if name == "DEL":
            return sum(backend.delete(k) for k in rest)
        model = backend.model(rest[0]) if rest else None
        if name == "ZREM" and isinstance(model, LeaseModel):
            found = int(rest[1]) in model.leases
            model.release(int(rest[1]))
            return int(found)
        if name == "ZREM":
            return 0
        if name == "HGET" and rest[1:] == ["state"]:
            return model.state if isinstance(model, BreakerModel) else None
        raise ConfigError(f"the in-memory backend does not run {name} {' '.join(rest)}")

    async def aclose(self) -> None:
        return None

    def _check(self) -> None:
        if not self.backend.available:
            raise BackendUnavailable("the in-memory backend is set unavailable")

    def _handler(self, script: Script) -> Handler:
        handler = self._handlers.get(script.sha)
        if handler is None:
            raise ConfigError(f"the in-memory backend has no model for the script {script.name!r}")
        return handler

    def _now(self, args: Sequence[Arg]) -> int:
        override = _text(args[0])
        return int(override) if override else self.backend.now_us()

    # -- one handler per script, in the order of _lua.py
    def _gcra(self, keys: Sequence[str], args: Sequence[Arg]) -> str:
        now, (a, b, c, peek) = self._now(args), _text(args[1]).split()
        frozen = frozen_reply(self.backend, keys, now, 2)
        if frozen is not None:
            return frozen
        model = self.backend.model(keys[0]) or GCRAModel(float(a), float(b))
        model.emission_us, model.tau_us = float(a), float(b)
        freeze = keys[1] if len(keys) > 1 else None  # ended: resume at the rate (gcra_after_freeze)
        return gcra_after_freeze(self.backend, keys[0], freeze, model, now, int(c), peek == "1")

    def _window(self, keys: Sequence[str], args: Sequence[Arg]) -> str:
        now, (a, b, c, peek) = self._now(args), _text(args[1]).split()
        frozen = frozen_reply(self.backend, keys, now, 1)
        if frozen is not None:
            return frozen
        model = self.backend.model(keys[0]) or SlidingWindowModel(int(a), int(b))
        model.window_us, model.limit = int(a), int(b)
        reply = model.decide(now, int(c), peek == "1")
        if reply[0] == 1 and peek == "0" and model.index is not None:
            self.backend.keep(keys[0], model, keep_ms((model.index + 2) * model.window_us - now))
        return " ".join(map(str, reply))

    def _lease_keep(self, key: str, model: LeaseModel, now: int) -> None:
        self.backend.keep(key, model, keep_ms(max(model.leases.values()) - now))

    def _lease_acquire(self, keys: Sequence[str], args: Sequence[Arg]) -> list[int]:
        now = self._now(args)
        model = self.backend.model(keys[0]) or LeaseModel(int(args[1]), int(args[2]))
        model.limit, model.lease_us = int(args[1]), int(args[2])
        fence = self.backend.model(keys[1])  # the last token, a key of its own as on Redis
        model.last_token = fence if isinstance(fence, int) else 0
        reply = model.acquire(now)
        if reply[0] == 1:
            self._lease_keep(keys[0], model, now)
            self.backend.keep(keys[1], model.last_token, keep_ms(max(model.leases.values()) - now))
        return list(reply)

    def _lease_renew(self, keys: Sequence[str], args: Sequence[Arg]) -> int:
        now = self._now(args)
        model = self.backend.model(keys[0])
        if not isinstance(model, LeaseModel):
            return 0
        model.lease_us = int(args[1])
        renewed = model.renew(now, int(_text(args[2])))
        if renewed:
            self._lease_keep(keys[0], model, now)
        return renewed

    def _breaker_allow(self, keys: Sequence[str], args: Sequence[Arg]) -> list[int]:
        now = self._now(args)
        model = self.backend.model(keys[0]) or BreakerModel()
        new_round = model.state in ("o", "h") and now >= model.until
        reply = model.allow(now, int(args[1]), int(args[2]))
        if new_round:
            self.backend.keep(keys[0], model, keep_ms(int(args[3])))
        return list(reply)

    def _breaker_record(self, keys: Sequence[str], args: Sequence[Arg]) -> list[int]:
        now = self._now(args)
        model = self.backend.model(keys[0]) or BreakerModel()
        before, trial = model.state, _text(args[2]) == "1"
        reply = model.record(
            now,
            _text(args[1]) == "1",
            trial,
            bucket_us=int(args[3]),
            buckets=int(args[4]),
            minimum_calls=int(args[5]),
            failure_rate=float(_text(args[6])),
            open_us=int(args[7]),
            permits=int(args[8]),
        )
        if (model.state == "o" and before != "o") or (before is None and not trial):
            self.backend.keep(keys[0], model, keep_ms(int(args[9])))
        elif before == "h" and model.state is None:  # closed by its trials: the hash is deleted
            self.backend.delete(keys[0])
        return list(reply)

    def _budget(self, keys: Sequence[str], args: Sequence[Arg]) -> list[int]:
        now, window = self._now(args), int(args[3])
        model = self.backend.model(keys[0]) or BudgetModel()
        if _text(args[1]) == "call":
            reply = model.call(now, int(args[2]), window)
        else:
            reply = model.retry(now, window, float(_text(args[4])), float(_text(args[5])))
        if reply[0] == 1:
            self.backend.keep(keys[0], model, keep_ms(window * 1_000_000))
        return list(reply)

    def _claim(self, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        token = _text(args[1])  # the claim scripts do not read the clock: only their keys' TTLs do
        entry = self.backend.get(keys[0])
        model = entry.model if entry is not None else ClaimModel()
        fresh = model.state is None
        reply = model.claim(token)
        if isinstance(reply, int):
            if fresh:
                self.backend.keep(keys[0], model, math.ceil(int(args[2]) / 1000))
            return 1
        if len(reply) == 1:  # in progress: how long the holder's lease has left (PTTL)
            left = 0 if entry is None else math.ceil((entry.expires_us - self.backend.now_us()) / 1000)
            return [2, left]
        return list(reply)

    def _claim_complete(self, keys: Sequence[str], args: Sequence[Arg]) -> int:
        model = self.backend.model(keys[0])
        if not isinstance(model, ClaimModel):
            return 0
        done = model.complete(_text(args[1]), _blob(args[4]) if _text(args[3]) == "1" else None)
        if done:
            self.backend.keep(keys[0], model, math.ceil(int(args[2]) / 1000))
        return done

    def _claim_release(self, keys: Sequence[str], args: Sequence[Arg]) -> int:
        model = self.backend.model(keys[0])
        if not isinstance(model, ClaimModel) or not model.release(_text(args[1])):
            return 0
        self.backend.delete(keys[0])
        return 1

    def _claim_renew(self, keys: Sequence[str], args: Sequence[Arg]) -> int:
        model = self.backend.model(keys[0])
        if not isinstance(model, ClaimModel) or not model.renew(_text(args[1])):
            return 0
        self.backend.keep(keys[0], model, math.ceil(int(args[2]) / 1000))
        return 1
