"""ScheduledRun made without its constructor (``from_fields``, ``evolved``): the same value as the
constructor makes, and the same refusals."""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime

import pytest

from agent.scheduler import RunStatus, ScheduledRun

AT = datetime(2027, 3, 13, 12, 0, tzinfo=UTC)
GIVEN = {
    "run_id": "run_1",
    "schedule_id": "sch_1",
    "schedule_name": "nightly",
    "intended_run_at": AT,
    "occurrence_key": "2027-03-13T12:00:00.000000Z",
}


def test_from_fields_equals_the_constructor_with_defaults_filled_in() -> None:
    assert ScheduledRun.from_fields(dict(GIVEN)) == ScheduledRun(**GIVEN)
    every = {f.name: getattr(ScheduledRun(**GIVEN), f.name) for f in fields(ScheduledRun)}
    every.update(status=RunStatus.RUNNING, attempt=3, params={"a": 1}, owner="w1", started_at=AT, prepared=True)
    made = ScheduledRun.from_fields(every)
    assert made == ScheduledRun(**every)
    assert made.status is RunStatus.RUNNING and made.idempotency_key == "sch_1:2027-03-13T12:00:00.000000Z"


def test_from_fields_gives_each_run_its_own_params() -> None:
    one, two = ScheduledRun.from_fields(dict(GIVEN)), ScheduledRun.from_fields(dict(GIVEN))
    one.params["x"] = 1
    assert two.params == {} and ScheduledRun(**GIVEN).params == {}


def test_from_fields_refuses_unknown_and_missing_fields() -> None:
    with pytest.raises(TypeError, match=r"^ScheduledRun has no field\(s\) colour$"):
        ScheduledRun.from_fields({**GIVEN, "colour": "red"})
    with pytest.raises(TypeError, match=r"^ScheduledRun needs field\(s\) occurrence_key, run_id$"):
        ScheduledRun.from_fields({k: v for k, v in GIVEN.items() if k not in ("occurrence_key", "run_id")})


def test_the_made_run_is_frozen_like_any_other() -> None:
    run = ScheduledRun.from_fields(dict(GIVEN))
    with pytest.raises(AttributeError):
        run.status = RunStatus.FAILED  # type: ignore[misc]
    moved = run.evolved({"owner": "w2"}, RunStatus.RUNNING)
    assert (run.status, run.owner, moved.status, moved.owner) == (RunStatus.PENDING, None, RunStatus.RUNNING, "w2")
    with pytest.raises(TypeError, match="no field"):
        run.evolved({"colour": "red"}, RunStatus.RUNNING)
