"""``sluice schedule add|ls|rm|pause|resume|run``: the installed console script in a subprocess, on the real
Redis and RabbitMQ."""

from __future__ import annotations

import json

import pytest
import redis as redis_sync

from support.ports import free_port
from support.workers import worker_env

from .conftest import drain
from .procs import sluice


@pytest.fixture
def env(amqp_url: str, redis_url: str, unique: str, r: redis_sync.Redis) -> dict[str, str]:
    return worker_env(amqp_url, redis_url, unique, SLUICE_QUEUE_TYPE="classic")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--cron", "0 6 * *"], "bad cron expression '0 6 * *'"),
        (["--cron", "0 6 * * *", "--tz", "Mars/Olympus"], "unknown time zone 'Mars/Olympus'"),
        (["--every", "5 parsecs"], "bad duration '5 parsecs'"),
        (["--every", "5m", "--cron", "* * * * *"], "exactly one of --cron and --every"),
        (["--every", "5m", "--catch-up", "sometimes"], "bad catch-up 'sometimes'"),
        (["--every", "5m", "--payload", "[1]"], "--payload must be a JSON object"),
    ],
)
def test_a_bad_schedule_is_one_line_and_exit_2(env: dict[str, str], args: list[str], says: str) -> None:
    done = sluice(env, "schedule", "add", "nightly", "--task", "demo.noop", *args)
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and lines[0].startswith("sluice: error:"), done.stderr
    assert "Traceback" not in done.stderr


def test_add_ls_pause_resume_run_rm(env: dict[str, str], amqp_url: str, unique: str) -> None:
    done = sluice(
        env,
        "schedule",
        "add",
        "nightly",
        "--task",
        "demo.noop",
        "--cron",
        "0 6 * * *",
        "--tz",
        "Europe/Paris",
        "--payload",
        '{"report": "daily"}',
        "--catch-up",
        "all",
    )
    assert done.returncode == 0, done.stderr
    assert "nightly: added (0 6 * * *, Europe/Paris) -> demo.noop" in done.stdout
    (row,) = json.loads(sluice(env, "schedule", "ls", "--json").stdout)
    assert row["name"] == "nightly" and row["task"] == "demo.noop" and row["paused"] is False
    assert row["next_fire"].endswith(("04:00:00.000Z", "05:00:00.000Z"))  # 06:00 in Paris
    assert row["last_fire"] is None and row["catch_up"] == "all" and row["origin"] == "runtime"
    assert "nightly" in sluice(env, "schedule", "ls").stdout

    assert sluice(env, "schedule", "pause", "nightly").returncode == 0
    (row,) = json.loads(sluice(env, "schedule", "ls", "--json").stdout)
    assert row["paused"] is True and row["next_fire"] is None
    assert sluice(env, "schedule", "resume", "nightly").returncode == 0
    assert json.loads(sluice(env, "schedule", "ls", "--json").stdout)[0]["paused"] is False

    ran = sluice(env, "schedule", "run", "nightly")
    assert ran.returncode == 0, ran.stderr
    task_id = ran.stdout.strip()
    assert task_id.startswith("nightly:run:")
    (fired,) = drain(amqp_url, f"{unique}.q.default")
    assert (
        fired.id == task_id and fired.schedule == "nightly" and json.loads(fired.body) == {"report": "daily"}
    )
    assert json.loads(sluice(env, "schedule", "ls", "--json").stdout)[0]["last_run_task_id"] == task_id

    assert sluice(env, "schedule", "rm", "nightly").returncode == 0
    assert json.loads(sluice(env, "schedule", "ls", "--json").stdout) == []
    gone = sluice(env, "schedule", "rm", "nightly")
    assert gone.returncode == 1 and gone.stderr.strip() == "sluice: error: no schedule named 'nightly'"
    for cmd in ("pause", "resume", "run"):
        missing = sluice(env, "schedule", cmd, "nightly")
        assert missing.returncode == 1 and "no schedule named 'nightly'" in missing.stderr


def test_redis_down_is_one_line_and_exit_1(env: dict[str, str]) -> None:
    down = env | {"SLUICE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    done = sluice(down, "schedule", "ls")
    assert done.returncode == 1, done
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("sluice: error: cannot reach Redis at redis://127.0.0.1:")


def test_scheduler_help_and_a_module_without_schedules(env: dict[str, str]) -> None:
    assert "--tasks" in sluice(env, "scheduler", "--help").stdout
    done = sluice(env, "scheduler", "--tasks", "json", "--port", "0")
    assert done.returncode == 1
    assert done.stderr.strip() == "sluice: error: module 'json' defines no sluice task and no schedule"
