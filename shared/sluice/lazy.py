"""Public names a package loads on first use, so importing the package stays cheap (PEP 562).

The services' packages name what they export in ``__all__`` and import it only when it is first read:
``sluice --help`` imports ``sluice_worker.cli`` and must not load the AMQP stack with it.

    __getattr__ = lazy_names("sluice_worker", {"serve": "lifecycle", "Ack": "outcome"})
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package``: the name ``n`` is read from the submodule
    ``package.homes[n]`` when it is first asked for; any other name is an ``AttributeError``."""

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{home}"), name)

    return __getattr__
