"""One outcome model: every outcome and reason it has is documented in docs/metrics.md, and only those.

The telemetry vocabulary (:data:`sluice.telemetry.OUTCOMES`, read by the metrics service and its live
page) is exactly the set of metrics the model's outcomes are counted under; the doc's outcome table
lists each with exactly the reasons the model maps to it. (That a real run produces each of them is
tests/metrics/test_series_sweep.py.)
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from sluice.telemetry import OUTCOMES
from sluice_worker import outcome as model

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def _documented() -> dict[str, list[str]]:
    """{outcome: its reasons}, from the outcome table of docs/metrics.md."""
    lines = DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| outcome | what became"))
    table: dict[str, list[str]] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        table[re.findall(r"`([^`]+)`", cells[0])[0]] = re.findall(r"`([^`]+)`", cells[2])
    return table


def test_the_model_the_telemetry_and_the_doc_name_the_same_outcomes() -> None:
    assert sorted(model.metrics()) == sorted(OUTCOMES), "every metric of the model is a telemetry outcome"
    assert sorted(_documented()) == sorted(OUTCOMES), "every outcome is documented, no other"


def test_every_reason_of_the_model_is_documented_under_its_outcome() -> None:
    documented = {reason: outcome for outcome, reasons in _documented().items() for reason in reasons}
    assert documented == dict(model.REASONS)


def test_each_outcome_type_names_its_metric() -> None:
    samples: list[model.Outcome] = [
        model.ACK,
        model.DEDUPLICATED,
        *(model.Deferred(r, 1.0) for r, m in model.REASONS.items() if m.startswith("deferred")),
        model.Retry(1.0, 2, 0),
        *(model.DeadLettered(r, "x") for r, m in model.REASONS.items() if m in ("failed", "dead_lettered")),
        model.CANCELLED_QUEUED,
        model.CANCELLED_RUNNING,
    ]
    assert {type(o) for o in samples} == set(model.OUTCOME_TYPES)
    for o in samples:
        assert o.metric in OUTCOMES, o
        assert dataclasses.is_dataclass(o) and type(o).__dataclass_params__.frozen, o  # type: ignore[union-attr]
        reason = getattr(o, "reason", None)
        if reason is not None:
            assert model.REASONS[reason] == o.metric, o
    assert model.ACK.metric == "success" and model.ACK.ran
    assert model.DeadLettered(model.INVALID_PAYLOAD, "").metric == "dead_lettered"
    assert not model.DeadLettered(model.INVALID_PAYLOAD, "").ran, "a message that never ran has no run time"
    assert model.DeadLettered(model.RETRY_BUDGET_EXHAUSTED, "").metric == "failed"
    assert model.CANCELLED_QUEUED.metric == model.CANCELLED_RUNNING.metric == "cancelled"
    assert not model.CANCELLED_QUEUED.ran and model.CANCELLED_RUNNING.ran
