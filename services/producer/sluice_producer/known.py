"""The tasks a producer knows: the built-in ``demo.*`` tasks, which every worker loads, plus the
modules given with ``--tasks``.

A known task's payload is validated before it is published (a bad one is refused, not dead-lettered
by the worker later) and routed to the task's queue. The demo module is imported by name, on call:
it needs only pydantic and :mod:`sluice.tasks`, never the worker's AMQP machinery.

``sluice producer`` and ``sluice publish`` both build their registry with :func:`known_registry`.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from sluice.errors import ConfigError, SluiceError
from sluice.tasks import Registry
from sluice_producer.inputs import PayloadInvalid, validation_summary

__all__ = ["DEMO_MODULE", "check_payload", "known_registry"]

DEMO_MODULE = "sluice_worker.demo"  # the same module the worker always loads (sluice_worker.options)


def known_registry(modules: Sequence[str] = ()) -> Registry:
    """The demo tasks plus every task defined at the top level of ``modules``.

    A module that cannot be imported, or two tasks with one name, is a :class:`~sluice.errors.SluiceError`
    naming it (as for the worker).
    """
    registry = Registry()
    registry.add_module(importlib.import_module(DEMO_MODULE))
    names = [m for m in modules if m != DEMO_MODULE]
    try:
        for task in Registry.from_modules(names).values() if names else ():
            registry.add(task)
    except SluiceError:
        raise
    except Exception as e:  # an exception raised while importing a task module
        raise ConfigError(f"cannot import task module: {type(e).__name__}: {e}") from None
    return registry


def check_payload(registry: Registry, task: str, payload: Mapping[str, Any], where: str) -> None:
    """Does ``payload`` fit the model of ``task`` (if the producer knows it) as JSON, strictly?

    Strict JSON validation is what the task's JSON Schema says (``"1.5"`` is not a number, ``true``
    is not an integer), so the API's OpenAPI document can publish each known task's payload schema
    exactly. Raises :class:`~sluice_producer.inputs.PayloadInvalid` (pydantic's errors) naming ``where``.
    """
    known = registry.get(task)
    if known is None or known.model is None:
        return
    try:
        known.model.model_validate_json(json.dumps(payload), strict=True)
    except ValidationError as e:
        raise PayloadInvalid(
            f"{where}: payload does not fit task {task!r}: {validation_summary(e)}",
            [dict(err) for err in e.errors(include_url=False)],
        ) from None
