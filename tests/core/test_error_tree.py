"""Every exception sluice raises on purpose derives from ``sluice.errors.SluiceError``.

Two proofs. First, every ``raise`` in ``shared/`` and ``services/`` is read with ``ast`` and its class
resolved in its module: it must be a SluiceError, unless it is one of the kinds allowed outside the tree
(re-raising a caught error, cancellation and exits, a CLI's typer/click usage error, NotImplementedError
in an abstract method, a module ``__getattr__``'s AttributeError, StopIteration/StopAsyncIteration) or on the short lists below,
each with its reason. ``raise X(...) from err`` is checked like any other raise: translating an error is
no licence to leave the tree. Second, the public constructors are called with bad arguments and must
raise a SluiceError (a ConfigError, which is a ValueError too).
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import importlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import typer
from redis.asyncio import Redis

from sluice.errors import ConfigError, SluiceError
from sluice.handles import CancelWatch, TaskHandles, Tracker
from sluice.handles._keys import HandleKeys
from sluice.policy import Concurrency, RateLimit, ResultPolicy, TaskPolicy, parse_duration
from sluice.resilience import (
    BreakerPolicy,
    CircuitBreaker,
    ConcurrencyLimiter,
    DecorrelatedJitter,
    ExponentialBackoff,
    FailClosed,
    FailOpen,
    FakeClock,
    FixedBackoff,
    GCRALimiter,
    IdempotencyStore,
    KeySpace,
    MemoryBackend,
    Rate,
    RetryBudget,
    RetryPolicy,
    SlidingWindowLimiter,
)

REPO = Path(__file__).resolve().parents[2]
ROOTS = {REPO / "shared": "", REPO / "services": None}  # services/<service>/<package>/...

#: (path, class) raised on purpose outside the tree, and why that is right.
ALLOWED: dict[tuple[str, str], str] = {
    ("services/producer/sluice_producer/schedules_api.py", "HTTPException"): "FastAPI's own answer "
    "(404 no such schedule, 409 exists, 422 a bad schedule), raised in a request of /v1/schedules",
    ("services/producer/sluice_producer/schedules_api.py", "_Unavailable"): "an HTTPException (503 with "
    "Retry-After when the schedules' Redis cannot be reached), raised in a request of /v1/schedules",
    ("shared/sluice/settings.py", "ValueError"): "pydantic field validators must raise ValueError: pydantic "
    "gathers it into a ValidationError, which the CLI reports in one line",
    ("services/producer/sluice_producer/_durations.py", "ValueError"): "called from the pydantic field "
    "validator of TaskIn.delay: pydantic needs a ValueError to answer 422",
    ("shared/sluice/resilience/_scripts.py", "RuntimeError"): "used outside an asyncio task: the misuse "
    "asyncio itself reports as RuntimeError",
    ("shared/sluice/resilience/_wire.py", "ConnectionError"): "redis-py's own error inside the transport, "
    "turned into BackendUnavailable by ScriptRunner",
    ("services/metrics/sluice_metrics/processes.py", "ValueError"): "raised and caught inside ingest(): an "
    "invalid snapshot is counted, the error never leaves",
    ("services/producer/sluice_producer/app.py", "Invalid"): "the producer's own answer (sluice_producer."
    "_answers): raised in a request and turned into its 413/422 answer by the app's own exception handler",
    ("services/producer/sluice_producer/app.py", "Unavailable"): "the producer's own answer (sluice_producer."
    "_answers): raised in a request and turned into its 503 answer by the app's own exception handler",
    ("services/producer/sluice_producer/models.py", "ValueError"): "a pydantic model validator of TaskIn "
    "(unique_for without unique_key): pydantic needs a ValueError to answer 422",
    ("services/worker/sluice_worker/demo.py", "DemoFailure"): "the demo.fail task's own error: what a user's "
    "handler raises, dead-lettered as handler_error",
    ("services/worker/sluice_worker/_acks.py", "ValueError"): "an invariant of the ack bookkeeping (a bug "
    "in sluice if it is ever raised, like an assert)",
    ("services/worker/sluice_worker/_acks.py", "KeyError"): "an invariant of the ack bookkeeping (a bug "
    "in sluice if it is ever raised, like an assert)",
    ("services/worker/sluice_worker/policies/step.py", "NotImplementedError"): "Step.build of the base "
    "class: every step overrides it (a bug in sluice if it is ever raised)",
    ("shared/sluice/lazy.py", "AttributeError"): "the module __getattr__ lazy_names makes for a package "
    '(PEP 562): it says "no such name" this way, like a module-level __getattr__',
    ("shared/sluice/policy.py", "TypeError"): "TaskPolicy.build(**options) and @task(..., **policies): an "
    "unknown keyword is the TypeError Python raises for any call with an unexpected keyword argument",
}

#: Known to break the rule, each with a TODO (none left: a new entry needs its reason and an issue).
KNOWN: dict[tuple[str, str], str] = {}

PROTOCOL = (asyncio.CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit)
#: typer's usage errors (typer carries its own copy of click) and exits, and click's.
CLI_ERRORS = (
    click.exceptions.ClickException,
    click.exceptions.Exit,
    click.exceptions.Abort,
    *(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"),
    typer.Exit,
    typer.Abort,
)


def modules() -> Iterator[tuple[str, str]]:
    """(path relative to the repo, module name) of every module in shared/ and services/."""
    for root in ROOTS:
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root)
            parts = list(rel.with_suffix("").parts)
            if root.name == "services":
                parts = parts[1:]  # services/worker/sluice_worker/x.py -> sluice_worker.x
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if parts and all(p.isidentifier() for p in parts):
                yield str(path.relative_to(REPO)), ".".join(parts)


def names_of(module: Any, tree: ast.AST) -> dict[str, Any]:
    """What a name in the module may stand for: its globals, the builtins, and the names imported inside
    its functions (``from sluice.errors import ConfigError`` in a function body)."""
    found: dict[str, Any] = dict(vars(builtins))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            source = importlib.import_module(node.module)
            for alias in node.names:
                if hasattr(source, alias.name):
                    found[alias.asname or alias.name] = getattr(source, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                found[alias.asname or alias.name.split(".")[0]] = importlib.import_module(
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
    found.update(vars(module))
    return found


def resolve(names: dict[str, Any], node: ast.expr) -> Any:
    """The object a name or dotted name stands for (None if it is none of the module's names)."""
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.Attribute):
        base = resolve(names, node.value)
        return None if base is None else getattr(base, node.attr, None)
    return None


def enclosing_functions(tree: ast.AST) -> dict[ast.Raise, list[ast.FunctionDef | ast.AsyncFunctionDef]]:
    out: dict[ast.Raise, list[ast.FunctionDef | ast.AsyncFunctionDef]] = {}

    def walk(node: ast.AST, stack: list[ast.FunctionDef | ast.AsyncFunctionDef]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Raise):
                out[child] = stack
            inner = [*stack, child] if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else stack
            walk(child, inner)

    walk(tree, [])
    return out


def verdict(
    path: str, module: Any, names: dict[str, Any], node: ast.Raise, funcs: list[Any], *, lists: bool = True
) -> tuple[str, str] | None:
    """None when this raise is fine; else (class name, what is wrong)."""
    if node.exc is None:
        return None  # a bare re-raise
    target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
    if isinstance(target, ast.Call) and ast.unparse(target.func) == "type":
        return None  # raise type(e)(...): the caught error's own class again
    cls = resolve(names, target)
    name = ast.unparse(target).rsplit(".", 1)[-1]
    if not isinstance(cls, type):
        if isinstance(node.exc, ast.Name):
            return None  # raise err: an exception object caught or received (a re-raise)
        return name, f"cannot resolve {ast.unparse(target)!r} to a class"
    if not issubclass(cls, BaseException):
        return name, "not an exception"
    if issubclass(cls, SluiceError) or issubclass(cls, PROTOCOL):
        return None
    is_cli = module.__name__.startswith("sluice_cli") or module.__name__.endswith((".cli", "_cmd"))
    if is_cli and issubclass(cls, CLI_ERRORS):
        return None
    inner = funcs[-1] if funcs else None
    decorators = {ast.unparse(d) for d in inner.decorator_list} if inner else set()
    if cls is NotImplementedError and decorators & {"abstractmethod", "abc.abstractmethod"}:
        return None
    if cls is AttributeError and inner is not None and inner.name == "__getattr__" and len(funcs) == 1:
        return None  # PEP 562: a module's __getattr__ says "no such name" this way
    if issubclass(cls, StopIteration | StopAsyncIteration):
        return None  # the iterator protocol's end signal (an anext() of our own), not an error
    if lists and ((path, name) in ALLOWED or (path, name) in KNOWN):
        return None
    return name, f"{cls.__module__}.{cls.__qualname__} is not a SluiceError"


def test_every_raise_site_raises_a_sluice_error_or_is_allowed_with_a_reason() -> None:
    offences: list[str] = []
    needed: set[tuple[str, str]] = set()  # the entries of ALLOWED and KNOWN some raise still needs
    checked = 0
    for path, name in modules():
        tree = ast.parse((REPO / path).read_text(), path)
        if name.endswith("__main__"):  # importing it would run the program: it must only call main()
            offences += [
                f"{path}:{n.lineno}: a raise in __main__" for n in ast.walk(tree) if isinstance(n, ast.Raise)
            ]
            continue
        module = importlib.import_module(name)
        names = names_of(module, tree)
        for node, funcs in enclosing_functions(tree).items():
            checked += 1
            bare = verdict(path, module, names, node, funcs, lists=False)
            if bare is not None:
                needed.add((path, bare[0]))
            wrong = verdict(path, module, names, node, funcs)
            if wrong is not None:
                offences.append(f"{path}:{node.lineno}: raise {wrong[0]}: {wrong[1]}")
    assert checked > 100, f"only {checked} raise sites found: is the walk looking in the right place?"
    assert offences == [], "raise a SluiceError (sluice.errors) or add a reason:\n" + "\n".join(offences)
    stale = sorted(set(ALLOWED) - needed) + sorted(set(KNOWN) - needed)
    assert stale == [], f"entries no raise needs any more (gone, or a SluiceError now): remove {stale}"


def test_the_walk_catches_a_bare_value_error() -> None:
    """The verdict is not vacuous: a ValueError, a project class outside the tree, a `from` translation."""
    import sluice.resilience.keys as keys_module

    class Outside(Exception):
        pass

    keys_module.Outside = Outside  # type: ignore[attr-defined]
    path = "shared/sluice/resilience/keys.py"
    names = names_of(keys_module, ast.parse((REPO / path).read_text()))
    try:
        for src in ("raise ValueError('x')", "raise Outside('x')", "raise ValueError('x') from None"):
            node = ast.parse(src).body[0]
            assert isinstance(node, ast.Raise)
            assert verdict(path, keys_module, names, node, []) is not None, src
        ok = ast.parse("raise ConfigError('x') from None").body[0]
        assert isinstance(ok, ast.Raise)
        assert verdict(path, keys_module, names, ok, []) is None
    finally:
        del keys_module.Outside  # type: ignore[attr-defined]


def backend() -> MemoryBackend:
    return MemoryBackend(clock=FakeClock())


BAD: list[tuple[str, Callable[[], object]]] = [
    ("Rate(0)", lambda: Rate(0)),
    ("Rate(1, period=0)", lambda: Rate(1, period=0)),
    ("Rate.per_second(-5)", lambda: Rate.per_second(-5)),
    ("GCRALimiter burst=0", lambda: GCRALimiter(backend(), Rate(10), burst=0)),
    ("GCRALimiter timeout=0", lambda: GCRALimiter(backend(), Rate(10), timeout=0)),
    ("SlidingWindowLimiter timeout=-1", lambda: SlidingWindowLimiter(backend(), Rate(10), timeout=-1)),
    ("ConcurrencyLimiter limit=0", lambda: ConcurrencyLimiter(backend(), 0)),
    ("ConcurrencyLimiter heartbeat>lease", lambda: ConcurrencyLimiter(backend(), 1, lease=1, heartbeat=2)),
    ("BreakerPolicy failure_rate=0", lambda: BreakerPolicy(failure_rate=0)),
    ("BreakerPolicy window=0", lambda: BreakerPolicy(window=0)),
    ("BreakerPolicy half_open_permits=0", lambda: BreakerPolicy(half_open_permits=0)),
    ("CircuitBreaker timeout=0", lambda: CircuitBreaker(backend(), "b", timeout=0)),
    ("RetryBudget window=0", lambda: RetryBudget(backend(), "b", window=0)),
    ("RetryBudget ratio=-1", lambda: RetryBudget(backend(), "b", ratio=-1)),
    ("IdempotencyStore lease=0", lambda: IdempotencyStore(backend(), lease=0)),
    ("RetryPolicy max_attempts=0", lambda: RetryPolicy(max_attempts=0)),
    ("RetryPolicy without a bound", lambda: RetryPolicy(max_attempts=None, deadline=None)),
    ("RetryPolicy deadline=-1", lambda: RetryPolicy(deadline=-1)),
    ("ExponentialBackoff initial=-1", lambda: ExponentialBackoff(initial=-1)),
    ("ExponentialBackoff multiplier=0.5", lambda: ExponentialBackoff(multiplier=0.5)),
    ("ExponentialBackoff cap=nan", lambda: ExponentialBackoff(cap=math.nan)),
    ("ExponentialBackoff jitter", lambda: ExponentialBackoff(jitter="some")),  # type: ignore[arg-type]
    ("DecorrelatedJitter initial=inf", lambda: DecorrelatedJitter(initial=math.inf)),
    ("DecorrelatedJitter cap=-1", lambda: DecorrelatedJitter(cap=-1)),
    ("FixedBackoff(-1)", lambda: FixedBackoff(-1)),
    ("FailOpen local_share=0", lambda: FailOpen(local_share=0)),
    ("FailClosed probe_interval=0", lambda: FailClosed(probe_interval=0)),
    ("KeySpace with braces", lambda: KeySpace("a{b}")),
    ("KeySpace empty name", lambda: KeySpace().key("gcra", "")),
    ("FakeClock going back", lambda: FakeClock().advance(-1)),
    ("RateLimit(0)", lambda: RateLimit(0)),
    ("RateLimit.parse", lambda: RateLimit.parse("often")),
    ("parse_duration", lambda: parse_duration("soon")),
    ("Concurrency(0)", lambda: Concurrency(0)),
    ("ResultPolicy(ttl=0)", lambda: ResultPolicy(ttl=0)),
    ("ResultPolicy(max_bytes=0)", lambda: ResultPolicy(max_bytes=0)),
    ("TaskPolicy(result=...)", lambda: TaskPolicy(result="yes")),  # type: ignore[arg-type]
    ("HandleKeys with braces", lambda: HandleKeys("a{b}")),
    ("TaskHandles ttl=0", lambda: TaskHandles(Redis(), ttl=0)),
    ("Tracker ttl=0", lambda: Tracker(Redis(), worker="h:1", ttl=0)),
    ("CancelWatch resync=0", lambda: CancelWatch(Redis(), resync=0)),
]


@pytest.mark.parametrize(("what", "build"), BAD, ids=[what for what, _ in BAD])
def test_bad_arguments_raise_a_config_error(what: str, build: Callable[[], object]) -> None:
    with pytest.raises(SluiceError) as info:
        build()
    assert isinstance(info.value, ConfigError), f"{what}: {type(info.value).__name__}"
    assert isinstance(info.value, ValueError)  # callers that caught ValueError still do
    assert str(info.value), f"{what}: an error without a message"


async def test_bad_arguments_at_call_time_raise_a_config_error() -> None:
    limiter = GCRALimiter(backend(), Rate(10))
    with pytest.raises(ConfigError):
        await limiter.try_acquire("k", cost=-1)
    with pytest.raises(ConfigError):
        await limiter.try_acquire("")
    store = IdempotencyStore(backend(), max_result_bytes=4)
    claim = await store.claim("k")
    with pytest.raises(ConfigError, match="byte cap"):
        await store.complete("k", getattr(claim, "token", ""), b"12345")
