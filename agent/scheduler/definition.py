"""ScheduleDefinition: what to run, when, and under which policies; validated when it is built."""

from __future__ import annotations

import functools
import json
import re
import uuid
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from . import triggers
from .enums import (
    BreakerState,
    ConcurrencyPolicy,
    MissedRunPolicy,
    RiskTier,
    ScheduleSource,
    ShutdownPolicy,
    TriggerType,
)
from .errors import InvalidSchedule

#: Names of schedules and tasks: letters, digits and ``_ . : -``, starting with a letter or digit.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
NAME_HELP = "1-128 characters: letters, digits and _ . : -, starting with a letter or digit"
#: The largest ``params`` object a schedule may carry, as JSON.
MAX_PARAMS_BYTES = 64 * 1024

DEFAULT_MAX_RETRIES = 3
DEFAULT_RETRY_BACKOFF = timedelta(seconds=30)
#: How late a run may start before it counts as missed.
DEFAULT_GRACE = timedelta(seconds=60)
DEFAULT_CATCH_UP_LIMIT = 100
DEFAULT_SHUTDOWN_TIMEOUT = timedelta(seconds=30)
DEFAULT_BREAKER_THRESHOLD = 3

E = TypeVar("E", bound=StrEnum)


def _enum(cls: type[E], name: str, value: Any) -> E:
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(m.value for m in cls)
        raise InvalidSchedule(name, value, f"one of: {allowed}") from None


def _span(name: str, value: Any, *, optional: bool = False, zero_ok: bool = True) -> timedelta | None:
    if value is None and optional:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            value = timedelta(seconds=value)
        except (OverflowError, ValueError):
            raise InvalidSchedule(
                name, value, "a timedelta or a number of seconds within about 2.7 million years"
            ) from None
    low = "0 or more" if zero_ok else "more than 0"
    allowed = f"a timedelta or a number of seconds, {low}" + (", or None" if optional else "")
    if not isinstance(value, timedelta) or value < timedelta(0) or (not zero_ok and not value):
        raise InvalidSchedule(name, value, allowed)
    return value


def _count(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidSchedule(name, value, f"a whole number, {low} or more")
    return value


def _instant(name: str, value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidSchedule(name, value, "a timezone-aware datetime or None")
    return triggers.utc(value)


def check_name(field_name: str, value: Any) -> str:
    """``value`` if it is a valid schedule or task name, else InvalidSchedule naming ``field_name``."""
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise InvalidSchedule(field_name, value, NAME_HELP)
    return value


def check_params(field_name: str, value: Any) -> dict[str, Any]:
    """A JSON object of at most MAX_PARAMS_BYTES, returned as a plain dict."""
    allowed = f"a JSON object (dict with string keys) of at most {MAX_PARAMS_BYTES} bytes"
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise InvalidSchedule(field_name, value, allowed)
    try:
        encoded = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        raise InvalidSchedule(field_name, "<not JSON>", allowed) from None
    if len(encoded.encode()) > MAX_PARAMS_BYTES:
        raise InvalidSchedule(field_name, f"<{len(encoded)} bytes>", allowed)
    loaded: dict[str, Any] = json.loads(encoded)
    return loaded


def new_schedule_id() -> str:
    """A fresh random schedule id."""
    return "sch_" + uuid.uuid4().hex[:20]


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleDefinition:
    """One schedule: a trigger, a target task, and the policies that govern its runs.

    Built from keyword arguments; every field is checked in ``__post_init__`` and a bad one
    raises :class:`InvalidSchedule` naming the field, the value and what is allowed. Strings
    are accepted for enum fields and numbers of seconds for durations. Use
    ``dataclasses.replace`` (or ``ScheduleStore.update``) for a changed copy; it is checked again.
    """

    name: str
    """Unique, human-chosen name; also how the CLI and the bot address the schedule."""
    trigger_type: TriggerType
    """What makes it fire: lifecycle, interval, calendar, delay, event or reconciliation."""
    expression: str
    """Cron for calendar; "15m"-style span for interval and reconciliation; instant or "+15m"
    for delay; event name for event; "startup" or "shutdown" for lifecycle."""
    target: str
    """Name of the registered task each run calls."""
    timezone: str = "UTC"
    """IANA timezone in which a calendar expression is read."""
    params: dict[str, Any] = field(default_factory=dict)
    """JSON object handed to the task in ``RunContext.params``."""
    description: str = ""
    """What the schedule is for, in words."""
    missed_run_policy: MissedRunPolicy = MissedRunPolicy.SKIP
    """What to do with occurrences missed while nothing ran them."""
    concurrency_policy: ConcurrencyPolicy = ConcurrencyPolicy.FORBID
    """What to do when an occurrence is due while a run is in flight."""
    shutdown_policy: ShutdownPolicy = ShutdownPolicy.GRACEFUL_FINISH
    """What happens to a running run when the worker stops."""
    risk_tier: RiskTier = RiskTier.LOW
    """How much harm the task can do; decides approval of proposals."""
    enabled: bool = True
    """Disabled schedules produce no runs."""
    max_retries: int = DEFAULT_MAX_RETRIES
    """Retries after the first attempt before a run is dead-lettered."""
    retry_backoff: timedelta = DEFAULT_RETRY_BACKOFF
    """Base of the exponential backoff between attempts."""
    timeout: timedelta | None = None
    """A run still running after this long fails with reason timeout; None: no limit."""
    grace: timedelta = DEFAULT_GRACE
    """A run that would start later than this after its intended time counts as missed."""
    catch_up_limit: int = DEFAULT_CATCH_UP_LIMIT
    """With catch_up_all, at most this many missed occurrences are run."""
    shutdown_timeout: timedelta = DEFAULT_SHUTDOWN_TIMEOUT
    """How long graceful_finish waits at shutdown before requeueing."""
    breaker_threshold: int = DEFAULT_BREAKER_THRESHOLD
    """Consecutive failed runs that trip the circuit breaker."""
    breaker_cooldown: timedelta | None = None
    """After this long an open breaker lets one trial run through; None: wait for an operator."""
    source: ScheduleSource = ScheduleSource.USER
    """Who created it: user, legacy_cron or agent."""
    proposal_id: str | None = None
    """The proposal it was activated from, for agent schedules."""
    id: str = field(default_factory=new_schedule_id)
    """Stable identifier, generated unless given."""
    next_run_at: datetime | None = None
    """Next time-based occurrence not yet materialized (set by the engine)."""
    last_run_at: datetime | None = None
    """Intended time of the latest materialized run."""
    anchor_at: datetime | None = None
    """Start of an interval's grid and base of a relative delay; set when first scheduled."""
    breaker_state: BreakerState = BreakerState.CLOSED
    """State of the schedule's circuit breaker."""
    consecutive_failures: int = 0
    """Terminal failures since the last success."""
    breaker_opened_at: datetime | None = None
    """When the breaker last opened."""
    disabled_reason: str | None = None
    """Why the schedule is disabled, when it is."""
    created_at: datetime | None = None
    """When it was stored."""
    updated_at: datetime | None = None
    """When it was last changed."""

    def __post_init__(self) -> None:
        put = object.__setattr__
        check_name("name", self.name)
        check_name("target", self.target)
        put(self, "trigger_type", _enum(TriggerType, "trigger_type", self.trigger_type))
        if not isinstance(self.timezone, str):
            raise InvalidSchedule("timezone", self.timezone, 'an IANA timezone name such as "UTC"')
        triggers.parse_timezone(self.timezone)
        if not isinstance(self.expression, str):
            if self.trigger_type in (TriggerType.INTERVAL, TriggerType.RECONCILIATION) and isinstance(
                self.expression, int | float
            ):
                put(self, "expression", str(self.expression))
            else:
                raise InvalidSchedule("expression", self.expression, "a string")
        triggers.validate_expression(self.trigger_type, self.expression, self.timezone)
        put(self, "params", check_params("params", self.params))
        if not isinstance(self.description, str):
            raise InvalidSchedule("description", self.description, "a string")
        put(self, "missed_run_policy", _enum(MissedRunPolicy, "missed_run_policy", self.missed_run_policy))
        put(self, "concurrency_policy", _enum(ConcurrencyPolicy, "concurrency_policy", self.concurrency_policy))
        put(self, "shutdown_policy", _enum(ShutdownPolicy, "shutdown_policy", self.shutdown_policy))
        put(self, "risk_tier", _enum(RiskTier, "risk_tier", self.risk_tier))
        put(self, "source", _enum(ScheduleSource, "source", self.source))
        put(self, "breaker_state", _enum(BreakerState, "breaker_state", self.breaker_state))
        if not isinstance(self.enabled, bool):
            raise InvalidSchedule("enabled", self.enabled, "true or false")
        _count("max_retries", self.max_retries, 0)
        _count("catch_up_limit", self.catch_up_limit, 1)
        _count("breaker_threshold", self.breaker_threshold, 1)
        _count("consecutive_failures", self.consecutive_failures, 0)
        put(self, "retry_backoff", _span("retry_backoff", self.retry_backoff))
        put(self, "timeout", _span("timeout", self.timeout, optional=True, zero_ok=False))
        put(self, "grace", _span("grace", self.grace))
        put(self, "shutdown_timeout", _span("shutdown_timeout", self.shutdown_timeout))
        put(self, "breaker_cooldown", _span("breaker_cooldown", self.breaker_cooldown, optional=True))
        if not isinstance(self.id, str) or not NAME_PATTERN.match(self.id):
            raise InvalidSchedule("id", self.id, NAME_HELP)
        for name in ("next_run_at", "last_run_at", "anchor_at", "breaker_opened_at", "created_at", "updated_at"):
            put(self, name, _instant(name, getattr(self, name)))

    @classmethod
    def from_trusted(cls, **values: Any) -> ScheduleDefinition:
        """Rebuild a definition that was validated before (a stored row) without validating again.

        Enum fields may be their string values. Only the store should call this.
        """
        self = object.__new__(cls)
        put = object.__setattr__
        for name in _FIELD_NAMES:
            value = values[name]
            kind = _ENUM_FIELDS.get(name)
            put(self, name, kind(value) if kind is not None and value is not None else value)
        return self

    def with_state(self, **changes: Any) -> ScheduleDefinition:
        """A copy with engine-computed state changed (next_run_at, anchor_at...), not validated again."""
        values = {name: getattr(self, name) for name in _FIELD_NAMES}
        values.update(changes)
        return ScheduleDefinition.from_trusted(**values)

    @property
    def is_time_based(self) -> bool:
        """True when the schedule has occurrences in time (interval, calendar, delay, reconciliation)."""
        return self.trigger_type in TIME_BASED

    def trigger(self, anchor: datetime | None = None) -> triggers.Trigger:
        """The occurrence math for this schedule; ``anchor`` defaults to ``anchor_at`` then ``created_at``."""
        return _build_trigger(
            self.trigger_type, self.expression, self.timezone, anchor or self.anchor_at or self.created_at
        )

    def with_changes(self, **changes: Any) -> ScheduleDefinition:
        """A validated copy with ``changes``; unknown field names raise InvalidSchedule."""
        known = {f.name for f in fields(self)}
        for key, value in changes.items():
            if key not in known:
                raise InvalidSchedule(key, value, "a ScheduleDefinition field: " + ", ".join(sorted(known)))
        return replace(self, **changes)


#: Trigger types whose schedules have occurrences in time.
TIME_BASED = frozenset({TriggerType.INTERVAL, TriggerType.CALENDAR, TriggerType.DELAY, TriggerType.RECONCILIATION})


@functools.lru_cache(maxsize=4096)
def _build_trigger(
    trigger_type: TriggerType, expression: str, timezone: str, anchor: datetime | None
) -> triggers.Trigger:
    # Triggers are immutable: parsing a cron once per (expression, zone, anchor) is enough.
    return triggers.build_trigger(trigger_type, expression, timezone, anchor=anchor)


_ENUM_FIELDS: dict[str, type[StrEnum]] = {
    "trigger_type": TriggerType,
    "missed_run_policy": MissedRunPolicy,
    "concurrency_policy": ConcurrencyPolicy,
    "shutdown_policy": ShutdownPolicy,
    "risk_tier": RiskTier,
    "source": ScheduleSource,
    "breaker_state": BreakerState,
}

_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(ScheduleDefinition))
