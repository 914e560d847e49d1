"""From command-line options to what a worker runs: settings, the task registry, the queues.

Pure functions (no broker), so the CLI mapping is testable on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sluice.errors import ConfigError, SluiceError
from sluice.settings import Settings
from sluice.tasks import Registry
from sluice.topology import check_queue_name

__all__ = ["DEMO_MODULE", "apply_options", "load_registry", "resolve_queues", "split_names"]

DEMO_MODULE = "sluice_worker.demo"


def split_names(values: Iterable[str]) -> list[str]:
    """``["a,b", "c"]`` → ``["a", "b", "c"]``: repeated options and comma lists alike, order kept, no dupes."""
    out: list[str] = []
    for v in values:
        for name in v.split(","):
            name = name.strip()
            if name and name not in out:
                out.append(name)
    return out


def apply_options(
    settings: Settings,
    *,
    concurrency: int | None = None,
    prefetch: int | None = None,
    grace_period: float | None = None,
) -> Settings:
    """``settings`` with the options that were given; validated like the environment (pydantic errors)."""
    update: dict[str, Any] = {
        k: v
        for k, v in (("concurrency", concurrency), ("prefetch", prefetch), ("grace_period", grace_period))
        if v is not None
    }
    if not update:
        return settings
    copied = settings.model_copy(update=update)
    # model_copy does not validate: check the result against the same constraints as the environment
    return Settings.model_validate(copied.model_dump())


def load_registry(modules: Sequence[str]) -> Registry:
    """The demo tasks plus every task defined at the top level of ``modules``.

    Any failure to import a module (missing, syntax error, an exception at import) is a
    :class:`~sluice.errors.ConfigError` naming it.
    """
    names = [DEMO_MODULE, *(m for m in modules if m != DEMO_MODULE)]
    try:
        return Registry.from_modules(names)
    except SluiceError:
        raise
    except Exception as e:
        raise ConfigError(f"cannot import task module: {type(e).__name__}: {e}") from None


def resolve_queues(registry: Registry, queues: Sequence[str], settings: Settings) -> list[str]:
    """The queues to consume: those given, else the loaded tasks' queues plus the default queue."""
    chosen = list(queues) if queues else sorted(registry.queues() | {settings.default_queue})
    for q in chosen:
        check_queue_name(q)
    return chosen
