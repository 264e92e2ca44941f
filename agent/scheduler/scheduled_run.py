"""ScheduledRun: one occurrence of a schedule, from materialization to its final status."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from .enums import RunStatus


# No slots: a move copies a run's fields as one dict (``evolved``), five times faster than the
# constructor, and the engine makes two such copies of every run it executes.
@dataclass(frozen=True, kw_only=True)
class ScheduledRun:
    """A run as stored: an immutable snapshot of its row.

    The row is the source of truth; transitions go through the run machine and come back as a
    new snapshot. ``reason`` says why the run is in its status (why it was skipped, failed,
    requeued...).
    """

    run_id: str
    """Unique id of the run."""
    schedule_id: str
    """Id of the schedule that produced it."""
    schedule_name: str
    """Name of that schedule when the run was created."""
    intended_run_at: datetime
    """When the run was meant to start (aware UTC)."""
    occurrence_key: str
    """Unique per schedule: the intended time for time-based runs, else an event or manual id."""
    status: RunStatus = RunStatus.PENDING
    """Where the run is in its lifecycle."""
    attempt: int = 1
    """1 for the first execution, increased by each retry."""
    origin: str = "schedule"
    """What created it: schedule, catch_up, event, lifecycle, manual, replay."""
    params: dict[str, Any] = field(default_factory=dict)
    """Arguments for the task (schedule params, plus an event's payload)."""
    catch_up: bool = False
    """True when the run makes up for missed occurrences."""
    coalesced_from: int = 1
    """How many occurrences this row stands for."""
    started_at: datetime | None = None
    """When the current attempt started."""
    completed_at: datetime | None = None
    """When the current attempt ended."""
    outcome: str | None = None
    """The task's result, as text."""
    error_type: str | None = None
    """Exception type name of the last failure."""
    error: str | None = None
    """``Type: message`` of the last failure."""
    error_traceback: str | None = None
    """The traceback of the last failure."""
    reason: str | None = None
    """Why the run is in its status."""
    checkpoint: Any = None
    """The last checkpoint the task saved, if any."""
    owner: str | None = None
    """Worker id holding the run while it runs."""
    lease_expires_at: datetime | None = None
    """When the owner's claim lapses unless renewed."""
    heartbeat_at: datetime | None = None
    """Last sign of life from the task."""
    starts: int = 0
    """How many times an attempt of this run started. A run that started before (an orphan's
    retry, a requeue, a replay) is work that was cut: it is never skipped as an overlap or a
    missed occurrence, it waits its turn."""
    prepared: bool = False
    """Stored ahead of its time by a worker and not started since. The first start clears it, so
    a run that ever started (an orphan's retry, a requeue, a replay) is never taken for an
    occurrence that was prepared and then missed."""
    created_at: datetime | None = None
    """When the row was created."""
    updated_at: datetime | None = None
    """When the row last changed."""

    @property
    def idempotency_key(self) -> str:
        """Schedule id + occurrence: the same for every attempt of this occurrence."""
        return f"{self.schedule_id}:{self.occurrence_key}"

    @classmethod
    def from_fields(cls, values: dict[str, Any]) -> ScheduledRun:
        """A run from the value of every field (defaults filled in for those left out), without the
        constructor: for the runs the store makes and reads, whose fields it has just computed or
        read from a row it wrote (1.8 µs a run against the constructor's 4.7)."""
        _known(values)
        if not values.keys() >= _REQUIRED:
            raise TypeError(f"ScheduledRun needs field(s) {', '.join(sorted(_REQUIRED - values.keys()))}")
        made = object.__new__(cls)
        given = made.__dict__
        given.update(_DEFAULTS)
        given.update(values)
        for name, factory in _FACTORIES:
            if name not in values:
                given[name] = factory()  # each run its own (params: a fresh dict)
        return made

    def evolved(self, changes: dict[str, Any], status: RunStatus) -> ScheduledRun:
        """A copy in ``status`` with ``changes`` (field -> value), as ``dataclasses.replace`` makes it but
        without calling the constructor again: every field is taken as it is (the machine's moves)."""
        _known(changes)
        moved = object.__new__(ScheduledRun)
        values = moved.__dict__
        values.update(self.__dict__)
        values.update(changes)
        values["status"] = status
        return moved


#: The names of ScheduledRun's fields.
RUN_FIELDS = frozenset(f.name for f in fields(ScheduledRun))


def _known(values: dict[str, Any]) -> None:
    if not values.keys() <= RUN_FIELDS:
        raise TypeError(f"ScheduledRun has no field(s) {', '.join(sorted(values.keys() - RUN_FIELDS))}")


_DEFAULTS = {f.name: f.default for f in fields(ScheduledRun) if f.default is not MISSING}
_FACTORIES = tuple((f.name, f.default_factory) for f in fields(ScheduledRun) if f.default_factory is not MISSING)
_REQUIRED = frozenset(f.name for f in fields(ScheduledRun) if f.default is MISSING and f.default_factory is MISSING)


def time_occurrence_key(instant: datetime) -> str:
    """The occurrence key of a time-based run: its intended instant in UTC, to the microsecond."""
    if instant.tzinfo is None:
        raise ValueError("occurrence instants must be timezone-aware")
    utc = instant if instant.tzinfo is UTC else instant.astimezone(UTC)
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"  # %Y-%m-%dT%H:%M:%S.%fZ
