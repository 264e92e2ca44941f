"""ScheduleDefinition: good definitions are normalized; every bad field kind is refused by name."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent.scheduler import (
    ConcurrencyPolicy,
    InvalidSchedule,
    MissedRunPolicy,
    RiskTier,
    ScheduleDefinition,
    ShutdownPolicy,
    TriggerType,
)

BASE: dict[str, Any] = {"name": "sweep", "trigger_type": "calendar", "expression": "*/5 * * * *", "target": "sweep"}


def _nested(depth: int) -> dict[str, Any]:
    inner: dict[str, Any] = {}
    outer = inner
    for _ in range(depth):
        inner["a"] = {}
        inner = inner["a"]
    return outer


def make(**overrides: Any) -> ScheduleDefinition:
    return ScheduleDefinition(**{**BASE, **overrides})


def test_strings_and_seconds_are_normalized_to_enums_and_timedeltas() -> None:
    d = make(
        missed_run_policy="catch_up_all",
        concurrency_policy="replace",
        shutdown_policy="requeue",
        risk_tier="high",
        timeout=90,
        grace=5.5,
        breaker_cooldown=600,
        timezone="Europe/Berlin",
    )
    assert d.trigger_type is TriggerType.CALENDAR
    assert d.missed_run_policy is MissedRunPolicy.CATCH_UP_ALL
    assert d.concurrency_policy is ConcurrencyPolicy.REPLACE
    assert d.shutdown_policy is ShutdownPolicy.REQUEUE
    assert d.risk_tier is RiskTier.HIGH
    assert (d.timeout, d.grace, d.breaker_cooldown) == (
        timedelta(seconds=90),
        timedelta(seconds=5.5),
        timedelta(minutes=10),
    )


def test_defaults_are_the_documented_ones() -> None:
    d = make()
    assert d.missed_run_policy is MissedRunPolicy.SKIP
    assert d.concurrency_policy is ConcurrencyPolicy.FORBID
    assert d.shutdown_policy is ShutdownPolicy.GRACEFUL_FINISH
    assert (d.max_retries, d.breaker_threshold, d.catch_up_limit) == (3, 3, 100)
    assert d.id.startswith("sch_") and d.id != make().id


def test_enum_values_are_the_lower_case_strings_stored() -> None:
    assert [t.value for t in TriggerType] == ["lifecycle", "interval", "calendar", "delay", "event", "reconciliation"]
    assert [p.value for p in MissedRunPolicy] == ["skip", "catch_up_once", "catch_up_all"]
    assert [p.value for p in ConcurrencyPolicy] == ["forbid", "allow", "enqueue_one", "replace"]
    assert [p.value for p in ShutdownPolicy] == ["graceful_finish", "checkpoint_and_stop", "requeue"]
    assert [p.value for p in RiskTier] == ["low", "medium", "high"]


@pytest.mark.parametrize(
    ("overrides", "field", "allowed"),
    [
        ({"name": ""}, "name", "1-128 characters"),
        ({"name": "has space"}, "name", "letters, digits"),
        ({"name": 7}, "name", "1-128 characters"),
        ({"target": "../etc"}, "target", "letters, digits"),
        ({"trigger_type": "hourly"}, "trigger_type", "one of: lifecycle, interval, calendar"),
        ({"expression": "61 * * * *"}, "expression", "cron"),
        ({"expression": "0 0 31 2 *"}, "expression", "cron"),
        ({"trigger_type": "interval", "expression": "5x"}, "expression", '"15m"'),
        ({"trigger_type": "interval", "expression": "0"}, "expression", "from 1 second"),
        ({"trigger_type": "lifecycle", "expression": "sometimes"}, "expression", "startup"),
        ({"trigger_type": "delay", "expression": "2027-03-13T09:00:00"}, "expression", "offset"),
        ({"timezone": "Mars/Olympus"}, "timezone", "IANA"),
        ({"timezone": None}, "timezone", "IANA"),
        ({"params": ["a"]}, "params", "JSON object"),
        ({"params": {"when": datetime(2027, 1, 1, tzinfo=UTC)}}, "params", "JSON object"),
        ({"params": {"blob": "x" * 70_000}}, "params", "65536 bytes"),
        ({"params": _nested(5000)}, "params", "JSON object"),
        ({"timeout": 10**400}, "timeout", "at most 7 days"),
        ({"missed_run_policy": "sometimes"}, "missed_run_policy", "one of: skip, catch_up_once, catch_up_all"),
        ({"concurrency_policy": "queue"}, "concurrency_policy", "one of: forbid, allow, enqueue_one, replace"),
        ({"shutdown_policy": "die"}, "shutdown_policy", "one of: graceful_finish, checkpoint_and_stop, requeue"),
        ({"risk_tier": "extreme"}, "risk_tier", "one of: low, medium, high"),
        ({"enabled": "yes"}, "enabled", "true or false"),
        ({"max_retries": -1}, "max_retries", "from 0 to 1000"),
        ({"max_retries": 1.5}, "max_retries", "whole number"),
        ({"max_retries": True}, "max_retries", "whole number"),
        ({"catch_up_limit": 0}, "catch_up_limit", "from 1 to 1000"),
        ({"breaker_threshold": 0}, "breaker_threshold", "from 1 to 1000"),
        ({"retry_backoff": -5}, "retry_backoff", "0 or more"),
        ({"timeout": 0}, "timeout", "more than 0"),
        ({"timeout": "1h"}, "timeout", "timedelta"),
        ({"grace": timedelta(seconds=-1)}, "grace", "0 or more"),
        ({"shutdown_timeout": "soon"}, "shutdown_timeout", "timedelta"),
        ({"breaker_cooldown": -1}, "breaker_cooldown", "or None"),
        ({"source": "martians"}, "source", "one of: user, legacy_cron, agent"),
        ({"next_run_at": datetime(2027, 1, 1)}, "next_run_at", "timezone-aware"),
        ({"id": ""}, "id", "1-64 characters"),
    ],
)
def test_every_bad_field_is_refused_naming_field_value_and_what_is_allowed(
    overrides: dict[str, Any], field: str, allowed: str
) -> None:
    with pytest.raises(InvalidSchedule) as err:
        make(**overrides)
    assert err.value.field == field
    assert allowed in err.value.allowed
    assert field in str(err.value)


def test_with_changes_revalidates_and_refuses_unknown_fields() -> None:
    d = make()
    assert d.with_changes(expression="0 6 * * *").expression == "0 6 * * *"
    with pytest.raises(InvalidSchedule) as err:
        d.with_changes(expression="not cron")
    assert err.value.field == "expression"
    with pytest.raises(InvalidSchedule, match="colour"):
        d.with_changes(colour="blue")


def test_interval_expression_may_be_a_number_of_seconds() -> None:
    d = make(trigger_type="interval", expression=90)
    assert d.expression == "90"
    assert d.is_time_based
    assert not make(trigger_type="event", expression="job.stalled").is_time_based


def test_trigger_uses_the_anchor_for_intervals() -> None:
    anchor = datetime(2027, 3, 13, 12, 0, tzinfo=UTC)
    d = make(trigger_type="interval", expression="15m", anchor_at=anchor)
    assert d.trigger().next_after(anchor) == anchor + timedelta(minutes=15)
