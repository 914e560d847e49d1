"""Each package states its public API in __all__, and every name there exists."""

from __future__ import annotations

import importlib

import pytest

PACKAGES = [
    "sluice",
    "sluice.errors",
    "sluice.protocol",
    "sluice.settings",
    "sluice.tasks",
    "sluice.topology",
    "sluice.publisher",
    "sluice.connection",
    "sluice.resilience",
    "sluice.resilience.clock",
    "sluice.resilience.memory",
    "sluice.handles",
    "sluice.handles.errors",
    "sluice.testing",
    "sluice_worker",
    "sluice_producer",
    "sluice_metrics",
    "sluice_cli",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_declared_and_resolves(name: str) -> None:
    mod = importlib.import_module(name)
    exported = getattr(mod, "__all__", None)
    assert isinstance(exported, list | tuple), f"{name} has no __all__"
    assert exported, f"{name}.__all__ is empty"
    missing = [n for n in exported if not hasattr(mod, n)]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"
    assert len(set(exported)) == len(exported)


def test_every_error_derives_from_the_root() -> None:
    from sluice import errors

    for n in errors.__all__:
        assert issubclass(getattr(errors, n), errors.SluiceError)


def test_handle_errors_derive_from_the_root() -> None:
    from sluice import errors, handles

    for n in ("HandleError", "TrackingUnavailable", "WaitTimeout", "TaskFailed", "TaskDead", "TaskCancelled"):
        assert issubclass(getattr(handles, n), errors.HandleError)
    assert issubclass(handles.ResultTooLarge, errors.SluiceError)
    assert handles.HandleError is errors.HandleError
