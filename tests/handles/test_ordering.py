"""Late or out-of-order state writes never move a task backwards (the rule in sluice.handles.state),
checked on the real Redis: a table of the cases that matter, and hypothesis sequences against a model."""

from __future__ import annotations

import uuid

import pytest
import redis as redis_sync
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.handles import RANK, TERMINAL, State
from sluice.handles._keys import HandleKeys
from sluice.handles._lua import REPLAY
from sluice.handles._writes import write_call

Write = tuple[State, int, int]  # state, generation, attempt
WRITTEN = [s for s in State if s is not State.UNKNOWN]


@pytest.fixture
def keys(r: redis_sync.Redis, unique: str) -> HandleKeys:
    """Keys under this test's ``unique`` prefix (``r`` deletes them after)."""
    return HandleKeys(unique)


def apply(r: redis_sync.Redis, keys: HandleKeys, task_id: str, write: Write) -> int:
    state, gen, attempt = write
    script, ks, args = write_call(keys, task_id, state, generation=gen, attempt=attempt, ttl=60)
    return int(r.eval(script.source, len(ks), *ks, *args))  # type: ignore[arg-type]


def stored(r: redis_sync.Redis, keys: HandleKeys, task_id: str) -> Write | None:
    state, gen, attempt = r.hmget(keys.task(task_id), "state", "gen", "attempt")
    if state is None:
        return None
    return State(state.decode()), int(gen), int(attempt)


def model(current: Write | None, write: Write) -> bool:
    """The rule, written out: applied iff (gen, attempt, rank) >= the stored triple, and a terminal state
    is final within its generation."""
    if current is None:
        return True
    (cs, cg, ca), (ws, wg, wa) = current, write
    if wg < cg:
        return False
    return not (wg == cg and (RANK[cs] == 4 or (wa, RANK[ws]) < (ca, RANK[cs])))


CASES: list[tuple[str, list[Write], State]] = [
    (
        "a redelivery after success stays succeeded",
        [(State.QUEUED, 0, 1), (State.RUNNING, 0, 1), (State.SUCCEEDED, 0, 1), (State.RUNNING, 0, 1)],
        State.SUCCEEDED,
    ),
    (
        "a slow worker's running of attempt 1 after attempt 2 started",
        [(State.RETRYING, 0, 1), (State.RUNNING, 0, 2), (State.RUNNING, 0, 1)],
        State.RUNNING,
    ),
    (
        "the producer's queued after the worker's running (a fast worker)",
        [(State.RUNNING, 0, 1), (State.QUEUED, 0, 1)],
        State.RUNNING,
    ),
    (
        "a late retrying after the next attempt failed for good",
        [(State.RUNNING, 0, 2), (State.DEAD, 0, 2), (State.RETRYING, 0, 1)],
        State.DEAD,
    ),
    (
        "a terminal state is final within its generation, even for a later attempt",
        [(State.CANCELLED, 0, 0), (State.SUCCEEDED, 0, 1)],
        State.CANCELLED,
    ),
    (
        "a write of a newer generation (a replay) wins over an ended one",
        [(State.DEAD, 0, 3), (State.RUNNING, 1, 1)],
        State.RUNNING,
    ),
    (
        "an old generation's late write after a replay is ignored",
        [(State.DEAD, 0, 3), (State.QUEUED, 1, 1), (State.RETRYING, 0, 3)],
        State.QUEUED,
    ),
    (
        "deferred again before the handler ran",
        [(State.DEFERRED, 0, 1), (State.DEFERRED, 0, 1), (State.RUNNING, 0, 1)],
        State.RUNNING,
    ),
]


@pytest.mark.parametrize(("what", "writes", "final"), CASES, ids=[c[0] for c in CASES])
def test_table(r: redis_sync.Redis, keys: HandleKeys, what: str, writes: list[Write], final: State) -> None:
    task_id = uuid.uuid4().hex
    for write in writes:
        apply(r, keys, task_id, write)
    got = stored(r, keys, task_id)
    assert got is not None and got[0] is final, what


def test_replay_then_old_writes(r: redis_sync.Redis, keys: HandleKeys) -> None:
    """The replay script raises the generation; what the dead generation's workers still write is ignored."""
    task_id = uuid.uuid4().hex
    apply(r, keys, task_id, (State.DEAD, 0, 3))
    ks = [keys.task(task_id), keys.history(task_id)]
    assert int(r.eval(REPLAY.source, 2, *ks, "", 60_000, 50)) == 1  # type: ignore[arg-type]
    assert stored(r, keys, task_id) == (State.QUEUED, 1, 1)
    assert apply(r, keys, task_id, (State.SUCCEEDED, 0, 3)) == 0
    assert apply(r, keys, task_id, (State.RUNNING, 1, 1)) == 1
    assert stored(r, keys, task_id) == (State.RUNNING, 1, 1)
    history = [h.decode() for h in r.lrange(keys.history(task_id), 0, -1)]
    assert len(history) == 3 and "replayed (generation 1)" in history[1]


writes = st.tuples(st.sampled_from(WRITTEN), st.integers(0, 2), st.integers(0, 3))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(writes, min_size=1, max_size=12))
def test_any_sequence_matches_the_model_and_never_goes_back(
    r: redis_sync.Redis, keys: HandleKeys, sequence: list[Write]
) -> None:
    task_id = uuid.uuid4().hex
    expected: Write | None = None
    for write in sequence:
        before = expected
        applies = model(expected, write)
        expected = write if applies else expected
        assert apply(r, keys, task_id, write) == applies
        assert stored(r, keys, task_id) == expected
        if before is not None:  # never backwards: the triple only grows, an end only gives way to a replay
            assert (expected[1], expected[2], RANK[expected[0]]) >= (before[1], before[2], RANK[before[0]])
            if before[0] in TERMINAL:
                assert expected == before or expected[1] > before[1]


def _run_history(attempts: int, end: State) -> list[Write]:
    """What a task's writers send, in order: queued, then per attempt running and retrying, then the end."""
    out: list[Write] = [(State.QUEUED, 0, 1)]
    for n in range(1, attempts + 1):
        out.append((State.RUNNING, 0, n))
        if n < attempts:
            out.append((State.RETRYING, 0, n))
    out.append((end, 0, attempts))
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.integers(1, 4),
    st.sampled_from(sorted(TERMINAL)),
    st.randoms(use_true_random=False),
    st.integers(0, 3),
)
def test_a_real_history_in_any_order_ends_in_its_end(
    r: redis_sync.Redis, keys: HandleKeys, attempts: int, end: State, rnd: object, redeliveries: int
) -> None:
    """Shuffle a real run's writes (and add redeliveries of its last attempt): the record always ends in
    the run's terminal state."""
    import random

    assert isinstance(rnd, random.Random)
    history = _run_history(attempts, end) + [(State.RUNNING, 0, attempts)] * redeliveries
    rnd.shuffle(history)
    task_id = uuid.uuid4().hex
    for write in history:
        apply(r, keys, task_id, write)
    assert stored(r, keys, task_id) == (end, 0, attempts)
