"""Schedules the process tests declare in code (``--tasks sched_tasks``): the task is the worker's demo.noop."""

from __future__ import annotations

from sluice.schedules import every

tick = every("1s", name="tick", task="demo.noop", catch_up="all", payload={"from": "code"})
