"""The missed-run policy: one notion of missed (later than the grace), three ways to deal with it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent.scheduler import ScheduleDefinition
from agent.scheduler.policies.missed_run import Missed, PlannedRun, decide_missed, decide_prepared, plan_due

T0 = datetime(2027, 3, 13, 12, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)


def hourly(**kw: Any) -> ScheduleDefinition:
    fields: dict[str, Any] = {
        "name": "h",
        "trigger_type": "calendar",
        "expression": "0 * * * *",
        "target": "t",
        "grace": timedelta(minutes=5),
    }
    fields.update(kw)
    return ScheduleDefinition(**fields)


def plan(schedule: ScheduleDefinition, now: datetime) -> tuple[list[PlannedRun], datetime | None, Any]:
    result = plan_due(schedule, schedule.trigger(), now)
    return result.runs, result.next_run_at, result.missed


def test_on_time_occurrences_just_run() -> None:
    runs, nxt, missed = plan(hourly(next_run_at=T0), T0 + 2 * MIN)
    assert runs == [PlannedRun(T0)]
    assert (nxt, missed) == (T0 + timedelta(hours=1), None)


def test_nothing_is_due_before_the_next_occurrence() -> None:
    runs, nxt, missed = plan(hourly(next_run_at=T0), T0 - MIN)
    assert (runs, nxt, missed) == ([], T0, None)


@pytest.mark.parametrize(
    ("late", "is_missed"), [(timedelta(minutes=5), False), (timedelta(minutes=5, microseconds=1), True)]
)
def test_the_grace_boundary(late: timedelta, is_missed: bool) -> None:
    runs, _, missed = plan(hourly(next_run_at=T0, missed_run_policy="catch_up_once"), T0 + late)
    assert (missed is not None) is is_missed
    assert runs == ([PlannedRun(T0, catch_up=True)] if is_missed else [PlannedRun(T0)])


def test_skip_records_one_skipped_run_with_the_count_and_moves_on() -> None:
    runs, nxt, missed = plan(hourly(next_run_at=T0), T0 + timedelta(hours=10, minutes=2))
    # 10:00 .. 21:00 were due; 22:00 is within the grace (2 minutes late) and runs.
    [skip, on_time] = runs
    assert (skip.intended_at, skip.coalesced_from, skip.catch_up) == (T0 + timedelta(hours=9), 10, False)
    assert skip.skip_reason is not None and skip.skip_reason.startswith("missed: 10 occurrence(s) missed from")
    assert on_time == PlannedRun(T0 + timedelta(hours=10))
    assert nxt == T0 + timedelta(hours=11)
    assert (missed.detected, missed.skipped, missed.caught_up) == (10, 10, 0)


def test_catch_up_once_runs_the_latest_once_standing_for_all() -> None:
    runs, _, missed = plan(
        hourly(next_run_at=T0, missed_run_policy="catch_up_once"), T0 + timedelta(hours=3, minutes=30)
    )
    assert runs == [PlannedRun(T0 + timedelta(hours=3), catch_up=True, coalesced_from=4)]
    assert (missed.detected, missed.caught_up, missed.coalesced) == (4, 1, 3)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # 12:00 .. 14:00 are past the 5 minute grace, 15:00 is 2 minutes late.
        ("skip", [PlannedRun(T0 + timedelta(hours=2), coalesced_from=3), PlannedRun(T0 + timedelta(hours=3))]),
        ("catch_up_once", [PlannedRun(T0 + timedelta(hours=3), catch_up=True, coalesced_from=4)]),
        ("catch_up_all", [PlannedRun(T0 + timedelta(hours=h), catch_up=h < 3) for h in range(4)]),
    ],
)
def test_overdue_occurrences_in_grace_and_past_it(policy: str, expected: list[PlannedRun]) -> None:
    runs, nxt, missed = plan(hourly(next_run_at=T0, missed_run_policy=policy), T0 + timedelta(hours=3, minutes=2))
    assert [r.__class__(r.intended_at, r.catch_up, r.coalesced_from) for r in runs] == expected  # reasons aside
    assert nxt == T0 + timedelta(hours=4)
    assert missed.detected == 3
    if policy == "catch_up_once":
        assert (missed.caught_up, missed.coalesced) == (1, 3)
        assert "standing for 4 due occurrence(s)" in missed.reason


def test_catch_up_all_runs_each_oldest_first() -> None:
    runs, _, missed = plan(
        hourly(next_run_at=T0, missed_run_policy="catch_up_all"), T0 + timedelta(hours=3, minutes=30)
    )
    assert runs == [PlannedRun(T0 + timedelta(hours=h), catch_up=True) for h in range(4)]
    assert (missed.detected, missed.caught_up, missed.skipped, missed.warning) == (4, 4, 0, None)


def test_catch_up_all_beyond_the_limit_skips_the_oldest_rest_with_a_warning() -> None:
    s = hourly(next_run_at=T0, missed_run_policy="catch_up_all", catch_up_limit=3)
    runs, _, missed = plan(s, T0 + timedelta(days=1, minutes=30))  # 25 hourly occurrences, all 30+ min late
    skip, *caught = runs
    assert [r.intended_at for r in caught] == [T0 + timedelta(hours=h) for h in (22, 23, 24)]
    assert all(r.catch_up for r in caught)
    assert (skip.intended_at, skip.coalesced_from) == (T0, 22)
    assert missed.warning == "22 missed occurrence(s) beyond the catch-up limit of 3 were skipped"
    assert (missed.detected, missed.caught_up, missed.skipped) == (25, 3, 22)


def test_a_week_of_every_second_is_counted_without_walking_it() -> None:
    s = hourly(expression="* * * * * *", next_run_at=T0, grace=timedelta(0), catch_up_limit=5)
    s = s.with_changes(missed_run_policy="catch_up_all")
    runs, nxt, missed = plan(s, T0 + timedelta(days=7))
    # T0 .. now-1s are missed (grace 0); the occurrence at exactly now is on time.
    assert missed.detected == 7 * 86400
    assert [r.intended_at for r in runs[1:6]] == [T0 + timedelta(days=7, seconds=-5 + i) for i in range(5)]
    assert runs[6] == PlannedRun(T0 + timedelta(days=7))
    assert runs[0].coalesced_from == 7 * 86400 - 5
    assert nxt == T0 + timedelta(days=7, seconds=1)


def test_missed_occurrences_on_a_dst_day_are_counted_in_real_hours() -> None:
    # Europe/Berlin falls back on 2027-10-31: that local day has 25 real hours.
    start = datetime(2027, 10, 30, 22, 0, tzinfo=UTC)  # 00:00 CEST on the 31st
    s = hourly(timezone="Europe/Berlin", next_run_at=start, missed_run_policy="catch_up_once")
    runs, _, missed = plan(s, start + timedelta(hours=24, minutes=10))
    assert missed.detected == 25
    assert runs == [PlannedRun(start + timedelta(hours=24), catch_up=True, coalesced_from=25)]


def test_decide_missed_reasons_name_the_policy_and_the_span() -> None:
    m = Missed(count=3, first=T0, latest=[T0, T0 + MIN, T0 + 2 * MIN])
    assert decide_missed(hourly(), m, T0).reason.endswith("policy skip")
    once = decide_missed(hourly(missed_run_policy="catch_up_once"), m, T0)
    assert "3 occurrence(s) missed from 2027-03-13T12:00:00+00:00 to 2027-03-13T12:02:00+00:00" in once.reason


@pytest.mark.parametrize(
    ("policy", "later_missed", "late", "skipped"),
    [
        ("skip", False, timedelta(seconds=30), None),  # within the grace: it runs on time
        ("skip", False, timedelta(hours=2), "policy skip"),
        ("catch_up_once", False, timedelta(hours=2), None),  # the only one missed: it is the catch-up
        ("catch_up_once", True, timedelta(hours=2), "stands for it"),
        ("catch_up_all", True, timedelta(hours=2), None),
    ],
)
def test_a_prepared_run_found_late_is_a_missed_occurrence(
    policy: str, later_missed: bool, late: timedelta, skipped: str | None
) -> None:
    now = T0 + late
    later = T0 + timedelta(hours=1) if later_missed else now + timedelta(minutes=30)
    s = hourly(missed_run_policy=policy, next_run_at=later)  # grace is 60 s
    reason = decide_prepared(s, T0, now)
    if skipped is None:
        assert reason is None
    else:
        assert reason is not None and skipped in reason and T0.isoformat() in reason
