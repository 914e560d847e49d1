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
