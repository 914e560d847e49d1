"""The worker's garbage collector: its startup heap frozen, young collections less often.

CPython's cyclic collector runs a young collection every 700 container allocations (``gc`` threshold 0)
and, every so often, a full one that walks every container object in the process: the imported modules,
pydantic's schemas, the broker and Redis clients, and every delivery in flight. A tracked or idempotent
task allocates a few dozen containers (futures, batch entries, call tuples), so the collector ran several
young collections a delivery's worth of work and a full one every few thousand deliveries, each walking the
whole heap (``bench/pipeline_cpu.py``, 150,000 deliveries: 6,042 young, 549 middle and 49 full collections
with Python's defaults; a tracked delivery 102 and 105 us of worker CPU with them, 68 and 76 tuned; plain
ones 35-39 against 32-33; docs/benchmarks.md, "The worker's garbage collector").

:func:`tune` is called once, after the worker loaded its tasks and before its loop starts: ``gc.freeze()``
moves every object alive then into the permanent generation (never walked again, never freed: it is the
startup heap, which lives as long as the process anyway), and ``gc.set_threshold`` makes young collections
``threshold`` allocations apart (the older generations keep their ratios). Reference counting still frees
almost everything at once; only cyclic garbage waits longer, at most ``threshold`` allocations.
The standard library has the two calls; what is ours is when to make them, and with which figure.
"""

from __future__ import annotations

import gc
import logging

from sluice.errors import ConfigError

__all__ = ["tune"]

log = logging.getLogger("sluice.runtime")


def tune(threshold: int) -> None:
    """Freeze the heap and set the young generation's threshold; ``0``: leave the collector as it is."""
    if threshold < 0:
        raise ConfigError(f"the gc threshold must be 0 or more, not {threshold}")
    if threshold == 0:
        log.info("gc: left as it is (SLUICE_GC_THRESHOLD=0), thresholds %s", gc.get_threshold())
        return
    gc.collect()  # what is garbage already is not frozen
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(threshold, older, oldest)
    log.info(
        "gc: %d startup objects frozen, young collections every %d allocations",
        gc.get_freeze_count(),
        threshold,
    )
