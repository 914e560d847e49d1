"""Code-declared schedules: a :class:`Schedules` registry, and the loader that collects them from modules.

A module declares schedules at its top level, as :class:`~sluice.schedules.Schedule` objects that name
their task, as a :class:`Schedules` registry, or (once ``@task(..., schedule=...)`` lands) on its tasks
(a :class:`~sluice.tasks.Task` whose ``schedules`` attribute holds them). ``sluice scheduler --tasks
MODULE`` collects them and syncs them into the store at start.

    # myapp/schedules.py
    schedules = Schedules()
    schedules.add(every("5m", task="sync.accounts"))
    schedules.add(cron("0 6 * * *", tz="Europe/Paris", task="reports.daily", name="reports.paris"))
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Iterable, Iterator, Mapping

from sluice.errors import ConfigError
from sluice.tasks import Registry, Task

from .spec import Schedule

__all__ = ["Schedules", "bind_to_task", "load_modules"]


class Schedules(Mapping[str, Schedule]):
    """Schedules by name; each must name its task (and so has a name)."""

    def __init__(self, schedules: Iterable[Schedule] = ()) -> None:
        self._by_name: dict[str, Schedule] = {}
        for s in schedules:
            self.add(s)

    def add(self, schedule: Schedule) -> Schedule:
        if not schedule.task:
            raise ConfigError("a schedule declared outside @task must name its task (task=...)")
        if not schedule.name:
            schedule = schedule.bound(schedule.task)
        old = self._by_name.get(schedule.name)
        if old is not None and old != schedule:
            raise ConfigError(f"two different schedules are named {schedule.name!r}")
        self._by_name[schedule.name] = schedule
        return schedule

    def add_module(self, mod: types.ModuleType) -> int:
        """Every schedule declared at the module's top level; answers how many."""
        found = 0
        for value in vars(mod).values():
            if isinstance(value, Schedule):
                self.add(value)
                found += 1
            elif isinstance(value, Schedules):
                for s in value.values():
                    self.add(s)
                    found += 1
            elif isinstance(value, Task):
                for s in _task_schedules(value):
                    self.add(s)
                    found += 1
        return found

    def __getitem__(self, name: str) -> Schedule:
        return self._by_name[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)


def _task_schedules(t: Task) -> tuple[Schedule, ...]:
    """A task's own schedules (``@task(..., schedule=...)`` keeps them in ``Task.schedules``)."""
    return bind_to_task(t.name, getattr(t, "schedules", None) or ())


def bind_to_task(task: str, declared: Schedule | Iterable[Schedule]) -> tuple[Schedule, ...]:
    """Schedules declared on task ``task``, bound to it: the first is named after the task (``:`` becomes
    ``.``), the next ones ``<task>-2``, ``<task>-3`` ... unless they have names of their own."""
    items = (declared,) if isinstance(declared, Schedule) else tuple(declared)
    base = task.replace(":", ".")[:140]  # a schedule's name has no ':'
    out = []
    for i, s in enumerate(items):
        if not isinstance(s, Schedule):
            raise ConfigError(
                f"task {task!r}: schedule= takes every(...) or cron(...), not {type(s).__name__}"
            )
        out.append(s.bound(task, s.name or (base if i == 0 else f"{base}-{i + 1}")))
    return tuple(out)


def load_modules(names: Iterable[str]) -> tuple[Registry, Schedules]:
    """Import each module: its tasks (a module may define none) and its schedules."""
    tasks = Registry()
    schedules = Schedules()
    for mod_name in names:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as e:
            raise ConfigError(f"cannot import module {mod_name!r}: {e}") from None
        has_tasks = any(isinstance(v, Task) for v in vars(mod).values())
        if has_tasks:
            tasks.add_module(mod)
        if schedules.add_module(mod) == 0 and not has_tasks:
            raise ConfigError(f"module {mod_name!r} defines no sluice task and no schedule")
    return tasks, schedules
