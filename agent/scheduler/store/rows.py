"""Row mapping: value objects to rows and back, in one place; naive UTC in the database."""

from __future__ import annotations

import builtins
import json
import os
from collections.abc import Callable
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from .. import limits
from ..definition import ScheduleDefinition
from ..enums import AlertStatus, CallerKind, EventStatus, RunStatus
from ..records import Alert, DeadLetter, InboxEvent, ProposalRecord
from ..scheduled_run import ScheduledRun

#: Duration fields of ScheduleDefinition and the columns that hold them in seconds.
SPAN_COLUMNS = {
    "retry_backoff": "retry_backoff_s",
    "timeout": "timeout_s",
    "grace": "grace_s",
    "shutdown_timeout": "shutdown_timeout_s",
    "breaker_cooldown": "breaker_cooldown_s",
}


def to_db(instant: datetime | None) -> datetime | None:
    # Naive UTC in the database: SQLite would otherwise keep local wall time, Postgres convert.
    if instant is None:
        return None
    if instant.tzinfo is UTC:  # the usual case: no conversion to make
        return instant.replace(tzinfo=None)
    return instant.astimezone(UTC).replace(tzinfo=None)


def from_db(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=UTC)


def db_value(value: Any) -> Any:
    """A field's value as its column holds it: instants naive UTC, enums their value."""
    if isinstance(value, datetime):
        return to_db(value)
    if isinstance(value, StrEnum):
        return value.value
    return value


def all_same(values: builtins.list[Any]) -> bool:
    """Whether a column's values (one per row) would all be stored the same: equal and of one type
    (1 is not True, nor 1.0); containers (JSON) compared as serialized, key order included."""
    first = values[0]
    if values.count(first) != len(values):
        return False
    kind = type(first)
    if kind in (str, datetime) or first is None:
        return True
    if len({type(v) for v in values}) != 1:
        return False
    if kind in (dict, list):
        return len({json.dumps(v, default=repr) for v in values}) == 1
    return True


def lookup_key(argument: str, value: Any) -> str:
    """A name or id to look up, refused (InvalidSchedule naming ``argument``) before the database when
    no row can hold it: not a string, longer than a name, or with control characters or lone surrogates."""
    text: str = limits.check_text(argument, value, limits.NAME_CHARS, single_line=True)
    return text


def new_id(prefix: str) -> str:
    # 128 random bits in hex, as uuid4().hex has them (less six fixed bits), at a third of its cost:
    # every run gets one.
    return f"{prefix}_{os.urandom(16).hex()}"


def schedule_row(d: ScheduleDefinition) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for f in fields(d):
        value = getattr(d, f.name)
        if f.name in SPAN_COLUMNS:
            row[SPAN_COLUMNS[f.name]] = None if value is None else value.total_seconds()
        elif isinstance(value, datetime):
            row[f.name] = to_db(value)
        elif isinstance(value, StrEnum):
            row[f.name] = value.value
        else:
            row[f.name] = value
    return row


def span_from(seconds: float | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=seconds)


def same(value: Any) -> Any:
    return value


def field_readers(cls: Any, columns: dict[str, str]) -> builtins.list[tuple[str, str, Callable[[Any], Any]]]:
    """(field, column, converter) for every field of ``cls``: the mapping of a row, computed once."""
    out: builtins.list[tuple[str, str, Callable[[Any], Any]]] = []
    for f in fields(cls):
        if f.name in SPAN_COLUMNS and cls is ScheduleDefinition:
            out.append((f.name, columns[f.name], span_from))
        elif "datetime" in str(f.type):
            out.append((f.name, f.name, from_db))
        else:
            out.append((f.name, f.name, same))
    return out


SCHEDULE_READERS = field_readers(ScheduleDefinition, SPAN_COLUMNS)


RUN_READERS = field_readers(ScheduledRun, {})


def schedule_from(row: Any) -> ScheduleDefinition:
    # Stored rows were validated when written: rebuild without parsing the expression again.
    return ScheduleDefinition.from_trusted(**{name: conv(row[col]) for name, col, conv in SCHEDULE_READERS})


_RUN_INSTANTS = tuple(name for name, _, conv in RUN_READERS if conv is from_db)
_RUN_STATUSES: dict[str, RunStatus] = {s.value: s for s in RunStatus}


def run_row(run: ScheduledRun) -> dict[str, Any]:
    row = dict(vars(run))  # every field, as it is: only the instants and the status differ in the row
    for name in _RUN_INSTANTS:
        if row[name] is not None:
            row[name] = to_db(row[name])
    row["status"] = run.status.value
    return row


def run_from(row: Any) -> ScheduledRun:
    kwargs = {name: conv(row[col]) for name, col, conv in RUN_READERS}
    status = kwargs["status"]
    kwargs["status"] = _RUN_STATUSES.get(status) or RunStatus(status)
    return ScheduledRun.from_fields(kwargs)


PROPOSAL_READERS = field_readers(ProposalRecord, {})


ALERT_READERS = field_readers(Alert, {})


LETTER_READERS = field_readers(DeadLetter, {})


def proposal_from(row: Any) -> ProposalRecord:
    return ProposalRecord(**{name: conv(row[col]) for name, col, conv in PROPOSAL_READERS})


def alert_from(row: Any) -> Alert:
    kwargs = {name: conv(row[col]) for name, col, conv in ALERT_READERS}
    kwargs["status"] = AlertStatus(kwargs["status"])
    return Alert(**kwargs)


def dead_letter_from(row: Any) -> DeadLetter:
    return DeadLetter(**{name: conv(row[col]) for name, col, conv in LETTER_READERS})


def compact_json(value: Any) -> str:
    """``value`` as the compact JSON text the inbox stores (the text its size was checked on)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def event_row(event: InboxEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "name": event.name,
        "payload": compact_json(event.payload),
        "emitted_at": to_db(event.emitted_at),
        "emitted_by": event.emitted_by,
        "emitted_kind": event.emitted_kind.value,
        "status": event.status.value,
        "consumed_at": to_db(event.consumed_at),
        "consumed_by": event.consumed_by,
        "runs": None if event.status is EventStatus.PENDING else len(event.run_ids),
        "run_ids": None if event.status is EventStatus.PENDING else compact_json(list(event.run_ids)),
        "reason": event.reason,
    }


def event_from(row: Any) -> InboxEvent:
    run_ids = json.loads(row["run_ids"]) if row["run_ids"] else []
    return InboxEvent(
        id=row["id"],
        name=row["name"],
        payload=json.loads(row["payload"]),
        emitted_at=from_db(row["emitted_at"]) or row["emitted_at"],
        emitted_by=row["emitted_by"],
        emitted_kind=CallerKind(row["emitted_kind"]),
        status=EventStatus(row["status"]),
        consumed_at=from_db(row["consumed_at"]),
        consumed_by=row["consumed_by"],
        run_ids=tuple(str(r) for r in run_ids),
        reason=row["reason"],
    )
