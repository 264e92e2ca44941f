"""ScheduleDefinition: what to run, when, and under which policies; validated when it is built."""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from . import limits, triggers
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


def check_name(field_name: str, value: Any) -> str:
    """``value`` if it is a valid schedule or task name (matched whole), else InvalidSchedule naming ``field_name``."""
    return limits.check_name(field_name, value)


def check_params(field_name: str, value: Any) -> dict[str, Any]:
    """``value`` as a plain JSON object if both stores hold it (see ``limits.PARAMS_HELP``)."""
    return limits.check_params(field_name, value)


def new_schedule_id() -> str:
    """A fresh random schedule id."""
    return "sch_" + uuid.uuid4().hex[:20]


# No slots: a stored row becomes a definition, and the engine's state a copy, as one dict
# (``from_trusted``, ``with_state``), several times faster than field by field.
@dataclass(frozen=True, kw_only=True)
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
        triggers.parse_timezone(self.timezone)  # one of the IANA names, which are short plain ASCII
        expression = self.expression
        if self.trigger_type in (TriggerType.INTERVAL, TriggerType.RECONCILIATION) and isinstance(
            expression, int | float
        ):
            triggers.validate_expression(self.trigger_type, expression)  # in range before it is written out
            put(self, "expression", repr(float(expression)) if isinstance(expression, float) else str(int(expression)))
        elif not isinstance(expression, str):
            raise InvalidSchedule("expression", expression, "a string")
        triggers.validate_expression(self.trigger_type, self.expression, self.timezone)
        put(self, "params", check_params("params", self.params))
        limits.check_text("description", self.description, limits.DESCRIPTION_CHARS)
        put(self, "missed_run_policy", _enum(MissedRunPolicy, "missed_run_policy", self.missed_run_policy))
        put(self, "concurrency_policy", _enum(ConcurrencyPolicy, "concurrency_policy", self.concurrency_policy))
        put(self, "shutdown_policy", _enum(ShutdownPolicy, "shutdown_policy", self.shutdown_policy))
        put(self, "risk_tier", _enum(RiskTier, "risk_tier", self.risk_tier))
        put(self, "source", _enum(ScheduleSource, "source", self.source))
        put(self, "breaker_state", _enum(BreakerState, "breaker_state", self.breaker_state))
        if not isinstance(self.enabled, bool):
            raise InvalidSchedule("enabled", self.enabled, "true or false")
        limits.check_count("max_retries", self.max_retries, 0, limits.MAX_RETRIES)
        limits.check_count("catch_up_limit", self.catch_up_limit, 1, limits.MAX_CATCH_UP_LIMIT)
        limits.check_count("breaker_threshold", self.breaker_threshold, 1, limits.MAX_BREAKER_THRESHOLD)
        limits.check_count("consecutive_failures", self.consecutive_failures, 0, limits.MAX_STORED_INT)
        span = limits.check_span
        put(self, "retry_backoff", span("retry_backoff", self.retry_backoff, high=limits.MAX_RETRY_BACKOFF))
        put(self, "timeout", span("timeout", self.timeout, high=limits.MAX_TIMEOUT, zero_ok=False, optional=True))
        put(self, "grace", span("grace", self.grace, high=limits.MAX_GRACE))
        put(self, "shutdown_timeout", span("shutdown_timeout", self.shutdown_timeout, high=limits.MAX_SHUTDOWN_TIMEOUT))
        put(
            self,
            "breaker_cooldown",
            span("breaker_cooldown", self.breaker_cooldown, high=limits.MAX_BREAKER_COOLDOWN, optional=True),
        )
        limits.check_id("id", self.id)
        limits.check_id("proposal_id", self.proposal_id, optional=True)
        limits.check_text("disabled_reason", self.disabled_reason, limits.REASON_CHARS, optional=True)
        for name in ("next_run_at", "last_run_at", "anchor_at", "breaker_opened_at", "created_at", "updated_at"):
            put(self, name, limits.check_instant(name, getattr(self, name)))

    @classmethod
    def from_trusted(cls, **values: Any) -> ScheduleDefinition:
        """Rebuild a definition that was validated before (a stored row) without validating again.

        Enum fields may be their string values. Only the store should call this.
        """
        if values.keys() != _FIELD_SET:
            raise TypeError(f"from_trusted needs exactly the fields of ScheduleDefinition, not {sorted(values)}")
        self = object.__new__(cls)
        state = self.__dict__
        state.update(values)
        for name in _ENUM_FIELDS:  # only these need converting
            state[name] = _trusted_value(name, values[name])
        return self

    def with_state(self, **changes: Any) -> ScheduleDefinition:
        """A copy with engine-computed state changed (next_run_at, anchor_at...), not validated again."""
        unknown = changes.keys() - _FIELD_SET
        if unknown:
            raise TypeError(f"not ScheduleDefinition fields: {', '.join(sorted(unknown))}")
        new = object.__new__(ScheduleDefinition)
        state = new.__dict__
        state.update(self.__dict__)
        for name, value in changes.items():
            state[name] = _trusted_value(name, value)
        return new

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
_FIELD_SET = frozenset(_FIELD_NAMES)
#: Each enum field's members by value (a member is its own value too): a dict lookup, not Enum(value).
_ENUM_MEMBERS: dict[str, dict[str, StrEnum]] = {
    name: {member.value: member for member in kind} for name, kind in _ENUM_FIELDS.items()
}


def _trusted_value(name: str, value: Any) -> Any:
    """A stored value of field ``name`` as the definition holds it (an enum field's member)."""
    members = _ENUM_MEMBERS.get(name)
    if members is None or value is None:
        return value
    member = members.get(value)
    return member if member is not None else _ENUM_FIELDS[name](value)  # ValueError naming the value
