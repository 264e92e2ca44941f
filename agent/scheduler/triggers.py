"""Pure occurrence math for the six trigger types: when does a schedule fire next (croniter, zoneinfo)."""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from itertools import accumulate, islice
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import CroniterError, croniter

from . import limits
from .enums import TriggerType
from .errors import InvalidSchedule

#: Accepted duration spellings: a number of seconds, or a number followed by s, m, h or d.
DURATION_HELP = 'a positive duration: seconds as a number, or "90s", "15m", "2h", "1d"'
#: What an interval (or reconciliation) expression allows.
INTERVAL_HELP = (
    f"an interval from {limits.describe(limits.MIN_INTERVAL)} to {limits.describe(limits.MAX_INTERVAL)}: "
    'seconds as a number, or "90s", "15m", "2h", "1d"'
)
_DURATION_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*", re.ASCII)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str | float | timedelta, *, field: str = "expression") -> timedelta:
    """Parse ``"90s"``, ``"15m"``, ``"2h"``, ``"1d"``, a number of seconds or a timedelta; must be > 0."""
    seconds: float
    try:
        if isinstance(value, timedelta):
            seconds = value.total_seconds()
        elif isinstance(value, bool):
            raise InvalidSchedule(field, value, DURATION_HELP)
        elif isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str) and len(value) <= limits.EXPRESSION_CHARS and (m := _DURATION_RE.fullmatch(value)):
            seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        else:
            raise InvalidSchedule(field, value, DURATION_HELP)
        span = timedelta(seconds=seconds) if math.isfinite(seconds) else timedelta(0)
        if span <= timedelta(0):  # also what rounds to no time at all (below half a microsecond)
            raise InvalidSchedule(field, value, DURATION_HELP)
        return span
    except OverflowError as exc:  # an int too big for a float, or seconds beyond timedelta's range
        raise InvalidSchedule(field, value, DURATION_HELP) from exc


def parse_interval(value: object, *, field: str = "expression") -> timedelta:
    """An interval: a duration (as :func:`parse_duration` reads it) from MIN_INTERVAL to MAX_INTERVAL."""
    if not isinstance(value, str | int | float | timedelta):
        raise InvalidSchedule(field, value, INTERVAL_HELP)
    try:
        period = parse_duration(value, field=field)
    except InvalidSchedule:
        raise InvalidSchedule(field, value, INTERVAL_HELP) from None
    if not limits.MIN_INTERVAL <= period <= limits.MAX_INTERVAL:
        raise InvalidSchedule(field, value, INTERVAL_HELP)
    return period


def parse_timezone(name: str) -> ZoneInfo:
    """The ``ZoneInfo`` for an IANA name such as ``"Europe/Berlin"``."""
    allowed = 'an IANA timezone name such as "UTC" or "Europe/Berlin"'
    if not isinstance(name, str) or not 0 < len(name) <= limits.TIMEZONE_CHARS or name not in _timezones():
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


#: How many upcoming fires a calendar trigger computes at once and keeps for the next calls.
AHEAD_FIRES = 64


class Trigger(Protocol):
    """The occurrences of one schedule, as aware UTC instants."""

    def next_after(self, instant: datetime) -> datetime | None:
        """The first occurrence strictly after ``instant``, or None when there is none."""
        ...

    def occurrences(self, start: datetime, end: datetime, limit: int | None = None) -> list[datetime]:
        """Occurrences ``t`` with ``start < t <= end``, oldest first, at most ``limit`` of them."""
        ...

    def count(self, start: datetime, end: datetime) -> int:
        """How many occurrences ``t`` have ``start < t <= end``: ``len(occurrences(start, end))``, computed."""
        ...

    def latest(self, start: datetime, end: datetime, n: int) -> list[datetime]:
        """The last ``n`` occurrences with ``start < t <= end``, oldest first (``[]`` for n=0)."""
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
    _ahead: tuple[datetime, tuple[datetime, ...]] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        cron, seconds_first, every_hour = _parse_cron(self.expression)
        object.__setattr__(self, "_cron", cron)
        object.__setattr__(self, "_seconds_first", seconds_first)
        object.__setattr__(self, "_every_hour", every_hour)
        object.__setattr__(self, "_zone", parse_timezone(self.timezone))

    def next_after(self, instant: datetime) -> datetime | None:
        """The first fire strictly after ``instant``, as aware UTC; None past the end of the calendar."""
        instant = utc(instant)
        # Walking from a fresh croniter costs ~100 us; schedulers ask for the next fire again and
        # again a little later, so the next AHEAD_FIRES fires are kept and answered by bisection.
        ahead = self._ahead
        if ahead is not None and ahead[0] <= instant < ahead[1][-1]:
            fires = ahead[1]
            return fires[bisect_right(fires, instant)]
        fresh = tuple(islice(self._fires_after(instant), AHEAD_FIRES))
        if not fresh:
            return None
        object.__setattr__(self, "_ahead", (instant, fresh))
        return fresh[0]

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

    def count(self, start: datetime, end: datetime) -> int:
        """How many fires ``t`` have ``start < t <= end``; equal to ``len(occurrences(start, end))``.

        Computed, not walked (see :meth:`_pieces`): the cost grows with the months and DST changes
        spanned, not with the number of fires.
        """
        start, end = utc(start), utc(end)
        if end <= start or not self._walkable(start):
            return 0
        return self._count(_second_after(start), _second_after(end))

    def latest(self, start: datetime, end: datetime, n: int) -> list[datetime]:
        """The last ``n`` fires with ``start < t <= end``, oldest first (``[]`` for n=0).

        Equal to ``occurrences(start, end)[-n:]`` for n >= 1, found from ``end`` backwards: windows
        of doubling width are counted until they hold ``n`` fires, then the fires from the n-th last
        on are listed with the same arithmetic as :meth:`count`.
        """
        _check_n(n)
        start, end = utc(start), utc(end)
        if n == 0 or end <= start or not self._walkable(start):
            return []
        try:
            seconds = self._last_seconds(_second_after(start), _second_after(end), n)
        except _NotCountable:
            return self.occurrences(start, end)[-n:]
        return [_EPOCH + timedelta(seconds=second) for second in seconds]

    def _walkable(self, start: datetime) -> bool:
        """False where :meth:`_fires_after` finds nothing: ``start``'s wall clock is before year 1."""
        try:
            start.astimezone(self._zone)
        except OverflowError:
            return False
        return True

    def _last_seconds(self, first: int, stop: int, n: int) -> list[int]:
        """The last ``n`` fires at whole POSIX seconds ``first <= t < stop``, ascending."""
        per_day = _cron_plan(self._cron, self._seconds_first).per_day
        hi, width, later = stop, max(60, n * _DAY // per_day), 0  # width: about n fires if every day matched
        while True:
            lo = max(first, hi - width)
            found = self._count(lo, hi)
            if later + found >= n:
                break
            if lo == first:  # fewer than n fires in all
                return list(self._fire_seconds(first, stop))
            later += found
            hi, width = lo, width * 2
        skip = later + found - n  # fires in [lo, stop) before the n-th last one
        if skip > 4 * n + 256:  # too many to step over: bisect for the n-th last fire instead
            need, top = n - later, hi - 1
            while lo < top:
                mid = (lo + top + 1) // 2
                if self._count(mid, hi) >= need:
                    lo = mid
                else:
                    top = mid - 1
            skip = 0
        return list(islice(self._fire_seconds(lo, stop), skip, skip + n))

    def _count(self, first: int, stop: int) -> int:
        """How many fires are at whole POSIX seconds ``first <= t < stop``."""
        if stop <= first:
            return 0
        total = 0
        if first < _ARITHMETIC_FROM:
            total += len(self.occurrences(_just_before(first), _just_before(min(stop, _ARITHMETIC_FROM))))
            first = _ARITHMETIC_FROM
        if stop > _ARITHMETIC_TO:
            total += len(self.occurrences(_just_before(max(first, _ARITHMETIC_TO)), _just_before(stop)))
            stop = _ARITHMETIC_TO
        if first < stop:
            try:
                plan = _cron_plan(self._cron, self._seconds_first)
                total += sum(
                    1 if off is None else plan.walls(a + off, b + off) for a, b, off in self._pieces(first, stop)
                )
            except _NotCountable:
                total += len(self.occurrences(_just_before(first), _just_before(stop)))
        return total

    def _fire_seconds(self, first: int, stop: int) -> Iterator[int]:
        """The fires at whole POSIX seconds ``first <= t < stop``, ascending, as :meth:`_count` counts them."""
        if first < _ARITHMETIC_FROM:
            yield from self._walked_seconds(first, min(stop, _ARITHMETIC_FROM))
            first = _ARITHMETIC_FROM
        if first < min(stop, _ARITHMETIC_TO):
            plan = _cron_plan(self._cron, self._seconds_first)
            for a, b, off in self._pieces(first, min(stop, _ARITHMETIC_TO)):
                if off is None:
                    yield a
                else:
                    yield from (wall - off for wall in plan.wall_seconds(a + off, b + off))
        if stop > _ARITHMETIC_TO:
            yield from self._walked_seconds(max(first, _ARITHMETIC_TO), stop)

    def _walked_seconds(self, first: int, stop: int) -> Iterator[int]:
        """Like :meth:`_fire_seconds`, by walking :meth:`_fires_after` (for the ends of the calendar)."""
        for fire in self._fires_after(_just_before(first)):
            second = (fire - _EPOCH) // _SECOND
            if second >= stop:
                return
            yield second

    def _pieces(self, first: int, stop: int) -> list[tuple[int, int, int | None]]:
        """``[first, stop)`` (POSIX seconds) cut into pieces whose fires are plain arithmetic.

        In a piece ``(a, b, offset)`` the fires are exactly the real seconds ``a <= t < b`` whose wall
        time ``t + offset`` matches the cron (:meth:`_CronPlan.walls`); a piece ``(t, t + 1, None)``
        is a single fire at ``t``. Pieces are in time order. Between two UTC offset changes every real
        second has its own wall time, so the cuts are the changes, and the DST rules of
        :meth:`_fires_after`:

        * every-hour crons: nothing more (repeated wall times fire on both passes, skipped ones never).
        * fixed-hour crons: the second pass of a repeated stretch does not fire, so it is cut out; a
          gap holding a matching wall time fires once at the change, unless the first wall time after
          the gap matches too (that fire is counted already).

        Assumes a zone changes its offset at most once a day and by at most 48 hours, true of all of
        tzdata (changes are at least 3 days apart and at most 24 hours in size).
        """
        plan = _cron_plan(self._cron, self._seconds_first)
        changes = _transitions(self._zone, first - _LOOKBACK, stop)
        offset = _offset(self._zone, first)
        pieces: list[tuple[int, int, int | None]] = []
        since = first
        for at, old, new in changes:
            if at > first:
                pieces.append((since, at, offset))
                since, offset = at, new
            if self._every_hour:
                continue
            if new < old:  # fall back: [at, at + old - new) is the second pass, which does not fire
                since = max(since, at + old - new)
            elif at >= first and plan.walls(at + old, at + new) and not plan.walls(at + new, at + new + 1):
                pieces.append((at, at + 1, None))  # spring forward: the gap's wall times fire once, at the change
        pieces.append((since, stop, offset))
        return [(a, min(b, stop), off) for a, b, off in pieces if a < min(b, stop)]

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


# --- counting calendar fires without walking them -----------------------------------------------

_DAY = 86400
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL = _EPOCH.date().toordinal()
_SECOND = timedelta(seconds=1)
# Arithmetic counting stays clear of the first and last years of the calendar, where local wall
# times, the probes below and croniter run out of range; fires out there are walked.
_ARITHMETIC_FROM = (datetime(2, 1, 1, tzinfo=UTC) - _EPOCH) // _SECOND
_ARITHMETIC_TO = (datetime(9999, 1, 1, tzinfo=UTC) - _EPOCH) // _SECOND
_LOOKBACK = 2 * _DAY  # a fall back before the span can still repeat wall times inside it
_CHUNK = 32 * _DAY  # transitions are found and cached per chunk of this many POSIX seconds
# (months, days of month, days of week, special day fields): see _CronPlan.
_DayFields = tuple[tuple[int, ...] | None, tuple[int, ...] | None, tuple[int, ...] | None, str | None]


class _NotCountable(Exception):
    """A day-field form croniter could not enumerate; the caller walks the fires instead."""


def _second_after(instant: datetime) -> int:
    """The first whole POSIX second strictly after aware ``instant``."""
    return (instant - _EPOCH) // _SECOND + 1


def _just_before(second: int) -> datetime:
    """The aware UTC instant one microsecond before POSIX second ``second``."""
    return _EPOCH + timedelta(seconds=second, microseconds=-1)


def _offset(zone: ZoneInfo, second: int) -> int:
    """``zone``'s UTC offset in whole seconds at POSIX second ``second``."""
    offset = datetime.fromtimestamp(second, zone).utcoffset()
    assert offset is not None  # a ZoneInfo always has one
    return offset // _SECOND


def _transitions(zone: ZoneInfo, first: int, stop: int) -> list[tuple[int, int, int]]:
    """``(at, old offset, new offset)`` for each offset change of ``zone`` at ``first <= at < stop``."""
    found: list[tuple[int, int, int]] = []
    for chunk in range(first // _CHUNK, (stop - 1) // _CHUNK + 1):
        if changes := _chunk_transitions(zone, chunk):
            found.extend(change for change in changes if first <= change[0] < stop)
    return found


@lru_cache(maxsize=4096)
def _chunk_transitions(zone: ZoneInfo, chunk: int) -> tuple[tuple[int, int, int], ...]:
    """Offset changes in ``[chunk * _CHUNK, (chunk + 1) * _CHUNK)``: daily probes, then bisection.

    A change is the first second with the new offset. Daily probes see every change as long as two
    never fall within one day of each other (in tzdata they are at least 3 days apart).
    """
    begin = chunk * _CHUNK
    found: list[tuple[int, int, int]] = []
    probe = begin - 1
    offset = _offset(zone, probe)
    while probe < begin + _CHUNK - 1:
        nxt = min(probe + _DAY, begin + _CHUNK - 1)
        new = _offset(zone, nxt)
        if new != offset:
            lo, hi = probe, nxt  # offset at lo is the old one; at hi it is not
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _offset(zone, mid) == offset:
                    lo = mid
                else:
                    hi = mid
            found.append((hi, offset, _offset(zone, hi)))
        probe, offset = nxt, new
    return tuple(found)


@dataclass(frozen=True, slots=True)
class _CronPlan:
    """The parsed fields of a cron expression, for counting and listing matching wall-clock seconds.

    ``*_before`` are prefix counts: ``hours_before[h]`` is how many matching hours are < h (h up to
    25; likewise minutes and seconds up to 61). ``days`` is the key for :func:`_month_before`.
    """

    hours: tuple[int, ...]
    minutes: tuple[int, ...]
    seconds: tuple[int, ...]
    days: _DayFields
    hours_before: tuple[int, ...]
    minutes_before: tuple[int, ...]
    seconds_before: tuple[int, ...]

    @property
    def per_day(self) -> int:
        """Matching times of day."""
        return len(self.hours) * len(self.minutes) * len(self.seconds)

    def walls(self, first: int, stop: int) -> int:
        """How many wall-clock seconds ``first <= w < stop`` match; ``w`` counts from 1970-01-01 00:00 local."""
        if stop <= first:
            return 0
        day, start_second = divmod(first, _DAY)
        last_day, stop_second = divmod(stop, _DAY)
        if day == last_day:
            if not self._matches(day):
                return 0
            return self._before(stop_second) - self._before(start_second)
        total = self.per_day - self._before(start_second) if self._matches(day) else 0
        total += self.per_day * self._matching_days(day + 1, last_day)
        if stop_second and self._matches(last_day):
            total += self._before(stop_second)
        return total

    def wall_seconds(self, first: int, stop: int) -> Iterator[int]:
        """The matching wall-clock seconds ``first <= w < stop`` (as in :meth:`walls`), ascending."""
        hours, minutes, seconds = self.hours, self.minutes, self.seconds
        day, low = divmod(first, _DAY)
        while day * _DAY < stop:
            on = date.fromordinal(day + _EPOCH_ORDINAL)
            before = _month_before(self.days, on.year, on.month)
            if before[on.day + 1] == before[on.day]:  # not this day: on to the next matching one
                if before[32] == before[on.day]:
                    day += _month_length(on.year, on.month) - on.day + 1
                else:
                    nxt = on.day + 1
                    while before[nxt + 1] == before[nxt]:
                        nxt += 1
                    day += nxt - on.day
                low = 0
                continue
            base, high = day * _DAY, min(stop - day * _DAY, _DAY)
            for hour in hours[self.hours_before[low // 3600] :]:
                if hour * 3600 >= high:
                    break
                for minute in minutes:
                    at = hour * 3600 + minute * 60
                    if at >= high:
                        break
                    if at + 60 <= low:
                        continue
                    for second in seconds:
                        if at + second >= high:
                            break
                        if at + second >= low:
                            yield base + at + second
            day, low = day + 1, 0

    def _before(self, second: int) -> int:
        """Matching times of day earlier than ``second`` seconds after midnight (0 <= second <= 86400)."""
        hour, rest = divmod(second, 3600)
        minute, sec = divmod(rest, 60)
        hours, minutes, seconds = self.hours_before, self.minutes_before, self.seconds_before
        total = hours[hour] * len(self.minutes) * len(self.seconds)
        if hours[hour + 1] > hours[hour]:  # this very hour matches
            total += minutes[minute] * len(self.seconds)
            if minutes[minute + 1] > minutes[minute]:
                total += seconds[sec]
        return total

    def _matches(self, day: int) -> bool:
        """Whether the day-of-month, month and day-of-week fields match ``day`` (days since 1970-01-01)."""
        on = date.fromordinal(day + _EPOCH_ORDINAL)
        before = _month_before(self.days, on.year, on.month)
        return before[on.day + 1] > before[on.day]

    def _matching_days(self, first: int, stop: int) -> int:
        """Matching days ``first <= day < stop`` (days since 1970-01-01), by month and by whole year."""
        if stop <= first:
            return 0
        since = date.fromordinal(first + _EPOCH_ORDINAL)
        until = date.fromordinal(stop - 1 + _EPOCH_ORDINAL)  # inclusive: the day after may be past 9999
        year, month, day = since.year, since.month, since.day
        total = 0
        while (year, month) < (until.year, until.month):
            if month == day == 1 and year < until.year:
                total += _year_days(self.days, year)
                year += 1
                continue
            before = _month_before(self.days, year, month)
            total += before[32] - before[day]
            year, month, day = (year + 1, 1, 1) if month == 12 else (year, month + 1, 1)
        before = _month_before(self.days, year, month)
        return total + before[until.day + 1] - before[day]


def _restricted(values: list[int | str], modulo: int = 0) -> tuple[int, ...] | None:
    """A croniter ``expanded`` field as a sorted tuple, or None for ``*``."""
    if values == ["*"]:
        return None
    return tuple(sorted({int(v) % modulo if modulo else int(v) for v in values}))


def _prefix(values: tuple[int, ...], size: int) -> tuple[int, ...]:
    """``before[i]``: how many of ``values`` are < i, for i in 0 .. size + 1."""
    counts = [0] * (size + 2)
    for value in values:  # each value is at most size
        counts[value + 1] += 1
    return tuple(accumulate(counts))


@lru_cache(maxsize=1024)
def _cron_plan(cron: str, seconds_first: bool) -> _CronPlan:
    """The :class:`_CronPlan` of a validated cron expression, from croniter's own parse."""
    walker = croniter(cron, _PROBE, second_at_beginning=seconds_first)
    minute, hour, dom, month, dow = walker.expanded[:5]
    days: _DayFields
    if "l" in dom or walker.nth_weekday_of_month or walker.nearest_weekday:
        days = (_restricted(month), None, None, " ".join(cron.split()[-3:]))
    else:
        days = (_restricted(month), _restricted(dom), _restricted(dow, 7), None)
    hours = _restricted(hour) or tuple(range(24))
    minutes = _restricted(minute) or tuple(range(60))
    seconds = (_restricted(walker.expanded[5]) or tuple(range(60))) if seconds_first else (0,)
    return _CronPlan(
        hours=hours,
        minutes=minutes,
        seconds=seconds,
        days=days,
        hours_before=_prefix(hours, 24),
        minutes_before=_prefix(minutes, 60),
        seconds_before=_prefix(seconds, 60),
    )


def _month_length(year: int, month: int) -> int:
    return 31 if month == 12 else (date(year, month + 1, 1) - date(year, month, 1)).days


@lru_cache(maxsize=8192)
def _month_before(days: _DayFields, year: int, month: int) -> tuple[int, ...]:
    """Prefix counts of the days of ``year``-``month`` that the day fields match, as croniter reads them.

    ``before[d]`` is how many matching days are < d, for d in 0 .. 32. Both day of month and day of
    week restricted: either matches (croniter's default day_or).
    """
    months, doms, dows, special = days
    if months is not None and month not in months:
        return _prefix((), 31)
    if special is not None:
        return _prefix(_croniter_month_days(special, year, month), 31)
    weekday = date(year, month, 1).isoweekday() % 7  # cron numbering: 0 is Sunday
    either = doms is not None and dows is not None
    matching = []
    for day in range(1, _month_length(year, month) + 1):
        dom_ok = doms is None or day in doms
        dow_ok = dows is None or (weekday + day - 1) % 7 in dows
        if (dom_ok or dow_ok) if either else (dom_ok and dow_ok):
            matching.append(day)
    return _prefix(tuple(matching), 31)


@lru_cache(maxsize=1024)
def _year_days(days: _DayFields, year: int) -> int:
    """How many days of ``year`` the day fields match."""
    return sum(_month_before(days, year, month)[32] for month in range(1, 13))


def _croniter_month_days(day_fields: str, year: int, month: int) -> tuple[int, ...]:
    """Matching days of a month for day fields with L, # or W, read off croniter itself."""
    wall = datetime(year, month, 1, tzinfo=UTC).replace(tzinfo=None) - timedelta(minutes=1)  # naive wall clock
    walker = croniter(f"0 0 {day_fields}", wall)
    found: list[int] = []
    try:
        while True:
            fire = walker.get_next(datetime)
            if (fire.year, fire.month) != (year, month):
                return tuple(found)
            found.append(fire.day)
    except (CroniterError, OverflowError, ValueError) as exc:
        raise _NotCountable(day_fields) from exc


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, not {n!r}")


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
        if not isinstance(self.period, timedelta) or not limits.MIN_INTERVAL <= self.period <= limits.MAX_INTERVAL:
            raise InvalidSchedule("expression", self.period, INTERVAL_HELP)
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

    def count(self, start: datetime, end: datetime) -> int:
        """How many fires ``t`` have ``start < t <= end``: integer arithmetic on k."""
        start, end = utc(start), utc(end)
        return max(0, (end - self.anchor) // self.period - self._first_k(start) + 1)

    def latest(self, start: datetime, end: datetime, n: int) -> list[datetime]:
        """The last ``n`` fires with ``start < t <= end``, oldest first (``[]`` for n=0)."""
        _check_n(n)
        start, end = utc(start), utc(end)
        last = (end - self.anchor) // self.period
        first = max(self._first_k(start), last - n + 1)
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

    def count(self, start: datetime, end: datetime) -> int:
        """1 when ``start < at <= end``, else 0."""
        start, end = utc(start), utc(end)
        return 1 if start < self.at <= end else 0

    def latest(self, start: datetime, end: datetime, n: int) -> list[datetime]:
        """``[at]`` when ``start < at <= end`` and n >= 1, else ``[]``."""
        _check_n(n)
        start, end = utc(start), utc(end)
        return [self.at] if start < self.at <= end and n else []


EVENT_HELP = "an event name of 1 to 128 characters from A-Z a-z 0-9 _ . : -"
_EVENT_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
LIFECYCLE_HELP = 'exactly "startup" or "shutdown"'


def check_event_name(field: str, value: Any) -> str:
    """``value`` if it is an event name (EVENT_HELP): what an event schedule listens to, and what may be emitted."""
    if not isinstance(value, str) or not _EVENT_RE.fullmatch(value):
        raise InvalidSchedule(field, value, EVENT_HELP)
    return value


LIFECYCLE_PHASES = ("startup", "shutdown")


class _OffTheClock:
    """Triggers fired by something other than time (events, lifecycle phases): no occurrences."""

    __slots__ = ()

    def next_after(self, instant: datetime) -> datetime | None:
        """Always None: not on the clock."""
        utc(instant)
        return None

    def occurrences(self, start: datetime, end: datetime, limit: int | None = None) -> list[datetime]:
        """Always ``[]``: not on the clock."""
        utc(start), utc(end)
        _check_limit(limit)
        return []

    def count(self, start: datetime, end: datetime) -> int:
        """Always 0: not on the clock."""
        utc(start), utc(end)
        return 0

    def latest(self, start: datetime, end: datetime, n: int) -> list[datetime]:
        """Always ``[]``: not on the clock."""
        utc(start), utc(end)
        _check_n(n)
        return []


@dataclass(frozen=True, slots=True)
class EventTrigger(_OffTheClock):
    """Fires once per emitted event called ``name``; it has no time occurrences."""

    name: str

    def __post_init__(self) -> None:
        check_event_name("expression", self.name)


@dataclass(frozen=True, slots=True)
class LifecycleTrigger(_OffTheClock):
    """Fires when the engine starts (``"startup"``) or stops (``"shutdown"``); no time occurrences."""

    phase: str

    def __post_init__(self) -> None:
        if self.phase not in LIFECYCLE_PHASES:
            raise InvalidSchedule("expression", self.phase, LIFECYCLE_HELP)


# --- validation and construction from a schedule's fields --------------------------------------

TRIGGER_TYPE_HELP = "one of: " + ", ".join(t.value for t in TriggerType)
DELAY_HELP = (
    'an ISO-8601 instant that includes a UTC offset, such as "2027-03-13T09:00:00Z" or '
    '"2027-03-13T09:00:00+01:00", or "+<duration>" after creation such as "+90s", "+15m", "+2h", "+1d" '
    f"(at most {limits.describe(limits.MAX_INTERVAL)})"
)


def _trigger_type(value: object) -> TriggerType:
    if isinstance(value, TriggerType):
        return value
    if isinstance(value, str) and value in TriggerType._value2member_map_:
        return TriggerType(value)
    raise InvalidSchedule("trigger_type", value, TRIGGER_TYPE_HELP)


def _delay(expression: object) -> datetime | timedelta:
    """An aware UTC instant, or the delay after the schedule's anchor for ``"+15m"``."""
    if not isinstance(expression, str):
        raise InvalidSchedule("expression", expression, DELAY_HELP)
    text = expression.strip()
    try:
        if text.startswith("+"):
            delay = parse_duration(text[1:])
            if delay > limits.MAX_INTERVAL:
                raise ValueError(text)
            return delay
        at = datetime.fromisoformat(text)
    except ValueError as exc:  # InvalidSchedule is a ValueError too
        raise InvalidSchedule("expression", expression, DELAY_HELP) from exc
    if at.tzinfo is None:
        raise InvalidSchedule("expression", expression, f"include a UTC offset (Z or +01:00): {DELAY_HELP}")
    moved = limits.in_range(at)
    if moved is None:
        raise InvalidSchedule("expression", expression, f"an instant from 1970-01-01 to 8999-12-31 (UTC): {DELAY_HELP}")
    return moved


def validate_expression(trigger_type: TriggerType | str, expression: object, timezone: str = "UTC") -> None:
    """Raise InvalidSchedule unless ``expression`` is a valid expression for ``trigger_type``.

    ``.field`` names what to fix (``"trigger_type"``, ``"expression"`` or, for calendar
    schedules, the only type that uses it, ``"timezone"``) and ``.allowed`` lists the accepted forms.
    """
    kind = _trigger_type(trigger_type)
    if isinstance(expression, str):
        limits.check_text("expression", expression, limits.EXPRESSION_CHARS, single_line=True)
    if kind is TriggerType.CALENDAR:
        _parse_cron(expression)
        parse_timezone(timezone)
    elif kind in (TriggerType.INTERVAL, TriggerType.RECONCILIATION):
        parse_interval(expression)
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
    return IntervalTrigger(parse_interval(expression), _require_anchor(anchor, kind))


def _require_anchor(anchor: datetime | None, kind: TriggerType) -> datetime:
    if anchor is None:
        raise ValueError(f"a {kind.value} trigger needs anchor=, the schedule's start instant")
    return utc(anchor)
