"""The limits on every input: each bound refused by name, each maximum accepted, and anything at all
thrown at the definition and the proposal format ending in a value or in our error, never another one."""

from __future__ import annotations

import json
import math
from dataclasses import fields
from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise
from typing import Any
from zoneinfo import available_timezones

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.scheduler import InvalidSchedule, ScheduleDefinition
from agent.scheduler import limits as lim
from agent.scheduler.engine.outcomes import ended
from agent.scheduler.errors import TooLong
from agent.scheduler.policies.retry import MAX_BACKOFF, backoff_delay
from agent.scheduler.proposals import (
    InvalidProposal,
    ScheduleProposal,
    ValidationReport,
    parse_proposal,
    storable_payload,
    validate_proposal,
)
from agent.scheduler.schedule_policy import Finding, Outcome, Rule
from agent.scheduler.tasks import TaskRegistry
from agent.scheduler.triggers import CalendarTrigger, IntervalTrigger, parse_duration, validate_expression
from tests.unit.test_schedule_proposals_validation import FakeReads, proposal, registry

BASE: dict[str, Any] = {"name": "sweep", "trigger_type": "interval", "expression": "5m", "target": "sweep"}
FIELD_NAMES = frozenset(f.name for f in fields(ScheduleDefinition))
MB = 10 * 1024 * 1024
PLUS_5 = timezone(timedelta(hours=5))


def make(**overrides: Any) -> ScheduleDefinition:
    return ScheduleDefinition(**{**BASE, **overrides})


def nested(depth: int) -> dict[str, Any]:
    """A params object ``depth`` levels deep (the object itself is level 1)."""
    top: dict[str, Any] = {}
    cursor = top
    for _ in range(depth - 1):
        cursor["a"] = {}
        cursor = cursor["a"]
    return top


# ---------------------------------------------------------------------- each bound, by a table


@pytest.mark.parametrize(
    ("overrides", "field", "allowed"),
    [
        ({"expression": "0.5s"}, "expression", "from 1 second"),
        ({"expression": 0.000_001}, "expression", "from 1 second"),
        ({"expression": 1e-9}, "expression", "from 1 second"),
        ({"expression": "3654d"}, "expression", "to 3653 days"),
        ({"expression": 10**5000}, "expression", "from 1 second"),
        ({"trigger_type": "reconciliation", "expression": "0.999"}, "expression", "from 1 second"),
        ({"expression": "5m\n"}, "expression", "single line"),
        ({"expression": "\uff15m"}, "expression", "from 1 second"),  # a fullwidth digit five
        ({"expression": "5" * 300}, "expression", "at most 256 characters"),
        ({"trigger_type": "calendar", "expression": "*\n*\n*\n*\n*"}, "expression", "single line"),
        ({"trigger_type": "delay", "expression": "0001-01-01T00:00:00+05:00"}, "expression", "1970-01-01"),
        ({"trigger_type": "delay", "expression": "9999-12-31T23:00:00-05:00"}, "expression", "8999-12-31"),
        ({"trigger_type": "delay", "expression": "1969-12-31T23:59:59Z"}, "expression", "1970-01-01"),
        ({"trigger_type": "delay", "expression": "+3654d"}, "expression", "at most 3653 days"),
        ({"trigger_type": "event", "expression": "job.done\n"}, "expression", "single line"),
        ({"name": "x\n"}, "name", "ASCII letters"),
        ({"name": "sw\u0435ep"}, "name", "ASCII letters"),  # a Cyrillic e
        ({"name": "a" * 129}, "name", "1-128 characters"),
        ({"target": "sweep\n"}, "target", "ASCII letters"),
        ({"id": "a" * 65}, "id", "1-64 characters"),
        ({"id": "sch\n"}, "id", "1-64 characters"),
        ({"proposal_id": "prop 1"}, "proposal_id", "or None"),
        ({"proposal_id": "p" * 65}, "proposal_id", "1-64 characters"),
        ({"timezone": "U" * 1_000_000}, "timezone", "IANA"),
        ({"timezone": "UTC\n"}, "timezone", "IANA"),
        ({"description": "x" * MB}, "description", "at most 4096 characters"),
        ({"description": "a\x00b"}, "description", "NUL"),
        ({"description": "\udc80"}, "description", "lone surrogates"),
        ({"description": "bell\x07"}, "description", "control characters"),
        ({"disabled_reason": "x" * 2001}, "disabled_reason", "at most 2000 characters"),
        ({"disabled_reason": "\x00"}, "disabled_reason", "NUL"),
        ({"max_retries": 10**30}, "max_retries", "from 0 to 1000"),
        ({"max_retries": 1001}, "max_retries", "from 0 to 1000"),
        ({"catch_up_limit": 10**12}, "catch_up_limit", "from 1 to 1000"),
        ({"breaker_threshold": 1001}, "breaker_threshold", "from 1 to 1000"),
        ({"consecutive_failures": 2**31}, "consecutive_failures", "from 0 to 2147483647"),
        ({"retry_backoff": 3601}, "retry_backoff", "at most 1 hour"),
        ({"timeout": timedelta(days=7, microseconds=1)}, "timeout", "at most 7 days"),
        ({"timeout": math.nan}, "timeout", "more than 0"),
        ({"grace": math.inf}, "grace", "at most 7 days"),
        ({"shutdown_timeout": timedelta(hours=2)}, "shutdown_timeout", "at most 1 hour"),
        ({"breaker_cooldown": 10**400}, "breaker_cooldown", "at most 7 days"),
        ({"created_at": datetime(1, 1, 1, tzinfo=PLUS_5)}, "created_at", "1970-01-01"),
        ({"next_run_at": datetime(9999, 12, 31, 23, tzinfo=timezone(-timedelta(hours=5)))}, "next_run_at", "8999"),
        ({"anchor_at": datetime(1969, 12, 31, 23, 59, tzinfo=UTC)}, "anchor_at", "1970-01-01"),
        ({"last_run_at": datetime(9000, 1, 1, tzinfo=UTC)}, "last_run_at", "8999-12-31"),
        ({"updated_at": datetime(2027, 1, 1)}, "updated_at", "timezone-aware"),
        ({"params": {"a": "\x00"}}, "params", "NUL or a lone surrogate at params['a']"),
        ({"params": {"\udc80": 1}}, "params", "the key '\\udc80' at params"),
        ({"params": {"a": [2**63]}}, "params", "an integer beyond 64 bits at params['a'][0]"),
        ({"params": {"a": -(2**63) - 1}}, "params", "beyond 64 bits"),
        ({"params": {"a": 1e16}}, "params", "a float out of range"),
        ({"params": {"a": math.nan}}, "params", "a float out of range"),
        ({"params": nested(33)}, "params", "nesting deeper than 32"),
        ({"params": {"a": {1: "x"}}}, "params", "the key 1 at params['a']"),
        ({"params": {"a": b"bytes"}}, "params", "a bytes at params['a']"),
        ({"params": {"blob": "x" * MB}}, "params", "at most 65536 bytes"),
        ({"params": {"blob": "\u00e9" * 40_000}}, "params", "got 80011"),  # 2 bytes each in UTF-8
        ({"params": {"many": list(range(10**6))}}, "params", "at most 65536 bytes"),
    ],
)
def test_every_bound_is_refused_naming_the_field_and_what_is_allowed(
    overrides: dict[str, Any], field: str, allowed: str
) -> None:
    with pytest.raises(InvalidSchedule) as err:
        make(**overrides)
    assert (err.value.field, type(err.value.allowed)) == (field, str)
    assert allowed in err.value.allowed, err.value.allowed
    assert str(err.value).startswith(f"invalid {field}=") and len(str(err.value)) < 1000


@pytest.mark.parametrize(
    "overrides",
    [
        {"expression": "1s"},
        {"expression": 1},
        {"expression": 1.0},
        {"expression": "3653d"},
        {"trigger_type": "reconciliation", "expression": "1"},
        {"trigger_type": "calendar", "expression": "* * * * * *"},
        {"trigger_type": "delay", "expression": "1970-01-01T00:00:00Z"},
        {"trigger_type": "delay", "expression": "8999-12-31T23:59:59.999999+00:00"},
        {"trigger_type": "delay", "expression": "+3653d"},
        {"trigger_type": "event", "expression": "e" * 128},
        {"name": "N" * 128, "target": "t.a:s-k_1"},
        {"id": "i" * 64, "proposal_id": "p" * 64},
        {"description": "\t\n\r" + "\u00e9\U0001f600\u202e\u2028" * 1023},
        {"disabled_reason": "r" * 2000, "enabled": False},
        {"max_retries": 1000, "catch_up_limit": 1000, "breaker_threshold": 1000},
        {"consecutive_failures": 2**31 - 1},
        {"retry_backoff": 3600, "shutdown_timeout": timedelta(hours=1)},
        {"timeout": timedelta(days=7), "grace": timedelta(days=7), "breaker_cooldown": 7 * 86400},
        {"timeout": 0.000_001, "grace": 0, "shutdown_timeout": 0, "retry_backoff": 0, "breaker_cooldown": 0},
        {"created_at": datetime(1970, 1, 1, tzinfo=UTC), "next_run_at": lim.LATEST_INSTANT},
        {"anchor_at": datetime(1970, 1, 1, 5, tzinfo=PLUS_5)},
        {"params": {"i": [2**63 - 1, -(2**63)], "f": 9.999999999999998e15, "s": "\x01\x7f", "n": None}},
        {"params": nested(32)},
        {"params": {"blob": "x" * (65536 - 11)}},  # {"blob":"..."} is exactly 65536 bytes
    ],
)
def test_every_maximum_is_accepted(overrides: dict[str, Any]) -> None:
    built = make(**overrides)
    assert built.with_changes() == built  # and it checks again the same


def test_params_are_normalized_to_what_the_stores_give_back() -> None:
    d = make(params={"z": -0.0, "t": (1, 2), "i": True})
    assert d.params == {"z": 0.0, "t": [1, 2], "i": True}
    assert math.copysign(1, d.params["z"]) == 1.0


def test_names_are_matched_whole_everywhere() -> None:
    with pytest.raises(InvalidSchedule, match="task name"):
        TaskRegistry().add("sweep\n", lambda ctx: None)
    report = validate_proposal(
        proposal(proposed_by="agent-7\n"), tasks=registry(), reads=FakeReads(), now=datetime(2027, 1, 1, tzinfo=UTC)
    )
    assert [(f.rule, f.field) for f in report.schema_errors] == [(Rule.WRONG_TYPE, "proposed_by")]


def test_an_interval_trigger_fires_at_most_once_a_second() -> None:
    with pytest.raises(InvalidSchedule, match="from 1 second"):
        IntervalTrigger(timedelta(microseconds=999_999), datetime(2027, 1, 1, tzinfo=UTC))
    for kind in ("interval", "reconciliation"):
        with pytest.raises(InvalidSchedule, match="from 1 second"):
            validate_expression(kind, "0.1")


@pytest.mark.parametrize("expression", ["* * * * * *", "*/1 * * * * *", "0-59 * * * * *", "0,1,2 * * * * *"])
@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Australia/Lord_Howe"])
def test_a_cron_with_seconds_fires_at_most_once_a_second_even_across_dst(expression: str, zone: str) -> None:
    # 2025-11-02 06:00 UTC is 01:00 EST, just after New York's clocks went back; Lord Howe moves by 30 minutes.
    start = datetime(2025, 11, 2, 5, 59, 30, tzinfo=UTC)
    fires = CalendarTrigger(expression, zone).occurrences(start, start + timedelta(minutes=3))
    assert fires and all(b - a >= timedelta(seconds=1) for a, b in pairwise(fires))


def test_the_retry_backoff_stays_capped_and_never_overflows() -> None:
    for attempt in (1, 2, 31, 1001, 10**6):
        delay = backoff_delay(attempt, lim.MAX_RETRY_BACKOFF, key="run")
        assert timedelta(0) < delay <= MAX_BACKOFF * 1.1
    assert backoff_delay(40, timedelta.max, key="run") <= MAX_BACKOFF * 1.1
    assert backoff_delay(3, timedelta(seconds=10), key="run") >= timedelta(seconds=40)  # 10 s * 2**2, plus jitter
    assert lim.MAX_RETRY_BACKOFF <= MAX_BACKOFF


def test_a_task_outcome_is_kept_as_text_both_stores_hold() -> None:
    trigger, changes = ended("ok\x00\udc80 \u00e9")
    assert (trigger, changes["outcome"]) == ("succeed", "ok\\x00\\udc80 \u00e9")
    trigger, changes = ended(error=RuntimeError("bad\x00"))
    assert trigger == "fail" and changes["error"] == "RuntimeError: bad\\x00"
    assert lim.storable(changes["error_traceback"])


def test_the_text_helpers() -> None:
    assert lim.storable("tab\tnew\nline \u00e9\U0001f600") and not lim.storable("\x00") and not lim.storable("\ud800")
    assert lim.storable_text("a\x00b\udfff") == "a\\x00b\\udfff"
    assert lim.escaped("a\x00\udc80" + "x" * 200, 12) == "a\\x00\\udc80x"
    assert [lim.describe(timedelta(seconds=s)) for s in (1, 0.5, 3600, 86400 * 7, 90)] == [
        "1 second",
        "0.5 seconds",
        "1 hour",
        "7 days",
        "90 seconds",
    ]
    with pytest.raises(TooLong):
        lim.check_text("f", "x" * 11, 10)
    with pytest.raises(InvalidSchedule, match="found '\\\\t' at position 1"):
        lim.check_text("f", "a\tb", 10, single_line=True)
    assert lim.check_text("f", "a\tb", 10) == "a\tb"


# ---------------------------------------------------------------------- anything thrown at them

HOSTILE_TEXT = st.one_of(
    st.text(max_size=20),
    st.text(st.characters(exclude_categories=()), max_size=20),  # surrogates and control characters too
    st.sampled_from(
        [
            "",
            " ",
            "x\n",
            "\x00",
            "\udc80",
            "a\u2028b",
            "sw\u0435ep",  # a Cyrillic e
            "\uff15m",  # a fullwidth digit five
            "5m\n",
            "0.5s",
            "1e-9",
            "* * * * * *",
            "*\n*\n*\n*\n*",
            "+3654d",
            "0001-01-01T00:00:00+05:00",
            "9999-12-31T23:00:00-05:00",
            "UTC",
            "Europe/Berlin",
        ]
    ),
    st.integers(4000, 70_000).map(lambda n: "x" * n),
    st.just("d" * MB),
)
HOSTILE_NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.sampled_from([0, -1, 1, 1000, 1001, 2**31 - 1, 2**31, 2**63, 10**30]),
    st.integers(4400, 5000).map(lambda digits: 10**digits),
    st.floats(),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e-9, 0.5, 1e300, -0.0]),
)
HOSTILE_INSTANTS = st.one_of(
    st.datetimes(timezones=st.none() | st.timezones() | st.just(PLUS_5)),
    st.sampled_from(
        [
            datetime(1, 1, 1, tzinfo=PLUS_5),
            datetime(9999, 12, 31, 23, tzinfo=timezone(-timedelta(hours=5))),
            datetime.max.replace(tzinfo=UTC),
            datetime(2027, 3, 13, 12, tzinfo=UTC),
        ]
    ),
)
HOSTILE_SPANS = st.timedeltas() | st.sampled_from([timedelta(0), timedelta.max, timedelta(days=-1), timedelta(hours=1)])
HOSTILE_PARAMS = st.recursive(
    st.none() | st.booleans() | HOSTILE_NUMBERS | HOSTILE_TEXT | st.binary(max_size=4) | st.datetimes(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner)
        | st.dictionaries(HOSTILE_TEXT | st.integers(), inner, max_size=4)
        | st.frozensets(st.integers(), max_size=2)
    ),
    max_leaves=16,
) | st.integers(30, 40).map(nested)
ANYTHING = st.one_of(
    HOSTILE_TEXT,
    HOSTILE_NUMBERS,
    HOSTILE_INSTANTS,
    HOSTILE_SPANS,
    HOSTILE_PARAMS,
    st.none(),
    st.booleans(),
    st.builds(object),
)


def hostile(field_name: str) -> st.SearchStrategy[Any]:
    """Values for one field: mostly of the field's kind (valid-ish and hostile), sometimes anything."""
    kind: dict[str, st.SearchStrategy[Any]] = {
        "params": HOSTILE_PARAMS,
        "max_retries": HOSTILE_NUMBERS,
        "catch_up_limit": HOSTILE_NUMBERS,
        "breaker_threshold": HOSTILE_NUMBERS,
        "consecutive_failures": HOSTILE_NUMBERS,
        "enabled": st.booleans(),
        "trigger_type": st.sampled_from(["interval", "calendar", "delay", "event", "lifecycle", "reconciliation"]),
    }
    if field_name in ("retry_backoff", "timeout", "grace", "shutdown_timeout", "breaker_cooldown"):
        return HOSTILE_SPANS | HOSTILE_NUMBERS | st.none()
    if field_name.endswith("_at"):
        return HOSTILE_INSTANTS | st.none()
    return kind.get(field_name, HOSTILE_TEXT) | ANYTHING


# ---------------------------------------------------------------------- valid definitions, at their limits too

NAMES = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}", fullmatch=True)
IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", fullmatch=True)
#: Anything but control characters and lone surrogates, and tab, newline, carriage return.
TEXT_CHARS = st.characters(exclude_categories=("Cs", "Cc")) | st.sampled_from("\t\n\r")
TEXT = st.text(TEXT_CHARS, max_size=60) | st.sampled_from(["", "\U0001f600" * 4096, "\u00e9\t" * 2048])
ZONES = sorted(available_timezones())
CRONS = ["*/5 * * * *", "0 9 * * mon-fri", "* * * * * *", "30 0 9 * * *", "0 0 29 2 *", "@daily", "0 0 L * *"]
INSTANTS = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(8999, 12, 30), timezones=st.timezones() | st.just(UTC)
)
JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(lim.PARAMS_INT_MIN, lim.PARAMS_INT_MAX)
    | st.floats(min_value=-9.999e15, max_value=9.999e15, allow_nan=False)
    | st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=30)
)
KEYS = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12)


def _fits(params: dict[str, Any]) -> bool:
    try:
        lim.params_bytes("params", params)
    except InvalidSchedule:
        return False
    return True


PARAMS = st.dictionaries(
    KEYS,
    st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner), max_leaves=12),
    max_size=5,
).filter(_fits) | st.just(nested(32))


def _span(high: timedelta, *, low: timedelta = timedelta(0)) -> st.SearchStrategy[timedelta]:
    return st.timedeltas(min_value=low, max_value=high) | st.sampled_from([low, high])


@st.composite
def expressions(draw: st.DrawFn) -> tuple[str, Any, str]:
    """(trigger type, expression, timezone), valid together."""
    kind = draw(st.sampled_from(["interval", "reconciliation", "calendar", "delay", "event", "lifecycle"]))
    if kind in ("interval", "reconciliation"):
        seconds = draw(st.integers(1, 3653 * 86400))
        expression: Any = draw(
            st.sampled_from([seconds, str(seconds), "1s", "1.5", "90s", "15m", "2h", "1d", "3653d"])
            | st.builds(lambda n, u: f"{n}{u}", st.integers(1, 59), st.sampled_from("smhd"))
        )
    elif kind == "calendar":
        expression = draw(st.sampled_from(CRONS))
    elif kind == "delay":
        expression = draw(INSTANTS.map(datetime.isoformat) | st.sampled_from(["+1s", "+15m", "+3653d"]))
    elif kind == "event":
        expression = draw(st.from_regex(r"[A-Za-z0-9_.:-]{1,128}", fullmatch=True))
    else:
        expression = draw(st.sampled_from(["startup", "shutdown"]))
    return kind, expression, draw(st.sampled_from(ZONES)) if kind == "calendar" else "UTC"


@st.composite
def valid_kwargs(draw: st.DrawFn) -> dict[str, Any]:
    """Keyword arguments of a valid definition: any value within the limits, the limits themselves included."""
    kind, expression, zone = draw(expressions())
    optional: dict[str, st.SearchStrategy[Any]] = {
        "params": PARAMS,
        "description": TEXT.filter(lambda t: len(t) <= lim.DESCRIPTION_CHARS),
        "missed_run_policy": st.sampled_from(["skip", "catch_up_once", "catch_up_all"]),
        "concurrency_policy": st.sampled_from(["forbid", "allow", "enqueue_one", "replace"]),
        "shutdown_policy": st.sampled_from(["graceful_finish", "checkpoint_and_stop", "requeue"]),
        "risk_tier": st.sampled_from(["low", "medium", "high"]),
        "enabled": st.booleans(),
        "max_retries": st.integers(0, lim.MAX_RETRIES),
        "retry_backoff": _span(lim.MAX_RETRY_BACKOFF),
        "timeout": st.none() | _span(lim.MAX_TIMEOUT, low=timedelta(microseconds=1)),
        "grace": _span(lim.MAX_GRACE),
        "catch_up_limit": st.integers(1, lim.MAX_CATCH_UP_LIMIT),
        "shutdown_timeout": _span(lim.MAX_SHUTDOWN_TIMEOUT),
        "breaker_threshold": st.integers(1, lim.MAX_BREAKER_THRESHOLD),
        "breaker_cooldown": st.none() | _span(lim.MAX_BREAKER_COOLDOWN),
        "source": st.sampled_from(["user", "legacy_cron", "agent"]),
        "proposal_id": st.none() | IDS,
        "id": IDS,
        "next_run_at": st.none() | INSTANTS,
        "last_run_at": st.none() | INSTANTS,
        "anchor_at": st.none() | INSTANTS,
        "breaker_state": st.sampled_from(["closed", "open", "half_open"]),
        "consecutive_failures": st.integers(0, lim.MAX_STORED_INT),
        "breaker_opened_at": st.none() | INSTANTS,
        "disabled_reason": st.none() | TEXT.filter(lambda t: len(t) <= lim.REASON_CHARS),
        "created_at": st.none() | INSTANTS,
        "updated_at": st.none() | INSTANTS,
    }
    kw: dict[str, Any] = {
        "name": draw(NAMES),
        "target": draw(NAMES),
        "trigger_type": kind,
        "expression": expression,
        "timezone": zone,
    }
    for name in draw(st.lists(st.sampled_from(sorted(optional)), max_size=len(optional), unique=True)):
        kw[name] = draw(optional[name])
    return kw


@st.composite
def hostile_kwargs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid definition's keyword arguments with one to three fields given hostile values."""
    kw = draw(valid_kwargs())
    for name in draw(st.lists(st.sampled_from(sorted(FIELD_NAMES)), min_size=1, max_size=3, unique=True)):
        kw[name] = draw(hostile(name))
    return kw


def _all_text_storable(d: ScheduleDefinition) -> bool:
    texts = [v for f in fields(d) if isinstance(v := getattr(d, f.name), str)]
    return all(lim.storable(t) for t in texts) and lim.json_storable(d.params)


@settings(max_examples=150)
@given(kw=hostile_kwargs())
def test_a_definition_of_anything_builds_or_raises_invalid_schedule_naming_a_field(kw: dict[str, Any]) -> None:
    try:
        built = ScheduleDefinition(**kw)
    except InvalidSchedule as exc:
        assert exc.field in FIELD_NAMES
        assert isinstance(exc.allowed, str) and exc.allowed
        assert len(str(exc)) < 1000
        return
    assert _all_text_storable(built)
    assert built.with_changes() == built
    assert len(json.dumps(built.params, ensure_ascii=False).encode()) <= lim.MAX_PARAMS_BYTES + 4096


PROPOSAL_KEYS = (
    "name",
    "trigger_type",
    "expression",
    "target",
    "objective",
    "proposed_by",
    "timezone",
    "params",
    "timeout_s",
    "max_retries",
    "retry_backoff_s",
    "breaker_threshold",
    "capabilities",
    "bundle",
    "typical_duration_s",
)


@st.composite
def hostile_proposals(draw: st.DrawFn) -> Any:
    """A valid proposal with some fields (and maybe some keys) replaced by hostile values."""
    data: dict[Any, Any] = proposal()
    for key in draw(st.lists(st.sampled_from(PROPOSAL_KEYS), min_size=1, max_size=4, unique=True)):
        data[key] = draw(HOSTILE_PARAMS if key == "params" else ANYTHING | st.lists(HOSTILE_TEXT, max_size=3))
    data.update(draw(st.dictionaries(HOSTILE_TEXT, ANYTHING, max_size=2)))
    return data


def _fields_named(findings: tuple[Finding, ...]) -> bool:
    known = set(PROPOSAL_KEYS) | FIELD_NAMES | {"", "objective", "risk_estimate"}
    return all(f.rule is Rule.UNKNOWN_FIELD or f.field in known for f in findings)


@settings(max_examples=150)
@given(data=hostile_proposals() | ANYTHING)
def test_a_proposal_of_anything_is_reported_on_never_raised_and_never_unstorable(data: Any) -> None:
    parsed, problems, _ = parse_proposal(data)
    assert (parsed is None) == bool(problems) and _fields_named(tuple(problems))
    try:
        ScheduleProposal.from_dict(data)
    except InvalidProposal as exc:
        assert exc.findings
    report = validate_proposal(data, tasks=registry(), reads=FakeReads(), now=datetime(2027, 1, 1, tzinfo=UTC))
    assert isinstance(report, ValidationReport)
    assert _fields_named(report.findings + report.conflict_warnings)
    stored = report.to_dict()
    assert lim.json_storable(json.loads(json.dumps(stored))), "the report holds NUL or a lone surrogate"
    assert all(lim.storable(f.field) for f in report.findings)
    payload = storable_payload(data)
    assert lim.json_storable(payload) and len(json.dumps(payload)) < 300_000
    if report.definition is not None:
        assert _all_text_storable(report.definition)


def test_known_timezones_fit_the_column() -> None:
    assert max(len(z) for z in available_timezones()) <= lim.TIMEZONE_CHARS


def test_a_duration_that_rounds_to_no_time_is_refused_and_a_proposal_reports_it() -> None:
    for tiny in (1e-9, "0.0000001s", 4e-7):
        with pytest.raises(InvalidSchedule):
            parse_duration(tiny)
    report = validate_proposal(
        {**proposal(), "timeout_s": 1e-9}, tasks=registry(), reads=FakeReads(), now=datetime(2027, 3, 13, tzinfo=UTC)
    )
    assert report.decision is Outcome.REJECT and [f.field for f in report.findings] == ["timeout_s"]
