from __future__ import annotations

import types

import pytest
from pydantic import BaseModel, ValidationError

from sluice.errors import ConfigError, TaskDefinitionError, UnknownTask
from sluice.protocol import TaskMessage
from sluice.tasks import Registry, Task, TaskContext, task


class Charge(BaseModel):
    amount: int
    currency: str = "EUR"


def test_decorator_wraps_without_registering() -> None:
    @task("billing.charge", queue="billing")
    async def charge(p: Charge) -> int:
        return p.amount

    assert isinstance(charge, Task)
    assert (charge.name, charge.queue, charge.model, charge.is_async) == (
        "billing.charge",
        "billing",
        Charge,
        True,
    )


def test_payload_and_context_in_any_order() -> None:
    @task("t.ctx")
    def both(ctx: TaskContext, p: Charge) -> None: ...

    ctx = TaskContext(TaskMessage("t.ctx", {"amount": 1}))
    model = both.parse({"amount": 1})
    assert both.arguments(model, ctx) == [ctx, model]
    assert not both.is_async


def test_no_argument_handler() -> None:
    @task("t.none")
    def nothing() -> None: ...

    assert nothing.parse({"ignored": True}) is None
    assert nothing.arguments(None, TaskContext(TaskMessage("t.none", {}))) == []


def test_payload_validation_uses_the_model() -> None:
    @task("t.v")
    async def v(p: Charge) -> None: ...

    assert v.parse({"amount": "3"}) == Charge(amount=3)
    with pytest.raises(ValidationError):
        v.parse({"amount": "three"})


async def _module_level_job() -> None: ...


def test_default_name_is_module_and_qualname() -> None:
    assert task()(_module_level_job).name == f"{__name__}._module_level_job"
    with pytest.raises(TaskDefinitionError, match="bad task name"):  # a nested function needs a name

        @task()
        async def nested() -> None: ...


@pytest.mark.parametrize(
    "fn_src",
    [
        "def f(x): ...",
        "def f(x: int): ...",
        "def f(*a: Charge): ...",
        "def f(a: Charge, b: Charge): ...",
        "def f(*, a: Charge): ...",
    ],
)
def test_bad_signatures_are_refused(fn_src: str) -> None:
    ns: dict[str, object] = {"Charge": Charge}
    exec(fn_src, ns)
    with pytest.raises(TaskDefinitionError):
        task("t.bad")(ns["f"])  # type: ignore[arg-type]


def test_bad_names_are_refused() -> None:
    with pytest.raises(TaskDefinitionError):
        task("has space")(lambda: None)
    with pytest.raises(ConfigError):
        task("ok", queue="bad queue")


def test_registry_collects_module_tasks_and_finds_them() -> None:
    mod = types.ModuleType("fake_tasks")

    @task("m.a")
    async def a() -> None: ...

    @task("m.b", queue="other")
    def b() -> None: ...

    mod.a, mod.b, mod.not_a_task = a, b, 42  # type: ignore[attr-defined]
    reg = Registry()
    reg.add_module(mod)
    assert set(reg) == {"m.a", "m.b"} and len(reg) == 2
    assert reg.get_task("m.b") is b
    assert reg.queues() == {"default", "other"}
    with pytest.raises(UnknownTask):
        reg.get_task("m.c")


def test_registry_refuses_two_handlers_with_one_name() -> None:
    one = task("dup")(lambda: None)
    two = task("dup")(lambda: None)
    with pytest.raises(TaskDefinitionError):
        Registry([one, two])


def test_from_modules_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="cannot import"):
        Registry.from_modules(["no_such_module_xyz"])
    with pytest.raises(ConfigError, match="defines no sluice task"):
        Registry.from_modules(["json"])


class Sum(BaseModel):
    total: int


def test_track_and_result_declarations() -> None:
    from typing import Any

    from sluice.policy import ResultPolicy

    @task("t.plain")
    async def plain() -> int:
        return 1

    @task("t.tracked", track=True)
    async def tracked() -> int:
        return 1

    @task("t.result", result=True)
    async def with_result() -> Sum:
        return Sum(total=3)

    @task("t.untyped", result=ResultPolicy(ttl=60, max_bytes=100))
    def untyped():  # type: ignore[no-untyped-def]
        return {"any": [1, 2]}

    assert (plain.policy.track, plain.policy.result, plain.result_adapter) == (False, None, None)
    assert plain.policy.empty
    assert tracked.policy.track and tracked.policy.result is None and tracked.result_adapter is None
    assert with_result.policy.track and with_result.policy.result == ResultPolicy()  # result implies track
    assert with_result.result_adapter is not None
    assert with_result.result_adapter.dump_json(Sum(total=3)) == b'{"total":3}'
    assert untyped.policy.result == ResultPolicy(ttl=60, max_bytes=100)
    adapter: Any = untyped.result_adapter
    assert adapter is not None and adapter.dump_json({"any": [1, 2]}) == b'{"any":[1,2]}'


@pytest.mark.parametrize(
    "options",
    [
        {"result": {"ttl": 0}},
        {"result": {"max_bytes": 0}},
        {"result": {"ttl": float("inf")}},
        {"result": "yes"},
    ],
    ids=["ttl=0", "max_bytes=0", "ttl=inf", "a string"],
)
def test_bad_result_declarations_are_refused(options: dict[str, object]) -> None:
    from sluice.policy import ResultPolicy

    def declare() -> None:
        built = {k: ResultPolicy(**v) if isinstance(v, dict) else v for k, v in options.items()}
        task("t.bad", **built)(lambda: None)  # type: ignore[arg-type]

    with pytest.raises((ConfigError, TaskDefinitionError)):
        declare()


def test_context_cancelled() -> None:
    msg = TaskMessage(task="t", payload={})
    assert TaskContext(msg).cancelled is False
    flag = [False]
    ctx = TaskContext(msg, cancel_check=lambda: flag[0])
    assert not ctx.cancelled
    flag[0] = True
    assert ctx.cancelled


def test_a_task_declares_its_schedules_bound_to_it() -> None:
    from sluice.schedules import cron, every

    @task("sync.accounts", schedule=[every("5m"), cron("0 6 * * *", tz="Europe/Paris")])
    async def sync() -> None: ...

    assert [s.name for s in sync.schedules] == ["sync.accounts", "sync.accounts-2"]
    assert {s.task for s in sync.schedules} == {"sync.accounts"}
    assert task("plain")(lambda: None).schedules == ()


def test_a_bad_schedule_on_a_task_is_one_definition_error() -> None:
    with pytest.raises(TaskDefinitionError, match="schedule= takes every"):

        @task("sync.bad", schedule="5m")  # type: ignore[arg-type]
        async def bad() -> None: ...
