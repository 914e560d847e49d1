"""``sluice._gc.tune``: what it does to this process's collector (restored after each test)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from sluice import _gc
from sluice.errors import ConfigError


@pytest.fixture(autouse=True)
def restored() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_tune_freezes_and_sets_the_young_threshold() -> None:
    _, older, oldest = gc.get_threshold()
    _gc.tune(4321)
    assert gc.get_threshold() == (4321, older, oldest)
    assert gc.get_freeze_count() > 1000  # the imported modules, at least


def test_zero_leaves_the_collector() -> None:
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    _gc.tune(0)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen


def test_negative_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        _gc.tune(-1)
