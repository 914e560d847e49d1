"""The worker's pure parts: the ack-prefix tracker, option → settings mapping, module loading, the CLI's
one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from sluice.errors import ConfigError
from sluice.settings import Settings
from sluice_worker._acks import AckTracker
from sluice_worker.options import apply_options, load_registry, resolve_queues, split_names
from sluice_worker.outcome import DeadLettered, truncate_detail

HERE = Path(__file__).resolve().parent


# ---- the ack tracker
def test_ack_covers_only_the_finished_prefix() -> None:
    t = AckTracker()
    for tag in (1, 2, 3, 4):
        t.received(tag)
    assert t.finish(2) is False  # 1 still runs: 2 must not be acked by a multiple-ack
    assert t.take() is None
    assert t.finish(1) is True
    assert t.take() == 2  # one ack, multiple=True, covers 1 and 2
    t.finish(4)
    assert t.take() is None  # 3 runs
    assert t.finished_out_of_order() == [4]  # a drain acks 4 alone and leaves 3 to the broker
    assert t.pending == 1


def test_settled_tags_are_never_the_ack_tag() -> None:
    t = AckTracker()
    for tag in (1, 2, 3):
        t.received(tag)
    t.finish(1)
    t.settle(2)  # nacked on its own frame
    assert t.take() == 1
    t.settle(3)
    assert t.take() is None
    assert t.outstanding == 0


def test_tracker_refuses_nonsense() -> None:
    t = AckTracker()
    t.received(5)
    with pytest.raises(ValueError, match="must increase"):
        t.received(5)
    t.finish(5)
    with pytest.raises(KeyError):
        t.finish(5)


@given(st.permutations(range(1, 41)), st.sets(st.integers(1, 40), max_size=10))
def test_acks_never_cover_a_running_delivery(order: list[int], nacked: set[int]) -> None:
    t = AckTracker()
    for tag in range(1, 41):
        t.received(tag)
    done: set[int] = set()
    acked_upto = 0
    for tag in order:
        if tag in nacked:
            t.settle(tag)
        else:
            t.finish(tag)
        done.add(tag)
        ack = t.take()
        if ack is not None:
            assert ack not in nacked
            assert ack > acked_upto
            assert all(x in done for x in range(1, ack + 1)), "a multiple-ack covered a running delivery"
            acked_upto = ack
    assert t.outstanding == 0
    finished = set(range(1, 41)) - nacked
    assert acked_upto == (max(finished) if finished else 0)


# ---- outcomes
def test_dead_letter_detail_is_capped_at_2_kib() -> None:
    d = DeadLettered("invalid_payload", "é" * 5000)
    assert len(d.detail.encode()) <= 2048
    assert d.detail.endswith("...")
    assert truncate_detail("short") == "short"


# ---- options
def test_options_override_settings_and_none_keeps_them() -> None:
    base = Settings(concurrency=64, prefetch=256, grace_period=30)
    s = apply_options(base, concurrency=3, prefetch=7, grace_period=1.5)
    assert (s.concurrency, s.prefetch, s.grace_period) == (3, 7, 1.5)
    assert apply_options(base, prefetch=9).concurrency == 64
    assert apply_options(base) is base


def test_options_are_validated_like_the_environment() -> None:
    with pytest.raises(ValidationError, match="prefetch"):
        apply_options(Settings(), prefetch=5000)
    with pytest.raises(ValidationError, match="concurrency"):
        apply_options(Settings(), concurrency=0)


def test_names_repeat_or_comma_separate() -> None:
    assert split_names(["a,b", " c ", "a", ""]) == ["a", "b", "c"]


def test_registry_always_has_the_demo_tasks() -> None:
    reg = load_registry([])
    assert {"demo.noop", "demo.sleep", "demo.fail", "demo.flaky"} <= set(reg)
    assert resolve_queues(reg, [], Settings(default_queue="main")) == ["default", "main"]
    assert resolve_queues(reg, ["x", "y"], Settings()) == ["x", "y"]
    with pytest.raises(ConfigError, match="bad queue name"):
        resolve_queues(reg, ["no spaces"], Settings())


def test_a_task_module_that_cannot_load_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_tasks_mod.py").write_text("def oops(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="broken_tasks_mod"):
        load_registry(["broken_tasks_mod"])
    with pytest.raises(ConfigError, match="no_such_module_xyz"):
        load_registry(["no_such_module_xyz"])


# ---- the command's errors: one line, non-zero, no traceback
@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--tasks", "no_such_module_xyz"], 1, "cannot import task module 'no_such_module_xyz'"),
        (["--concurrency", "0"], 2, "--concurrency"),
        (["--prefetch", "many"], 2, "integer"),
        (["--queues", "bad queue"], 1, "bad queue name"),
    ],
)
def test_bad_arguments_give_one_line(args: list[str], code: int, needle: str) -> None:
    env = {**os.environ, "SLUICE_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/"}  # never reached
    p = subprocess.run(
        [sys.executable, "-m", "sluice_worker", *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == code, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("sluice: error:")
    assert needle in lines[0]


def test_unreachable_broker_is_one_line_too() -> None:
    env = {**os.environ, "SLUICE_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/", "SLUICE_CONNECT_TIMEOUT": "2"}
    p = subprocess.run(
        [sys.executable, "-m", "sluice_worker"], env=env, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1].startswith("sluice: error: cannot reach RabbitMQ")
    assert "Traceback" not in p.stderr
