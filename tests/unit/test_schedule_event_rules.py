"""The event inbox's pure rules: what an event may be, and which schedules an event reaches."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent.scheduler import ScheduleDefinition, TriggerType
from agent.scheduler.engine.events import NO_LISTENER, listeners
from agent.scheduler.enums import BreakerState, CallerKind, RiskTier
from agent.scheduler.errors import InvalidSchedule, TooLong
from agent.scheduler.inbox import EVENT_PAYLOAD_BYTES, check_event, new_event, parse_payload

T0 = datetime(2027, 3, 13, 12, tzinfo=UTC)
KNOWN = {"t": RiskTier.LOW}.get


def on(name: str, expression: str, **state: Any) -> ScheduleDefinition:
    schedule = ScheduleDefinition(name=name, trigger_type=TriggerType.EVENT, expression=expression, target="t")
    return replace(schedule, **{"created_at": T0 - timedelta(hours=1), **state})


@pytest.mark.parametrize(
    ("text", "payload"),
    [
        (None, {}),
        ("", {}),
        ("  ", {}),
        ('{"a": [1, {"b": null}]}', {"a": [1, {"b": None}]}),
        ('{"x": -0.0}', {"x": 0.0}),
    ],
)
def test_payload_text_parses_to_an_object(text: str | None, payload: dict[str, Any]) -> None:
    assert parse_payload(text) == payload


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[1]", "got an array"),
        ('"s"', "got a string"),
        ("3", "got a number"),
        ("true", "got a boolean"),
        ("{", "not JSON: Expecting property name enclosed in double quotes at character 1"),
        ('{"a": NaN}', "a float out of range"),
        ("[" * 100_000, "got 100000 characters of text"),
        ('{"a":' * 40 + "1" + "}" * 40, "nesting deeper than 32"),
    ],
)
def test_bad_payload_text_is_refused_naming_the_payload(text: str, words: str) -> None:
    with pytest.raises(InvalidSchedule) as caught:
        parse_payload(text)
    assert caught.value.field == "payload" and words in str(caught.value)


def test_names_are_what_an_event_schedule_can_listen_to() -> None:
    for good in ("job.done", "a", "x" * 128, "_private:thing-1"):
        assert check_event(good, None) == (good, {})
        on("s", good)  # and a schedule may listen to it
    for bad in ("", "x" * 129, "with space", "tab\t", "é", None, 3):
        with pytest.raises(InvalidSchedule) as caught:
            check_event(bad, {})
        assert caught.value.field == "name"


def test_the_payload_bound_is_sixteen_kibibytes_of_compact_json() -> None:
    assert EVENT_PAYLOAD_BYTES == 16 * 1024
    fits = {"k": "x" * (EVENT_PAYLOAD_BYTES - len('{"k":""}'))}
    assert check_event("e", fits)[1] == fits
    with pytest.raises(TooLong):
        check_event("e", {"k": fits["k"] + "x"})


def test_a_new_event_is_pending_with_who_and_when() -> None:
    event = new_event("job.done", {"a": 1}, emitted_by="cli:alice", emitted_at=T0)
    assert (event.name, event.payload, event.emitted_by, event.emitted_at) == ("job.done", {"a": 1}, "cli:alice", T0)
    assert event.id.startswith("ev_") and event.status.value == "pending" and event.run_ids == ()
    with pytest.raises(InvalidSchedule) as caught:
        new_event("job.done", {}, emitted_by="two\nlines", emitted_at=T0)
    assert caught.value.field == "emitted_by"
    with pytest.raises(InvalidSchedule) as caught:
        new_event("job.done", {}, emitted_by="x", emitted_at=datetime(2027, 1, 1))  # naive
    assert caught.value.field == "emitted_at"


def test_an_event_reaches_the_enabled_schedules_on_its_name_that_existed_when_it_was_emitted() -> None:
    event = new_event("job.done", {}, emitted_by="x", emitted_at=T0)
    ready = on("ready", "job.done")
    same_instant = on("same_instant", "job.done", created_at=T0)
    half_open = on("half_open", "job.done", breaker_state=BreakerState.HALF_OPEN)
    schedules = [
        ready,
        same_instant,
        half_open,
        on("off", "job.done", enabled=False),
        on("tripped", "job.done", breaker_state=BreakerState.OPEN),
        on("later", "job.done", created_at=T0 + timedelta(microseconds=1)),
        on("elsewhere", "job.other"),
    ]
    hearing, reason = listeners(event, schedules, KNOWN)
    assert hearing == [ready, same_instant, half_open]
    assert reason == "listening but not run: off (disabled), tripped (breaker open), later (created after the event)"
    assert listeners(event, [ready], KNOWN) == ([ready], None)
    assert listeners(event, [on("elsewhere", "job.other")], KNOWN) == ([], NO_LISTENER)
    assert listeners(event, [], KNOWN) == ([], NO_LISTENER)


def test_an_agents_event_starts_neither_high_risk_work_nor_a_task_whose_risk_this_worker_cannot_tell() -> None:
    tiers = {"t": RiskTier.LOW, "payout": RiskTier.HIGH}
    schedules = [
        on("low", "job.done"),
        on("high_schedule", "job.done", risk_tier=RiskTier.HIGH),
        on("high_task", "job.done", target="payout"),
        on("unknown_task", "job.done", target="elsewhere"),
    ]
    agents = replace(new_event("job.done", {}, emitted_by="agent:a", emitted_at=T0), emitted_kind=CallerKind.AGENT)
    hearing, reason = listeners(agents, schedules, tiers.get)
    assert [s.name for s in hearing] == ["low"]
    assert reason == (
        "listening but not run: high_schedule (high-risk: an agent's event does not start it), "
        "high_task (high-risk task: an agent's event does not start it), "
        "unknown_task (task elsewhere unknown to this worker, its risk unknown: an agent's event does not start it)"
    )
    for kind in (CallerKind.HUMAN, CallerKind.SYSTEM):  # a person's or the host's event starts them all
        assert listeners(replace(agents, emitted_kind=kind), schedules, tiers.get) == (schedules, None)
