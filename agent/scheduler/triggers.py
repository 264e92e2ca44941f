"""Pure occurrence math for the six trigger types: when does a schedule fire next (croniter, zoneinfo)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import CroniterError, croniter

from .enums import TriggerType
from .errors import InvalidSchedule

#: Accepted interval spellings: a number of seconds, or a number followed by s, m, h or d.
DURATION_HELP = 'a positive duration: seconds as a number, or "90s", "15m", "2h", "1d"'
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str | float | timedelta, *, field: str = "expression") -> timedelta:
    """Parse ``"90s"``, ``"15m"``, ``"2h"``, ``"1d"``, a number of seconds or a timedelta; must be > 0."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise InvalidSchedule(field, value, DURATION_HELP)
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION_RE.match(value)):
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise InvalidSchedule(field, value, DURATION_HELP)
    if not (seconds > 0 and math.isfinite(seconds)):
        raise InvalidSchedule(field, value, DURATION_HELP)
    try:
        return timedelta(seconds=seconds)
    except OverflowError as exc:
        raise InvalidSchedule(field, value, DURATION_HELP) from exc


def parse_timezone(name: str) -> ZoneInfo:
    """The ``ZoneInfo`` for an IANA name such as ``"Europe/Berlin"``."""
    allowed = 'an IANA timezone name such as "UTC" or "Europe/Berlin"'
    if not isinstance(name, str) or not name or name not in _timezones():
        raise InvalidSchedule("timezone", name, allowed)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:  # pragma: no cover - listed but unloadable
        raise InvalidSchedule("timezone", name, allowed) from exc


_TZ_CACHE: set[str] = set()


def _timezones() -> set[str]:
    if not _TZ_CACHE:
        _TZ_CACHE.update(available_timezones())
        _TZ_CACHE.add("UTC")
    return _TZ_CACHE


def utc(instant: datetime) -> datetime:
    """``instant`` as aware UTC; a naive instant is refused (it has no meaning here)."""
    if instant.tzinfo is None:
        raise ValueError(f"naive datetime {instant!r}: the scheduler only takes timezone-aware instants")
    return instant.astimezone(UTC)


class Trigger(Protocol):
    """The occurrences of one schedule, as aware UTC instants."""

    def next_after(self, instant: datetime) -> datetime | None:
        """The first occurrence strictly after ``instant``, or None when there is none."""
        ...

    def occurrences(self, start: datetime, end: datetime, limit: int | None = None) -> list[datetime]:
        """Occurrences ``t`` with ``start < t <= end``, oldest first, at most ``limit`` of them."""
        ...


# --- calendar (cron) ----------------------------------------------------------------------------

CALENDAR_HELP = (
    'a 5-field cron like "*/5 * * * *" (minute hour day-of-month month day-of-week), '
    '6 fields with seconds first like "30 0 9 * * mon-fri", or one of '
    "@yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly; "
    'no R (random) or H (hashed) fields, no year field, no impossible dates like "0 0 31 2 *"'
)
_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# A lone R or H token (random / hashed). Letters around it belong to a name such as THU or MAR.
_RANDOM_OR_HASHED = re.compile(r"(?<![a-z])[rh](?![a-z])", re.IGNORECASE)
_PROBE = datetime(2000, 1, 1, tzinfo=UTC)


def _parse_cron(expression: object) -> tuple[str, bool, bool]:
    """Validate a cron expression: (normalized expression, seconds field first, every hour)."""
    if not isinstance(expression, str):
        raise InvalidSchedule("expression", expression, CALENDAR_HELP)
    text = expression.strip()
    text = _ALIASES.get(text.lower(), text)
    fields = text.split()
    if len(fields) not in (5, 6) or any(_RANDOM_OR_HASHED.search(f) for f in fields):
        raise InvalidSchedule("expression", expression, CALENDAR_HELP)
    normalized = " ".join(fields)
    seconds_first = len(fields) == 6
    try:
        if not croniter.is_valid(normalized, strict=True, second_at_beginning=seconds_first):
            raise ValueError(normalized)
        probe = croniter(normalized, _PROBE, second_at_beginning=seconds_first)
        # is_valid only reads the fields; computing a fire proves the expression can fire at all.
        probe.get_next(datetime)
    except (CroniterError, ValueError, OverflowError, TypeError) as exc:
        raise InvalidSchedule("expression", expression, CALENDAR_HELP) from exc
    # croniter collapses "*", "*/1" and "0-23" to ["*"].
    return normalized, seconds_first, probe.expanded[1] == ["*"]


@dataclass(frozen=True, slots=True)
class CalendarTrigger:
    """Fires at the wall times of a cron expression in an IANA timezone.

    Daylight-saving rules, decided by the hour field:

    * fixed hours (``30 2 * * *``, ``@daily``): each matching wall time fires once. A wall time
      skipped by a spring-forward fires at the end of the gap; a wall time repeated by a fall-back
      fires only the first time.
    * every hour (``0 * * * *``, ``*/5 * * * *``, ``@hourly``): fires at each real instant whose
      wall time matches, so skipped wall times never fire and repeated ones fire twice. An hourly
      job fires 23 times on a spring-forward day and 25 times on a fall-back day.
    """

    expression: str
    timezone: str
    _cron: str = field(init=False, repr=False, compare=False)
    _seconds_first: bool = field(init=False, repr=False, compare=False)
    _every_hour: bool = field(init=False, repr=False, compare=False)
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        cron, seconds_first, every_hour = _parse_cron(self.expression)
        object.__setattr__(self, "_cron", cron)
        object.__setattr__(self, "_seconds_first", seconds_first)
        object.__setattr__(self, "_every_hour", every_hour)
        object.__setattr__(self, "_zone", parse_timezone(self.timezone))

    def next_after(self, instant: datetime) -> datetime | None:
        """The first fire strictly after ``instant``, as aware UTC; None past the end of the calendar."""
        return next(self._fires_after(utc(instant)), None)

    def occurrences(self, start: datetime, end: datetime, limit: int | None = None) -> list[datetime]:
        """Fires ``t`` with ``start < t <= end``, oldest first, at most ``limit`` of them."""
        start, end = utc(start), utc(end)
        _check_limit(limit)
        found: list[datetime] = []
        if limit == 0 or end <= start:
            return found
        for fire in self._fires_after(start):
            if fire > end:
                break
            found.append(fire)
            if len(found) == limit:
                break
        return found

    def _fires_after(self, after: datetime) -> Iterator[datetime]:
        """Fires strictly after ``after`` (aware UTC), ascending and without duplicates.

        croniter walks the *wall clock* (from a naive base it does plain calendar arithmetic and no DST
        logic of its own); each wall time is then mapped to real instants here, where the fold and gap
        rules live.
        """
        zone = self._zone
        try:
            wall = after.astimezone(zone).replace(tzinfo=None, microsecond=0)
            first, second = _both_folds(wall, zone)
            if first < second:
                # Inside a repeated hour the second pass of earlier wall times is still ahead of us.
                wall -= second - first
            walker = croniter(self._cron, wall, second_at_beginning=self._seconds_first)
        except OverflowError:
            return
        last = after
        repeated: list[datetime] = []  # second-pass fires of a repeated hour, due after its first pass
        gap_end: datetime | None = None
        while True:
            try:
                local = walker.get_next(datetime)
                first, second = _both_folds(local, zone)
            except (CroniterError, OverflowError, ValueError):
                break
            fires: list[datetime]
            if first < second:  # wall time happens twice (fall back)
                fires = [first]
                if self._every_hour:
                    repeated.append(second)
            else:
                fires, repeated = repeated, []
                if first == second:
                    fires.append(first)
                elif not self._every_hour:  # wall time does not exist (spring forward)
                    if gap_end is None or not second < gap_end <= first:
                        gap_end = _transition(second, first, zone)
                    fires.append(gap_end)
            for fire in fires:
                if fire > last:
                    last = fire
                    yield fire
        for fire in repeated:
            if fire > last:
                last = fire
                yield fire


def _both_folds(wall: datetime, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """UTC instants of naive ``wall`` read with fold=0 and fold=1.

    Equal for an ordinary wall time; first < second for a repeated one; first > second for one that
    falls in a gap (PEP 495: fold=0 applies the offset from before the transition).
    """
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    return first, second


def _transition(before: datetime, after: datetime, zone: ZoneInfo) -> datetime:
    """The instant in ``(before, after]`` at which ``zone`` changes its UTC offset (whole seconds)."""
    lo, hi = math.floor(before.timestamp()), math.ceil(after.timestamp())
    old = datetime.fromtimestamp(lo, zone).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == old:
            lo = mid
        else:
            hi = mid
    return datetime.fromtimestamp(hi, UTC)


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be None or an int >= 0, not {limit!r}")


# --- interval, delay, event, lifecycle ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IntervalTrigger:
    """Fires at ``anchor + k * period`` for k = 1, 2, ... in real (UTC) time, blind to DST."""

    period: timedelta
    anchor: datetime

    def __post_init__(self) -> None:
        if not isinstance(self.period, timedelta) or self.period <= timedelta(0):
            raise InvalidSchedule("expression", self.period, DURATION_HELP)
        object.__setattr__(self, "anchor", utc(self.anchor))

    def next_after(self, instant: datetime) -> datetime | None:
        """``anchor + k * period`` for the smallest k >= 1 that is strictly after ``instant``."""
        try:
            return self.anchor + self._first_k(utc(instant)) * self.period
        except OverflowError:
            return None

    def occurrences(self, start: datetime, end: datetime, limit: int | None = None) -> list[datetime]:
        """Fires ``t`` with ``start < t <= end``, oldest first, at most ``limit`` of them."""
        start, end = utc(start), utc(end)
        _check_limit(limit)
        first = self._first_k(start)
        last = (end - self.anchor) // self.period  # floor: the last k with anchor + k*period <= end
        if limit is not None:
            last = min(last, first + limit - 1)
        return [self.anchor + k * self.period for k in range(first, last + 1)]

    def _first_k(self, after: datetime) -> int:
        # timedelta // timedelta is exact integer (microsecond) arithmetic: no float drift.
        return max(1, (after - self.anchor) // self.period + 1)


@dataclass(frozen=True, slots=True)
class DelayTrigger:
    """Fires once, at ``at``."""

    at: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "at", utc(self.at))

    def next_after(self, instant: datetime) -> datetime | None:
        """``at`` if it is strictly after ``instant``, else None."""
        return self.at if self.at > utc(instant) else None

    def occurrences(self, start: datetime, end: datetime, limit: int | None = None) -> list[datetime]:
        """``[at]`` when ``start < at <= end`` and ``limit`` allows one, else ``[]``."""
        start, end = utc(start), utc(end)
        _check_limit(limit)
        return [self.at] if start < self.at <= end and limit != 0 else []


EVENT_HELP = "an event name of 1 to 128 characters from A-Z a-z 0-9 _ . : -"
_EVENT_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
LIFECYCLE_HELP = 'exactly "startup" or "shutdown"'
LIFECYCLE_PHASES = ("startup", "shutdown")


@dataclass(frozen=True, slots=True)
class EventTrigger:
    """Fires once per emitted event called ``name``; it has no time occurrences."""

    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _EVENT_RE.fullmatch(self.name):
            raise InvalidSchedule("expression", self.name, EVENT_HELP)

    def next_after(self, instant: datetime) -> datetime | None:
        """Always None: events are not on the clock."""
        utc(instant)
        return None

    def occurrences(self, start: datetime, end: datetime, limit: int | None = None) -> list[datetime]:
        """Always ``[]``: events are not on the clock."""
        utc(start), utc(end)
        _check_limit(limit)
        return []


@dataclass(frozen=True, slots=True)
class LifecycleTrigger:
    """Fires when the engine starts (``"startup"``) or stops (``"shutdown"``); no time occurrences."""

    phase: str

    def __post_init__(self) -> None:
        if self.phase not in LIFECYCLE_PHASES:
            raise InvalidSchedule("expression", self.phase, LIFECYCLE_HELP)

    def next_after(self, instant: datetime) -> datetime | None:
        """Always None: lifecycle phases are not on the clock."""
        utc(instant)
        return None

    def occurrences(self, start: datetime, end: datetime, limit: int | None = None) -> list[datetime]:
        """Always ``[]``: lifecycle phases are not on the clock."""
        utc(start), utc(end)
        _check_limit(limit)
        return []


# --- validation and construction from a schedule's fields --------------------------------------

TRIGGER_TYPE_HELP = "one of: " + ", ".join(t.value for t in TriggerType)
DELAY_HELP = (
    'an ISO-8601 instant that includes a UTC offset, such as "2027-03-13T09:00:00Z" or '
    '"2027-03-13T09:00:00+01:00", or "+<duration>" after creation such as "+90s", "+15m", "+2h", "+1d"'
)


def _trigger_type(value: object) -> TriggerType:
    if isinstance(value, TriggerType):
        return value
    if isinstance(value, str) and value in TriggerType._value2member_map_:
        return TriggerType(value)
    raise InvalidSchedule("trigger_type", value, TRIGGER_TYPE_HELP)


def _duration(expression: object) -> timedelta:
    if isinstance(expression, str | int | float | timedelta):
        return parse_duration(expression)
    raise InvalidSchedule("expression", expression, DURATION_HELP)


def _delay(expression: object) -> datetime | timedelta:
    """An aware UTC instant, or the delay after the schedule's anchor for ``"+15m"``."""
    if not isinstance(expression, str):
        raise InvalidSchedule("expression", expression, DELAY_HELP)
    text = expression.strip()
    try:
        if text.startswith("+"):
            return parse_duration(text[1:])
        at = datetime.fromisoformat(text)
    except ValueError as exc:  # InvalidSchedule is a ValueError too
        raise InvalidSchedule("expression", expression, DELAY_HELP) from exc
    if at.tzinfo is None:
        raise InvalidSchedule("expression", expression, f"include a UTC offset (Z or +01:00): {DELAY_HELP}")
    return at.astimezone(UTC)


def validate_expression(trigger_type: TriggerType | str, expression: object, timezone: str = "UTC") -> None:
    """Raise InvalidSchedule unless ``expression`` is a valid expression for ``trigger_type``.

    ``.field`` names what to fix (``"trigger_type"``, ``"expression"`` or, for calendar
    schedules, the only type that uses it, ``"timezone"``) and ``.allowed`` lists the accepted forms.
    """
    kind = _trigger_type(trigger_type)
    if kind is TriggerType.CALENDAR:
        _parse_cron(expression)
        parse_timezone(timezone)
    elif kind in (TriggerType.INTERVAL, TriggerType.RECONCILIATION):
        _duration(expression)
    elif kind is TriggerType.DELAY:
        _delay(expression)
    elif kind is TriggerType.EVENT:
        EventTrigger(expression)  # type: ignore[arg-type]  # it checks the type itself
    else:
        LifecycleTrigger(expression)  # type: ignore[arg-type]


def build_trigger(
    trigger_type: TriggerType | str,
    expression: object,
    timezone: str = "UTC",
    *,
    anchor: datetime | None = None,
) -> Trigger:
    """Validate a schedule's trigger fields and return its Trigger.

    ``anchor`` is the schedule's creation/start instant (aware). Interval and reconciliation
    schedules fire at ``anchor + k * period`` and a relative delay (``"+15m"``) at
    ``anchor + delay``; those raise ValueError without it. Other types ignore it.
    """
    validate_expression(trigger_type, expression, timezone)
    kind = _trigger_type(trigger_type)
    if kind is TriggerType.CALENDAR:
        return CalendarTrigger(str(expression), timezone)
    if kind is TriggerType.EVENT:
        return EventTrigger(str(expression))
    if kind is TriggerType.LIFECYCLE:
        return LifecycleTrigger(str(expression))
    if kind is TriggerType.DELAY:
        at = _delay(expression)
        if isinstance(at, datetime):
            return DelayTrigger(at)
        return DelayTrigger(_require_anchor(anchor, kind) + at)
    return IntervalTrigger(_duration(expression), _require_anchor(anchor, kind))


def _require_anchor(anchor: datetime | None, kind: TriggerType) -> datetime:
    if anchor is None:
        raise ValueError(f"a {kind.value} trigger needs anchor=, the schedule's start instant")
    return utc(anchor)
