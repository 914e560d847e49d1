"""Declaring tasks: one decorator on a function whose argument is a pydantic model.

``@task`` does not register anything anywhere (no global registry, no import-time side effect): it
wraps the function in a :class:`Task`. A worker imports the modules it is told about and collects
the :class:`Task` objects it finds in them into a :class:`Registry`.

A handler takes, in any order and each optional, one argument annotated with a pydantic model (the
payload) and one annotated with :class:`TaskContext`. It may be ``async def`` (run on the event loop)
or a plain function (run in a thread pool so it never blocks the loop). Its return annotation is the schema
of its result when the task stores one (``result=``): :attr:`Task.result_adapter`.
"""

from __future__ import annotations

import importlib
import inspect
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Unpack, get_type_hints

from pydantic import BaseModel, TypeAdapter

from sluice.errors import ConfigError, SluiceError, TaskDefinitionError, UnknownTask
from sluice.fair import FairRoutes
from sluice.policy import PolicyOptions, TaskPolicy
from sluice.protocol import TaskMessage
from sluice.topology import check_queue_name

if TYPE_CHECKING:
    from sluice.schedules import Schedule

__all__ = ["Registry", "Task", "TaskContext", "task"]

TASK_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:")


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What a handler may want to know about the delivery it is running."""

    message: TaskMessage
    redelivered: bool = False
    #: the worker's "was this task cancelled?" (a local lookup), for :attr:`cancelled`
    cancel_check: Callable[[], bool] | None = field(default=None, repr=False, compare=False)

    @property
    def task_id(self) -> str:
        return self.message.id

    @property
    def cancelled(self) -> bool:
        """Whether the task was cancelled while it runs: a plain (thread-pool) handler checks it and
        returns early; an ``async`` handler is cancelled by the worker instead (``CancelledError``)."""
        return self.cancel_check is not None and self.cancel_check()

    @property
    def attempt(self) -> int:
        return self.message.attempt


@dataclass(frozen=True, slots=True)
class Task:
    """A handler and what sluice needs to call it."""

    name: str
    fn: Callable[..., Any]
    queue: str = "default"
    model: type[BaseModel] | None = None
    is_async: bool = False
    # positional layout of the call: "payload" / "context" per parameter
    _params: tuple[str, ...] = field(default=(), repr=False)
    policy: TaskPolicy = field(default_factory=TaskPolicy)
    #: the result's schema (the return annotation; ``Any`` without one) when the task stores a result
    result_adapter: TypeAdapter[Any] | None = field(default=None, repr=False, compare=False)
    #: its periodic schedules (``schedule=``), bound to it; ``sluice scheduler --tasks`` syncs them
    schedules: tuple[Schedule, ...] = field(default=(), compare=False)

    def parse(self, payload: Mapping[str, Any]) -> BaseModel | None:
        """Validate a payload against the handler's model; raises pydantic.ValidationError."""
        if self.model is None:
            return None
        return self.model.model_validate(payload)

    def arguments(self, model: BaseModel | None, ctx: TaskContext) -> list[Any]:
        return [model if p == "payload" else ctx for p in self._params]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the handler directly (tests, scripts): no broker involved."""
        return self.fn(*args, **kwargs)


def _hints(fn: Callable[..., Any], name: str) -> dict[str, Any]:
    try:
        return get_type_hints(fn)
    except Exception as e:
        raise TaskDefinitionError(f"task {name!r}: cannot resolve the annotations: {e}") from None


def _result_adapter(fn: Callable[..., Any], name: str) -> TypeAdapter[Any]:
    """The result's schema: the return annotation (``Any`` when there is none), built once."""
    hint = _hints(fn, name).get("return", Any)
    try:
        return TypeAdapter(hint)
    except Exception as e:
        raise TaskDefinitionError(
            f"task {name!r}: its return annotation cannot be a result schema: {e}"
        ) from None


def _layout(fn: Callable[..., Any], name: str) -> tuple[type[BaseModel] | None, tuple[str, ...]]:
    hints = _hints(fn, name)
    model: type[BaseModel] | None = None
    params: list[str] = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.KEYWORD_ONLY):
            raise TaskDefinitionError(f"task {name!r}: parameter {p.name!r} must be positional")
        hint = hints.get(p.name)
        if hint is TaskContext:
            params.append("context")
        elif isinstance(hint, type) and issubclass(hint, BaseModel) and model is None:
            model = hint
            params.append("payload")
        else:
            raise TaskDefinitionError(
                f"task {name!r}: parameter {p.name!r} must be annotated with a pydantic model "
                "(one at most) or TaskContext"
            )
    return model, tuple(params)


def task(
    name: str | None = None,
    *,
    queue: str = "default",
    schedule: Schedule | Sequence[Schedule] | None = None,
    **policies: Unpack[PolicyOptions],
) -> Callable[[Callable[..., Any]], Task]:
    """Make a function a sluice task, with optional fleet-wide policies (docs/policies.md).

    >>> class Greet(BaseModel):
    ...     who: str
    >>> @task("demo.greet", rate_limit="100/s", retry=RetryPolicy(max_attempts=5), timeout="30s")
    ... async def greet(p: Greet) -> None:
    ...     print("hello", p.who)

    ``rate_limit``: ``"100/s"`` or a :class:`~sluice.policy.RateLimit` (burst, per-tenant key);
    ``concurrency``: runs at once fleet-wide; ``timeout``: seconds (or ``"30s"``) an ``async`` handler may
    run; ``retry``: a :class:`~sluice.resilience.RetryPolicy` (without one a failure is dead-lettered);
    ``breaker``: the name of a shared circuit breaker (or a :class:`~sluice.policy.Breaker`);
    ``idempotency``: ``True`` (key from the message header) or an :class:`~sluice.policy.Idempotency`;
    ``retry_budget``: ``True`` (a fleet budget named after the task) or a
    :class:`~sluice.policy.RetryBudgetPolicy`: retries refused by it go to the DLQ;
    ``track``: record the task's state (``sluice task status``); ``result``: ``True`` or a
    :class:`~sluice.policy.ResultPolicy`: store the return value too (implies ``track``);
    ``schedule``: ``every("5m")``, ``cron("0 6 * * *", tz=...)`` or a list of them (docs/schedules.md);
    ``fair``: a payload field naming the tenant (``"tenant"``), ``True`` (the rate limit's ``key``) or a
    :class:`~sluice.policy.Fair` (its ``shards``): fair share per tenant over sub-queues (docs/policies.md).
    """
    check_queue_name(queue)
    try:
        policy = TaskPolicy.build(**policies)
    except SluiceError as e:
        raise TaskDefinitionError(f"task {name!r}: {e}") from None

    def wrap(fn: Callable[..., Any]) -> Task:
        tname = name or f"{fn.__module__}.{fn.__qualname__}"
        if not tname or not set(tname) <= TASK_NAME_CHARS or len(tname) > 200:
            raise TaskDefinitionError(f"bad task name {tname!r}: use 1-200 of A-Z a-z 0-9 _ - . :")
        model, params = _layout(fn, tname)
        schedules: tuple[Schedule, ...] = ()
        if schedule is not None:
            from sluice.schedules import bind_to_task  # the schedules import sluice.tasks

            try:
                schedules = bind_to_task(tname, schedule)
            except SluiceError as e:
                raise TaskDefinitionError(f"task {tname!r}: {e}") from None
        return Task(
            name=tname,
            fn=fn,
            queue=queue,
            model=model,
            is_async=inspect.iscoroutinefunction(fn),
            _params=params,
            policy=policy,
            result_adapter=None if policy.result is None else _result_adapter(fn, tname),
            schedules=schedules,
        )

    return wrap


class Registry(Mapping[str, Task]):
    """Tasks by name."""

    def __init__(self, tasks: Iterable[Task] = ()) -> None:
        self._tasks: dict[str, Task] = {}
        for t in tasks:
            self.add(t)

    def add(self, t: Task) -> None:
        old = self._tasks.get(t.name)
        if old is not None and old.fn is not t.fn:
            raise TaskDefinitionError(f"two tasks are named {t.name!r}")
        self._tasks[t.name] = t

    @classmethod
    def from_modules(cls, names: Iterable[str]) -> Registry:
        """Import each module and collect every :class:`Task` defined at its top level."""
        reg = cls()
        for mod_name in names:
            try:
                mod = importlib.import_module(mod_name)
            except ImportError as e:
                raise ConfigError(f"cannot import task module {mod_name!r}: {e}") from None
            reg.add_module(mod)
        return reg

    def add_module(self, mod: types.ModuleType) -> None:
        found = [v for v in vars(mod).values() if isinstance(v, Task)]
        if not found:
            raise ConfigError(f"module {mod.__name__!r} defines no sluice task")
        for t in found:
            self.add(t)

    def get_task(self, name: str) -> Task:
        try:
            return self._tasks[name]
        except KeyError:
            raise UnknownTask(f"no task named {name!r} in this worker") from None

    def queues(self) -> set[str]:
        return {t.queue for t in self._tasks.values()}

    def fair_routes(self) -> FairRoutes:
        """How publishers route this registry's fair tasks and which sub-queues a worker consumes
        (:mod:`sluice.fair`); a :class:`TaskDefinitionError` when fair tasks of a queue disagree."""
        return FairRoutes.of((t.name, t.queue, t.policy.fair) for t in self._tasks.values())

    def __getitem__(self, name: str) -> Task:
        return self._tasks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)
