"""Occurrence math of the schedule triggers: cron across DST, intervals, delays, events, lifecycle."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from agent.scheduler.enums import TriggerType
from agent.scheduler.errors import InvalidSchedule
from agent.scheduler.triggers import (
    CalendarTrigger,
    DelayTrigger,
    EventTrigger,
    IntervalTrigger,
    LifecycleTrigger,
    build_trigger,
    parse_duration,
    validate_expression,
)

NY = "America/New_York"
BERLIN = "Europe/Berlin"
US_SPRING, US_FALL = date(2025, 3, 9), date(2025, 11, 2)
EU_SPRING, EU_FALL = date(2025, 3, 30), date(2025, 10, 26)
DST_DAYS = [(NY, US_SPRING), (NY, US_FALL), (BERLIN, EU_SPRING), (BERLIN, EU_FALL)]
TINY = timedelta(microseconds=1)


def z(  # mirrors the datetime constructor
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    """An aware UTC instant."""
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def local_day(tz: str, day: date) -> tuple[datetime, datetime]:
    """(start, end) such that ``start < t <= end`` is exactly the local calendar day ``[00:00, 24:00)``."""
    zone = ZoneInfo(tz)
    midnight = datetime(day.year, day.month, day.day, tzinfo=zone)
    after = (midnight + timedelta(days=1)).replace(tzinfo=zone)
    return midnight.astimezone(UTC) - TINY, after.astimezone(UTC) - TINY


def fires_on(expr: str, tz: str, day: date) -> list[datetime]:
    return CalendarTrigger(expr, tz).occurrences(*local_day(tz, day))


# --- an independent reference: brute force over real instants, own field matcher, no croniter ----


def _field(text: str, lo: int, hi: int) -> set[int]:
    values: set[int] = set()
    for part in text.split(","):
        rng, _, step = part.partition("/")
        if rng == "*":
            first, last = lo, hi
        elif "-" in rng:
            first, last = (int(x) for x in rng.split("-"))
        else:
            first = last = int(rng)
        values.update(range(first, last + 1, int(step or 1)))
    return values


def reference(expr: str, tz: str, day: date) -> list[datetime]:
    """Fires of a simple cron (numbers, ranges, steps, lists; every day) on a local day.

    Hour field ``*``: every real instant whose wall time matches. Fixed hours: the first pass of a
    repeated wall time only, and a wall time lost in a gap fires at the first real instant after it.
    """
    fields = expr.split()
    seconds = _field(fields.pop(0), 0, 59) if len(fields) == 6 else {0}
    minutes, hours = _field(fields[0], 0, 59), _field(fields[1], 0, 23)
    assert fields[2:] == ["*", "*", "*"]
    every_hour = fields[1] == "*"
    zone = ZoneInfo(tz)
    start, end = local_day(tz, day)
    first_minute = (start + TINY).replace(second=0, microsecond=0)
    real_minutes = [first_minute + timedelta(minutes=i) for i in range(26 * 60)]
    real_minutes = [m for m in real_minutes if m <= end]
    found: set[datetime] = set()
    for minute in real_minutes:  # offsets change on whole minutes here, so seconds need no conversion
        local = minute.astimezone(zone)
        if local.minute in minutes and local.hour in hours and (every_hour or local.fold == 0):
            found.update(minute.replace(second=s) for s in seconds)
    if not every_hour:
        walls = [datetime(day.year, day.month, day.day) + timedelta(minutes=i) for i in range(24 * 60)]
        for wall in walls:
            exists = wall.replace(tzinfo=zone).astimezone(UTC).astimezone(zone).replace(tzinfo=None) == wall
            if not exists and wall.minute in minutes and wall.hour in hours and seconds:
                found.add(next(m for m in real_minutes if m.astimezone(zone).replace(tzinfo=None) > wall))
    return sorted(t for t in found if start < t <= end)


REFERENCE_EXPRS = [
    "30 2 * * *",
    "30 1 * * *",
    "0 * * * *",
    "*/5 * * * *",
    "15,45 1-3 * * *",
    "*/20 2 * * *",
    "10,40 */15 * * * *",
    "0 30 */2 * * *",
]


@pytest.mark.parametrize(("tz", "day"), DST_DAYS)
@pytest.mark.parametrize("expr", REFERENCE_EXPRS)
def test_calendar_matches_brute_force_reference_on_dst_days(expr: str, tz: str, day: date) -> None:
    expected = reference(expr, tz, day)
    assert fires_on(expr, tz, day) == expected
    assert expected  # the reference itself found something to compare


@pytest.mark.parametrize(("tz", "day"), DST_DAYS)
@pytest.mark.parametrize("expr", ["30 2 * * *", "30 1 * * *", "*/20 * * * *", "15,45 1-3 * * *"])
def test_calendar_next_after_agrees_with_reference_from_any_instant(expr: str, tz: str, day: date) -> None:
    expected = reference(expr, tz, day)
    trigger = CalendarTrigger(expr, tz)
    start, _ = local_day(tz, day)
    probes = [start + timedelta(minutes=17 * i) for i in range(86)]
    probes += [t + d for t in expected for d in (-TINY, timedelta(0))]
    for probe in probes:
        later = [t for t in expected if t > probe]
        if later:
            assert trigger.next_after(probe) == later[0], probe


# --- DST: the named cases ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tz", "day", "expected_utc", "local_text"),
    [
        (NY, US_SPRING, z(2025, 3, 9, 7, 0), "03:00 EDT"),  # 02:30 does not exist: end of the gap
        (NY, US_FALL, z(2025, 11, 2, 7, 30), "02:30 EST"),
        (BERLIN, EU_SPRING, z(2025, 3, 30, 1, 0), "03:00 CEST"),
        (BERLIN, EU_FALL, z(2025, 10, 26, 0, 30), "02:30 CEST"),  # 02:30 repeats: first pass only
    ],
)
def test_daily_0230_fires_exactly_once_on_each_dst_day(
    tz: str, day: date, expected_utc: datetime, local_text: str
) -> None:
    assert fires_on("30 2 * * *", tz, day) == [expected_utc]
    assert expected_utc.astimezone(ZoneInfo(tz)).strftime("%H:%M %Z") == local_text


def test_daily_0230_keeps_its_wall_time_on_the_days_around_spring_forward() -> None:
    fires = CalendarTrigger("30 2 * * *", NY).occurrences(z(2025, 3, 8), z(2025, 3, 11))
    assert [f.astimezone(ZoneInfo(NY)).strftime("%d %H:%M") for f in fires] == [
        "08 02:30",
        "09 03:00",
        "10 02:30",
    ]


def test_fixed_hour_in_repeated_hour_fires_once_at_the_first_pass() -> None:
    assert fires_on("30 1 * * *", NY, US_FALL) == [z(2025, 11, 2, 5, 30)]  # 01:30 EDT, not 01:30 EST
    trigger = CalendarTrigger("30 1 * * *", NY)
    # From inside the repeated hour (either pass) the next fire is tomorrow, not the second 01:30.
    assert trigger.next_after(z(2025, 11, 2, 5, 30)) == z(2025, 11, 3, 6, 30)
    assert trigger.next_after(z(2025, 11, 2, 6, 10)) == z(2025, 11, 3, 6, 30)
    assert trigger.next_after(z(2025, 11, 2, 5, 10)) == z(2025, 11, 2, 5, 30)


@pytest.mark.parametrize(("tz", "day"), DST_DAYS)
@pytest.mark.parametrize("expr", ["0 * * * *", "@hourly", "0 */1 * * *", "0 0-23 * * *"])
def test_hourly_fires_once_per_real_hour(expr: str, tz: str, day: date) -> None:
    fires = fires_on(expr, tz, day)
    assert len(fires) == (23 if day.month == 3 else 25)
    assert all(b - a == timedelta(hours=1) for a, b in pairwise(fires))


@pytest.mark.parametrize(("tz", "day"), DST_DAYS)
def test_every_five_minutes_follows_real_time(tz: str, day: date) -> None:
    fires = fires_on("*/5 * * * *", tz, day)
    assert len(fires) == (23 if day.month == 3 else 25) * 12
    assert all(b - a == timedelta(minutes=5) for a, b in pairwise(fires))


def test_hourly_next_after_steps_through_both_passes_of_the_repeated_hour() -> None:
    trigger = CalendarTrigger("0 * * * *", NY)
    assert trigger.next_after(z(2025, 11, 2, 4, 30)) == z(2025, 11, 2, 5)  # -> 01:00 EDT
    assert trigger.next_after(z(2025, 11, 2, 5)) == z(2025, 11, 2, 6)  # -> 01:00 EST
    assert trigger.next_after(z(2025, 11, 2, 5, 59)) == z(2025, 11, 2, 6)
    assert trigger.next_after(z(2025, 11, 2, 6)) == z(2025, 11, 2, 7)  # -> 02:00 EST
    assert trigger.next_after(z(2025, 11, 2, 6, 30)) == z(2025, 11, 2, 7)


def test_calendar_base_instant_in_another_offset_is_converted_to_the_schedule_zone() -> None:
    trigger = CalendarTrigger("0 9 * * *", NY)
    # A fixed -05:00 base from before spring forward must still give 09:00 *EDT* afterwards.
    base = datetime(2025, 3, 8, 10, tzinfo=timezone(timedelta(hours=-5)))
    assert trigger.next_after(base) == z(2025, 3, 9, 13)
    fires = trigger.occurrences(base, base + timedelta(days=3))
    assert [f.astimezone(ZoneInfo(NY)).hour for f in fires] == [9, 9, 9]
    assert all(f.tzinfo is UTC for f in fires)


# --- calendar: forms, boundaries, limits -------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        ("0 9 * * *", z(2025, 1, 1, 8, 59), z(2025, 1, 1, 9)),
        ("0 9 * * *", z(2025, 1, 1, 9), z(2025, 1, 2, 9)),  # strictly after
        ("*/15 * * * *", z(2025, 1, 1, 9, 14, 59, 999999), z(2025, 1, 1, 9, 15)),
        ("0 9 * * mon-fri", z(2025, 1, 3, 10), z(2025, 1, 6, 9)),  # Friday -> Monday
        ("0 9 * mar-apr thu", z(2025, 1, 1), z(2025, 3, 6, 9)),  # names holding an R or an H are fine
        ("0 0 29 2 *", z(2025, 3, 1), z(2028, 2, 29)),
        ("30 0 9 * * *", z(2025, 1, 1, 9), z(2025, 1, 1, 9, 0, 30)),  # 6 fields: seconds first
        ("*/15 * * * * *", z(2025, 1, 1, 9, 0, 15), z(2025, 1, 1, 9, 0, 30)),
        ("0 0 0 1 1 *", z(2025, 1, 1), z(2026, 1, 1)),
        ("@yearly", z(2025, 1, 1), z(2026, 1, 1)),
        ("@annually", z(2025, 6, 1), z(2026, 1, 1)),
        ("@monthly", z(2025, 1, 1), z(2025, 2, 1)),
        ("@weekly", z(2025, 1, 1), z(2025, 1, 5)),  # 2025-01-01 is a Wednesday; weekly is Sunday 00:00
        ("@daily", z(2025, 1, 1), z(2025, 1, 2)),
        ("@midnight", z(2025, 1, 1, 12), z(2025, 1, 2)),
        ("@hourly", z(2025, 1, 1, 0, 30), z(2025, 1, 1, 1)),
        ("  @DAILY ", z(2025, 1, 1), z(2025, 1, 2)),
    ],
)
def test_calendar_next_after_forms(expr: str, after: datetime, expected: datetime) -> None:
    got = CalendarTrigger(expr, "UTC").next_after(after)
    assert got == expected
    assert got is not None and got.tzinfo is UTC


def test_calendar_seconds_field_over_the_repeated_hour() -> None:
    fires = fires_on("0,30 * * * * *", BERLIN, EU_FALL)
    assert len(fires) == 25 * 60 * 2
    assert fires_on("0,30 15 2 * * *", BERLIN, EU_FALL) == [
        z(2025, 10, 26, 0, 15),
        z(2025, 10, 26, 0, 15, 30),
    ]


def test_calendar_in_zone_local_time() -> None:
    trigger = CalendarTrigger("0 9 * * *", "Asia/Kolkata")
    assert trigger.next_after(z(2025, 1, 1)) == z(2025, 1, 1, 3, 30)


def test_calendar_occurrences_boundaries_and_limit() -> None:
    trigger = CalendarTrigger("0 * * * *", "UTC")
    start, end = z(2025, 1, 1, 1), z(2025, 1, 1, 4)
    assert trigger.occurrences(start, end) == [z(2025, 1, 1, 2), z(2025, 1, 1, 3), z(2025, 1, 1, 4)]
    assert trigger.occurrences(start, end, limit=2) == [z(2025, 1, 1, 2), z(2025, 1, 1, 3)]
    assert trigger.occurrences(start, end, limit=0) == []
    assert trigger.occurrences(start - TINY, start) == [start]
    assert trigger.occurrences(start, start) == []
    assert trigger.occurrences(end, start) == []
    assert trigger.occurrences(start, start + timedelta(minutes=59)) == []


def test_calendar_week_of_minutes_and_limit_bounds_work() -> None:
    trigger = CalendarTrigger("* * * * *", BERLIN)
    fires = trigger.occurrences(z(2025, 10, 22), z(2025, 10, 29))  # spans the fall-back day
    assert len(fires) == 7 * 24 * 60
    assert fires[0] == z(2025, 10, 22, 0, 1) and fires[-1] == z(2025, 10, 29)
    assert all(b - a == timedelta(minutes=1) for a, b in pairwise(fires))
    # A century of seconds would never finish: the limit has to stop the walk.
    every_second = CalendarTrigger("* * * * * *", NY)
    assert every_second.occurrences(z(2025, 1, 1), z(2125, 1, 1), limit=3) == [
        z(2025, 1, 1, 0, 0, 1),
        z(2025, 1, 1, 0, 0, 2),
        z(2025, 1, 1, 0, 0, 3),
    ]


def test_calendar_occurrences_agree_with_chained_next_after() -> None:
    trigger = CalendarTrigger("7,37 */3 * * *", BERLIN)
    start, end = z(2025, 10, 20), z(2025, 11, 2)
    chained, t = [], trigger.next_after(start)
    while t is not None and t <= end:
        chained.append(t)
        t = trigger.next_after(t)
    assert trigger.occurrences(start, end) == chained and len(chained) == 13 * 8 * 2


def test_calendar_past_the_end_of_time_is_none() -> None:
    assert CalendarTrigger("0 0 1 1 *", "UTC").next_after(z(9999, 6, 1)) is None
    assert CalendarTrigger("0 0 1 1 *", "UTC").occurrences(z(9999, 6, 1), z(9999, 12, 31)) == []


@pytest.mark.parametrize(
    "expr",
    [
        "0 0 31 2 *",  # impossible date
        "0 0 30 2 *",
        "0 0 31 4,6 *",
        "R * * * *",  # random
        "0 R * * *",
        "r(0-5) * * * *",
        "H * * * *",  # hashed
        "H(0-29) * * * *",
        "0 H/2 * * *",
        "0 0 * * * * 2030",  # 7 fields (year)
        "0 12 * * * 30",  # croniter's seconds-LAST form; seconds come first here
        "* * * *",
        "",
        "   ",
        "garbage",
        "every day at noon",
        "61 * * * *",
        "0 24 * * *",
        "*/0 * * * *",
        "@reboot",
        "@every 5m",
        None,
        5,
        ["0", "*", "*", "*", "*"],
    ],
)
def test_calendar_rejects_invalid_expressions(expr: object) -> None:
    with pytest.raises(InvalidSchedule) as caught:
        CalendarTrigger(expr, "UTC")  # type: ignore[arg-type]
    assert caught.value.field == "expression"
    assert "5-field cron" in caught.value.allowed
    with pytest.raises(InvalidSchedule) as again:
        validate_expression(TriggerType.CALENDAR, expr)
    assert again.value.field == "expression"


@pytest.mark.parametrize("tz", ["Mars/Olympus", "", "utc+1", None])
def test_calendar_rejects_invalid_timezones(tz: object) -> None:
    with pytest.raises(InvalidSchedule) as caught:
        CalendarTrigger("0 9 * * *", tz)  # type: ignore[arg-type]
    assert caught.value.field == "timezone"
    with pytest.raises(InvalidSchedule) as again:
        validate_expression("calendar", "0 9 * * *", tz)  # type: ignore[arg-type]
    assert again.value.field == "timezone"


# --- interval --------------------------------------------------------------------------------


def test_interval_is_anchored_and_excludes_the_anchor() -> None:
    anchor = z(2025, 1, 1, 12)
    trigger = IntervalTrigger(timedelta(minutes=15), anchor)
    assert trigger.next_after(anchor) == anchor + timedelta(minutes=15)
    assert trigger.next_after(anchor - timedelta(days=30)) == anchor + timedelta(minutes=15)
    assert trigger.next_after(anchor + timedelta(minutes=15)) == anchor + timedelta(minutes=30)
    assert trigger.next_after(anchor + timedelta(minutes=29, seconds=59)) == anchor + timedelta(minutes=30)


def test_interval_occurrences_boundaries_and_limit() -> None:
    anchor, p = z(2025, 1, 1), timedelta(hours=2)
    trigger = IntervalTrigger(p, anchor)
    assert trigger.occurrences(anchor + 2 * p, anchor + 5 * p) == [
        anchor + 3 * p,
        anchor + 4 * p,
        anchor + 5 * p,
    ]
    assert trigger.occurrences(anchor + 2 * p, anchor + 5 * p - TINY) == [anchor + 3 * p, anchor + 4 * p]
    assert trigger.occurrences(anchor + 2 * p, anchor + 5 * p, limit=2) == [anchor + 3 * p, anchor + 4 * p]
    assert trigger.occurrences(anchor + 2 * p, anchor + 5 * p, limit=0) == []
    assert trigger.occurrences(anchor - 10 * p, anchor + p) == [anchor + p]  # never k <= 0
    assert trigger.occurrences(anchor + 5 * p, anchor + 2 * p) == []
    huge = trigger.occurrences(anchor, anchor + timedelta(days=365 * 1000), limit=3)  # limit bounds work
    assert huge == [anchor + p, anchor + 2 * p, anchor + 3 * p]


@pytest.mark.parametrize(("tz", "day", "count"), [(NY, US_FALL, 25), (NY, US_SPRING, 23), (BERLIN, EU_FALL, 25)])
def test_interval_is_blind_to_dst(tz: str, day: date, count: int) -> None:
    trigger = IntervalTrigger(timedelta(hours=1), z(2020, 1, 1, 0, 0))
    fires = trigger.occurrences(*local_day(tz, day))
    assert len(fires) == count
    assert all(b - a == timedelta(hours=1) for a, b in pairwise(fires))


def test_interval_has_no_drift_years_after_the_anchor() -> None:
    anchor = z(2021, 7, 4, 13, 37, 11, 123457)
    period = timedelta(minutes=7, seconds=13, microseconds=500001)
    trigger = IntervalTrigger(period, anchor)
    instant = z(2049, 2, 28, 23, 59, 59, 999999)
    got = trigger.next_after(instant)
    assert got is not None
    period_us = period // TINY
    k, rest = divmod((got - anchor) // TINY, period_us)
    assert rest == 0 and got == anchor + k * period
    assert got > instant >= got - period


def test_interval_next_after_invariants_over_many_cases() -> None:
    anchor = z(2024, 2, 29, 6)
    rng = random.Random(20250309)  # seeded: the same cases every run
    cases = [(1, 0), (1, -1), (3600, 3599), (3600, 3600), (86400, -(10**9))]
    cases += [(rng.randint(1, 10**7), rng.randint(-(10**9), 10**9)) for _ in range(300)]
    for period_s, offset_us in cases:
        period = timedelta(seconds=period_s)
        instant = anchor + timedelta(microseconds=offset_us * 997)
        got = IntervalTrigger(period, anchor).next_after(instant)
        assert got is not None and got > instant and got >= anchor + period
        assert (got - anchor) % period == timedelta(0)
        assert got - period <= max(instant, anchor)


def test_interval_accepts_a_non_utc_anchor_and_returns_utc() -> None:
    anchor = datetime(2025, 3, 8, 12, tzinfo=ZoneInfo(NY))
    trigger = IntervalTrigger(timedelta(days=1), anchor)
    got = trigger.next_after(anchor)
    assert got == z(2025, 3, 9, 17) and got.tzinfo is UTC  # 24 real hours: 13:00 EDT, not 12:00


def test_interval_past_the_end_of_time_is_none() -> None:
    assert IntervalTrigger(timedelta(days=400), z(9999, 1, 1)).next_after(z(9999, 6, 1)) is None


@pytest.mark.parametrize("period", [timedelta(0), timedelta(seconds=-1), 60, "5m"])
def test_interval_rejects_non_positive_periods(period: object) -> None:
    with pytest.raises(InvalidSchedule) as caught:
        IntervalTrigger(period, z(2025, 1, 1))  # type: ignore[arg-type]
    assert caught.value.field == "expression"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("2h", 7200),
        ("1d", 86400),
        ("45", 45),
        ("1.5", 1.5),
        ("2.5h", 9000),
        (30, 30),
    ],
)
def test_interval_expressions(text: object, seconds: float) -> None:
    validate_expression(TriggerType.INTERVAL, text)
    anchor = z(2025, 1, 1)
    trigger = build_trigger("interval", text, anchor=anchor)
    assert isinstance(trigger, IntervalTrigger)
    assert trigger.next_after(anchor) == anchor + timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "text",
    [
        "0",
        "0s",
        "-5m",
        "5x",
        "m",
        "",
        " ",
        "1w",
        "5 minutes",
        None,
        True,
        False,
        0,
        -1,
        float("nan"),
        float("inf"),
    ],
)
@pytest.mark.parametrize("kind", [TriggerType.INTERVAL, TriggerType.RECONCILIATION])
def test_interval_rejects_bad_expressions(kind: TriggerType, text: object) -> None:
    with pytest.raises(InvalidSchedule) as caught:
        validate_expression(kind, text)
    assert caught.value.field == "expression"
    assert "15m" in caught.value.allowed


def test_parse_duration_huge_value_is_invalid_not_overflow() -> None:
    with pytest.raises(InvalidSchedule):
        parse_duration("9999999999999d")


def test_reconciliation_is_an_interval_sweeper() -> None:
    anchor = z(2025, 1, 1)
    trigger = build_trigger(TriggerType.RECONCILIATION, "5m", anchor=anchor)
    assert trigger == IntervalTrigger(timedelta(minutes=5), anchor)
    assert trigger.occurrences(anchor, anchor + timedelta(minutes=15)) == [
        anchor + timedelta(minutes=m) for m in (5, 10, 15)
    ]


@pytest.mark.parametrize("kind", ["interval", "reconciliation"])
def test_interval_needs_an_anchor(kind: str) -> None:
    with pytest.raises(ValueError, match="anchor"):
        build_trigger(kind, "5m")


# --- delay -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "at"),
    [
        ("2027-03-13T09:00:00Z", z(2027, 3, 13, 9)),
        ("2027-03-13T09:00:00+01:00", z(2027, 3, 13, 8)),
        ("2027-03-13T09:00:00.250-05:00", z(2027, 3, 13, 14, 0, 0, 250000)),
        (" 2027-03-13T09:00:00+00:00 ", z(2027, 3, 13, 9)),
    ],
)
def test_delay_absolute(text: str, at: datetime) -> None:
    validate_expression("delay", text)
    trigger = build_trigger("delay", text)
    assert trigger == DelayTrigger(at)
    assert trigger.next_after(at - TINY) == at
    assert trigger.next_after(at) is None
    assert trigger.occurrences(at - TINY, at) == [at]
    assert trigger.occurrences(at, at + timedelta(days=1)) == []
    assert trigger.occurrences(at - timedelta(days=1), at - TINY) == []
    assert trigger.occurrences(at - TINY, at, limit=0) == []


@pytest.mark.parametrize(("text", "delay"), [("+15m", timedelta(minutes=15)), ("+90s", timedelta(seconds=90))])
def test_delay_relative_to_the_anchor(text: str, delay: timedelta) -> None:
    anchor = z(2025, 6, 1, 12)
    trigger = build_trigger(TriggerType.DELAY, text, anchor=anchor)
    assert trigger == DelayTrigger(anchor + delay)
    assert trigger.next_after(anchor) == anchor + delay
    with pytest.raises(ValueError, match="anchor"):
        build_trigger(TriggerType.DELAY, text)


def test_delay_naive_instant_is_rejected_with_a_hint() -> None:
    with pytest.raises(InvalidSchedule) as caught:
        validate_expression("delay", "2027-03-13T09:00:00")
    assert caught.value.field == "expression"
    assert "include a UTC offset" in caught.value.allowed


@pytest.mark.parametrize(
    "text",
    [
        "",
        "tomorrow",
        "+",
        "+0m",
        "+-5m",
        "-15m",
        "+5x",
        "2027-02-30T09:00:00Z",
        "2027-03-13",
        None,
        1700000000,
    ],
)
def test_delay_rejects_garbage(text: object) -> None:
    with pytest.raises(InvalidSchedule) as caught:
        build_trigger("delay", text, anchor=z(2025, 1, 1))
    assert caught.value.field == "expression"


def test_delay_trigger_refuses_naive_at() -> None:
    with pytest.raises(ValueError, match="naive"):
        DelayTrigger(datetime(2027, 1, 1))


# --- event and lifecycle -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "expression", "cls"),
    [
        ("event", "deploy.finished", EventTrigger),
        ("event", "a:b-c_D.9", EventTrigger),
        ("event", "x" * 128, EventTrigger),
        ("lifecycle", "startup", LifecycleTrigger),
        ("lifecycle", "shutdown", LifecycleTrigger),
    ],
)
def test_event_and_lifecycle_have_no_time_occurrences(kind: str, expression: str, cls: type) -> None:
    trigger = build_trigger(kind, expression, anchor=z(2025, 1, 1))
    assert isinstance(trigger, cls)
    assert trigger.next_after(z(2025, 1, 1)) is None
    assert trigger.occurrences(z(2000, 1, 1), z(2100, 1, 1)) == []


@pytest.mark.parametrize(
    ("kind", "expression"),
    [
        ("event", ""),
        ("event", "has space"),
        ("event", "x" * 129),
        ("event", "naïve"),
        ("event", "trailing\n"),
        ("event", None),
        ("lifecycle", "Startup"),
        ("lifecycle", "start"),
        ("lifecycle", "startup "),
        ("lifecycle", ""),
        ("lifecycle", None),
    ],
)
def test_event_and_lifecycle_reject_bad_expressions(kind: str, expression: object) -> None:
    with pytest.raises(InvalidSchedule) as caught:
        validate_expression(kind, expression)
    assert caught.value.field == "expression"
    with pytest.raises(InvalidSchedule):
        build_trigger(kind, expression)


def test_lifecycle_allowed_text_names_the_phases() -> None:
    with pytest.raises(InvalidSchedule) as caught:
        LifecycleTrigger("boot")
    assert "startup" in caught.value.allowed and "shutdown" in caught.value.allowed


# --- trigger types, construction, naive instants -----------------------------------------------


@pytest.mark.parametrize("kind", ["cron", "", "CALENDAR", "Interval", None, 3])
def test_unknown_trigger_type(kind: object) -> None:
    with pytest.raises(InvalidSchedule) as caught:
        validate_expression(kind, "5m")  # type: ignore[arg-type]
    assert caught.value.field == "trigger_type"
    assert caught.value.allowed == "one of: lifecycle, interval, calendar, delay, event, reconciliation"
    with pytest.raises(InvalidSchedule):
        build_trigger(kind, "5m", anchor=z(2025, 1, 1))  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", [TriggerType.CALENDAR, "calendar"])
def test_build_calendar_from_enum_or_string(kind: TriggerType | str) -> None:
    trigger = build_trigger(kind, "30 2 * * *", BERLIN)
    assert trigger == CalendarTrigger("30 2 * * *", BERLIN)
    assert trigger.next_after(z(2025, 3, 29, 12)) == z(2025, 3, 30, 1)


def test_build_calendar_checks_the_timezone() -> None:
    with pytest.raises(InvalidSchedule) as caught:
        build_trigger("calendar", "0 9 * * *", "Nowhere/Atlantis")
    assert caught.value.field == "timezone"


TRIGGERS: list[Callable[[], object]] = [
    lambda: CalendarTrigger("0 * * * *", NY),
    lambda: IntervalTrigger(timedelta(minutes=5), z(2025, 1, 1)),
    lambda: DelayTrigger(z(2025, 1, 2)),
    lambda: EventTrigger("deploy"),
    lambda: LifecycleTrigger("startup"),
]


@pytest.mark.parametrize("make", TRIGGERS)
def test_naive_instants_are_refused(make: Callable[[], object]) -> None:
    trigger = make()
    naive, aware = datetime(2025, 1, 1), z(2025, 1, 1)
    with pytest.raises(ValueError, match="naive"):
        trigger.next_after(naive)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="naive"):
        trigger.occurrences(naive, aware)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="naive"):
        trigger.occurrences(aware, naive)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="limit"):
        trigger.occurrences(aware, aware, limit=-1)  # type: ignore[attr-defined]


def test_naive_anchor_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        build_trigger("interval", "5m", anchor=datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="naive"):
        IntervalTrigger(timedelta(minutes=5), datetime(2025, 1, 1))


# --- count and latest: computed, and always equal to walking occurrences --------------------------

# 2025's four DST changes, as UTC instants: US spring/fall, EU spring/fall.
DST_CHANGES_2025 = [z(2025, 3, 9, 7), z(2025, 11, 2, 6), z(2025, 3, 30, 1), z(2025, 10, 26, 1)]
COUNT_ZONES = ["UTC", NY, BERLIN]
COUNT_EXPRS = [
    "* * * * *",
    "*/5 * * * *",
    "0 * * * *",
    "30 2 * * *",
    "30 1 * * *",
    "0 9 * * 1-5",
    "0 9 13 * fri",  # day-of-month and day-of-week both set: either matches
    "0 0 L * *",
    "0 12 * * L5",  # the last Friday; croniter spells it L5 ("5L" is refused, see below)
    "0 10 * * tue#2",
    "*/20 * * * * *",
    "@daily",
]
# Walking occurrences is what costs test time, so the long spans of dense expressions are shorter
# (longer spans of them are checked by the tests after this one).
DENSE = {
    "* * * * *": timedelta(hours=3),
    "*/5 * * * *": timedelta(hours=12),
    "*/20 * * * * *": timedelta(minutes=90),
}


def count_spans(expr: str, tz: str) -> list[tuple[datetime, datetime]]:
    """Spans to compare on: across each DST change of 2025, 40 days, inside one hour, empty, random."""
    longest = DENSE.get(expr, timedelta(days=40))
    day = min(longest, timedelta(days=1, hours=2))
    spans = []
    for change in DST_CHANGES_2025:
        spans.append(
            (change - day / 2 - TINY, change + day / 2)
        )  # across the change: the whole local day, but for DENSE
        spans.append((change - timedelta(minutes=50), change + timedelta(minutes=10)))  # the gap or first pass
        spans.append((change + timedelta(minutes=5, seconds=1), change + timedelta(minutes=55)))  # second pass
    spans.append((z(2025, 10, 1, 3, 4, 5, 6), z(2025, 10, 1, 3, 4, 5, 6) + longest))  # past the EU fall back
    spans.append((z(2025, 2, 20) - TINY, z(2025, 2, 20) + longest))  # into both spring forwards
    spans.append((z(2025, 6, 13, 10, 0, 0, 1), z(2025, 6, 13, 10, 59, 59, 999999)))  # inside one hour
    spans.append((z(2025, 6, 13, 9, 59, 59), z(2025, 6, 13, 10, 0, 0)))  # one second: the hour's first fire
    spans += [(t, t) for t in (z(2025, 6, 13, 10), DST_CHANGES_2025[1], z(2025, 3, 14, 13, 0, 0, 5))]
    spans.append((z(2025, 3, 10), z(2025, 3, 9)))  # end before start
    rng = random.Random(f"{expr}|{tz}")  # seeded: the same spans every run
    for _ in range(3):
        start = z(2025, 1, 1) + timedelta(seconds=rng.randrange(365 * 86400), microseconds=rng.choice([0, 1, 999999]))
        width = min(longest, timedelta(days=3)) * rng.random()
        spans.append((start, start + width))
    return spans


@pytest.mark.parametrize("tz", COUNT_ZONES)
@pytest.mark.parametrize("expr", COUNT_EXPRS)
def test_calendar_count_and_latest_equal_walking_occurrences(expr: str, tz: str) -> None:
    trigger = CalendarTrigger(expr, tz)
    for start, end in count_spans(expr, tz):
        fires = trigger.occurrences(start, end)
        assert trigger.count(start, end) == len(fires), (start, end)
        for n in (0, 1, 3, 50):
            assert trigger.latest(start, end, n) == (fires[-n:] if n else []), (start, end, n)


@pytest.mark.parametrize(
    ("expr", "tz", "start", "end"),
    [
        ("*/5 * * * *", BERLIN, z(2025, 10, 1), z(2025, 11, 10)),  # 40 days over the fall back
        ("7,37 */3 * * *", NY, z(2025, 10, 1), z(2025, 11, 10)),
        ("30 2 * * *", NY, z(2025, 2, 20), z(2025, 3, 31)),
        ("15,45 1-3 * * *", NY, z(2025, 10, 20), z(2025, 11, 29)),
        ("0 0 15W * *", BERLIN, z(2024, 12, 1), z(2026, 2, 1)),  # W: nearest weekday
        ("0 0 L,15 2 *", "UTC", z(2023, 1, 1), z(2029, 1, 1)),  # leap Februaries
        ("0 30 */2 * * *", "Australia/Lord_Howe", z(2025, 3, 25), z(2025, 4, 15)),  # a 30-minute DST change
        ("30 2 * * *", "Australia/Lord_Howe", z(2025, 9, 25), z(2025, 10, 15)),
        ("0 */4 * * *", "America/Santiago", z(2025, 3, 30), z(2025, 4, 12)),  # DST changes at midnight
        ("0 0 * * *", "America/Santiago", z(2025, 8, 30), z(2025, 9, 12)),
        ("30 12 * * *", "Pacific/Apia", z(2011, 12, 25), z(2012, 1, 5)),  # 2011-12-30 never happened there
        ("0 * * * *", "Pacific/Apia", z(2011, 12, 29), z(2012, 1, 1)),
        ("0 9 * * *", "Asia/Kolkata", z(2025, 1, 1), z(2025, 3, 1)),
        ("*/10 * 9 * * mon", BERLIN, z(2025, 10, 20), z(2025, 10, 29)),  # latest bisects into a busy Monday
    ],
)
def test_calendar_count_and_latest_equal_walking_occurrences_elsewhere(
    expr: str, tz: str, start: datetime, end: datetime
) -> None:
    trigger = CalendarTrigger(expr, tz)
    fires = trigger.occurrences(start, end)
    assert fires and trigger.count(start, end) == len(fires)
    for n in (1, 3, 50, len(fires), len(fires) + 1):
        assert trigger.latest(start, end, n) == fires[-n:]


def test_calendar_last_weekday_is_spelled_l5_not_5l() -> None:
    with pytest.raises(InvalidSchedule):
        CalendarTrigger("0 12 * * 5L", "UTC")
    fires = CalendarTrigger("0 12 * * L5", "UTC").occurrences(z(2025, 1, 1), z(2025, 4, 1))
    assert fires == [z(2025, 1, 31, 12), z(2025, 2, 28, 12), z(2025, 3, 28, 12)]


@pytest.mark.parametrize(("tz", "day"), DST_DAYS)
def test_calendar_count_on_dst_days(tz: str, day: date) -> None:
    hours = 23 if day.month == 3 else 25
    assert CalendarTrigger("0 * * * *", tz).count(*local_day(tz, day)) == hours
    assert CalendarTrigger("*/5 * * * *", tz).count(*local_day(tz, day)) == hours * 12
    assert CalendarTrigger("* * * * * *", tz).count(*local_day(tz, day)) == hours * 3600
    assert CalendarTrigger("30 2 * * *", tz).count(*local_day(tz, day)) == 1
    assert CalendarTrigger("*/10 2 * * *", tz).count(*local_day(tz, day)) == (1 if day.month == 3 else 6)


def test_calendar_count_and_latest_over_long_spans_are_computed_not_walked() -> None:
    # Walking these would take hours; they have to be arithmetic.
    start, end = z(2025, 1, 1), z(2125, 1, 1)
    seconds = (end - start) // timedelta(seconds=1)
    every_second = CalendarTrigger("* * * * * *", NY)  # every real second, DST or not
    assert every_second.count(start, end) == seconds
    assert every_second.latest(start, end, 3) == [end - timedelta(seconds=s) for s in (2, 1, 0)]
    assert CalendarTrigger("0 * * * *", BERLIN).count(start, end) == seconds // 3600
    daily = CalendarTrigger("30 2 * * *", NY)  # once a day, even on spring-forward days
    assert daily.count(start, end) == (end - start).days
    assert daily.latest(start, end, 2) == [z(2124, 12, 30, 7, 30), z(2124, 12, 31, 7, 30)]
    assert CalendarTrigger("0 0 29 2 *", "UTC").count(z(2001, 1, 1), z(2201, 1, 1)) == 48


def test_calendar_latest_with_few_fires_and_bad_n() -> None:
    trigger = CalendarTrigger("0 0 1 1 *", BERLIN)
    start, end = z(2000, 6, 1), z(2010, 6, 1)
    fires = trigger.occurrences(start, end)
    assert len(fires) == 10 and trigger.count(start, end) == 10
    assert trigger.latest(start, end, 50) == fires
    assert trigger.latest(start, end, 1) == [z(2009, 12, 31, 23)]
    assert trigger.latest(end, start, 5) == [] and trigger.count(end, start) == 0
    for bad in (-1, True, 1.0, "3"):
        with pytest.raises(ValueError, match="n must be"):
            trigger.latest(start, end, bad)  # type: ignore[arg-type]


def test_calendar_count_at_the_ends_of_the_calendar() -> None:
    last = datetime.max.replace(tzinfo=UTC)
    for tz in (NY, "Pacific/Kiritimati"):
        trigger = CalendarTrigger("0 0 * * *", tz)
        for start, end in [(z(9998, 11, 1), last), (datetime.min.replace(tzinfo=UTC), z(2, 2, 1))]:
            fires = trigger.occurrences(start, end)
            assert trigger.count(start, end) == len(fires)
            assert trigger.latest(start, end, 3) == fires[-3:]


def test_interval_count_and_latest() -> None:
    anchor, p = z(2025, 1, 1), timedelta(minutes=7, seconds=30)
    trigger = IntervalTrigger(p, anchor)
    rng = random.Random(20251026)
    spans = [
        (anchor - 3 * p, anchor + 5 * p),
        (anchor + 2 * p, anchor + 5 * p),
        (anchor + 2 * p, anchor + 5 * p - TINY),
    ]
    spans += [(anchor + 5 * p, anchor + 2 * p), (anchor, anchor), (anchor - 9 * p, anchor)]
    for _ in range(60):
        start = anchor + timedelta(seconds=rng.randint(-5000, 50000), microseconds=rng.randint(0, 999999))
        spans.append((start, start + timedelta(seconds=rng.randint(0, 20000))))
    for start, end in spans:
        fires = trigger.occurrences(start, end)
        assert trigger.count(start, end) == len(fires), (start, end)
        for n in (0, 1, 3, 50):
            assert trigger.latest(start, end, n) == (fires[-n:] if n else [])
    century = anchor + timedelta(days=36524)
    assert trigger.count(anchor, century) == timedelta(days=36524) // p
    assert trigger.latest(anchor, century, 2) == [century - p, century]


def test_delay_count_and_latest() -> None:
    at = z(2027, 3, 13, 9)
    trigger = DelayTrigger(at)
    assert trigger.count(at - TINY, at) == 1 and trigger.latest(at - TINY, at, 3) == [at]
    assert trigger.count(at, at + timedelta(days=1)) == 0 and trigger.latest(at, at + timedelta(days=1), 1) == []
    assert trigger.latest(at - TINY, at, 0) == []
    assert trigger.count(at + TINY, at - TINY) == 0
    with pytest.raises(ValueError, match="n must be"):
        trigger.latest(at - TINY, at, -1)


@pytest.mark.parametrize("trigger", [EventTrigger("deploy"), LifecycleTrigger("shutdown")])
def test_event_and_lifecycle_count_and_latest(trigger: EventTrigger | LifecycleTrigger) -> None:
    assert trigger.count(z(2000, 1, 1), z(2100, 1, 1)) == 0
    assert trigger.latest(z(2000, 1, 1), z(2100, 1, 1), 5) == []
    with pytest.raises(ValueError, match="n must be"):
        trigger.latest(z(2000, 1, 1), z(2100, 1, 1), -1)


@pytest.mark.parametrize("make", TRIGGERS)
def test_count_and_latest_refuse_naive_instants_and_negative_n(make: Callable[[], object]) -> None:
    trigger = make()
    naive, aware, later = datetime(2025, 1, 1), z(2025, 1, 1), z(2030, 1, 1)
    for args in ((naive, aware), (aware, naive), (later, naive), (naive, later)):
        with pytest.raises(ValueError, match="naive"):
            trigger.count(*args)  # type: ignore[attr-defined]
        with pytest.raises(ValueError, match="naive"):
            trigger.latest(*args, 1)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="n must be"):
        trigger.latest(aware, aware + timedelta(days=1), -1)  # type: ignore[attr-defined]
