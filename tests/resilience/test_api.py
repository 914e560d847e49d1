"""The public surface: ``__all__``, the exception tree, no import-time side effects."""

from __future__ import annotations

import subprocess
import sys

import sluice.resilience as resilience
from sluice.errors import ResilienceError, SluiceError
from sluice.resilience import errors


def test_all_names_exist_and_are_unique() -> None:
    assert len(set(resilience.__all__)) == len(resilience.__all__)
    missing = [name for name in resilience.__all__ if not hasattr(resilience, name)]
    assert missing == []
    public = {name for name in vars(resilience) if not name.startswith("_")}
    modules = {
        "adaptive",
        "breaker",
        "budget",
        "clock",
        "concurrency",
        "errors",
        "freeze",
        "gcra",
        "idempotency",
        "keys",
        "memory",
        "outage",
        "retry",
        "sliding",
    }
    assert public - set(resilience.__all__) - modules - {"window", "annotations"} == set()


def test_every_error_is_a_resilience_error_and_the_tree_is_documented() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, ResilienceError)
        assert issubclass(cls, SluiceError)
        assert name in (errors.__doc__ or "")
    for name in ("RateLimited", "ConcurrencyLimited", "CircuitOpen", "RetryBudgetExhausted"):
        assert issubclass(getattr(errors, name), errors.Rejected)
    assert errors.RateLimited("x", 1.5).retry_after == 1.5


def test_import_has_no_side_effects() -> None:
    """Importing starts no thread, opens no socket and creates no event loop."""
    code = (
        "import threading, asyncio, gc, socket\n"
        "before = threading.active_count()\n"
        "import sluice.resilience\n"
        "assert threading.active_count() == before\n"
        "assert not [o for o in gc.get_objects() if isinstance(o, socket.socket)]\n"
        "assert asyncio.events._get_running_loop() is None\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
