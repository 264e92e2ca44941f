"""Queries the jobs need that ScheduleStore does not offer yet: windowed run counts, pruning, optimizing.

Each one runs inside ``store.atomic`` (one transaction, retried whole while SQLite is locked) on the
store's own tables through SQLAlchemy Core. They belong in ScheduleStore as ``run_counts``,
``skip_reasons``, ``recent_errors``, ``prune_runs`` and ``optimize``; until then they live here,
together, so that moving them is one edit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, delete, func, select

from agent.scheduler import schema
from agent.scheduler.enums import RunStatus
from agent.scheduler.store import ScheduleStore

#: Runs deleted per transaction when pruning, so the engine's writes are never held up for long.
PRUNE_BATCH = 5000
#: Statuses a run never leaves on its own; dead-lettered runs stay (they are replayable).
PRUNABLE = (RunStatus.SUCCEEDED, RunStatus.SKIPPED, RunStatus.CANCELLED)


def _db(instant: datetime) -> datetime:
    # The store keeps naive UTC.
    return instant.astimezone(UTC).replace(tzinfo=None)


def _connection(store: ScheduleStore) -> Connection:
    # Inside store.atomic, the thread's connection is the one holding the transaction.
    conn: Connection = store.db.executable
    return conn


@dataclass(frozen=True, slots=True)
class RunCount:
    """How many runs of one schedule ended (or stand) in one status."""

    schedule: str
    status: RunStatus
    count: int


def run_counts(store: ScheduleStore, since: datetime, until: datetime) -> list[RunCount]:
    """Runs intended in ``[since, until)``, counted by schedule name and status."""
    r = schema.scheduled_runs
    stmt = (
        select(r.c.schedule_name, r.c.status, func.count())
        .where(and_(r.c.intended_run_at >= _db(since), r.c.intended_run_at < _db(until)))
        .group_by(r.c.schedule_name, r.c.status)
        .order_by(r.c.schedule_name, r.c.status)
    )
    rows = store.atomic(lambda: _connection(store).execute(stmt).all())
    return [RunCount(name, RunStatus(status), int(n)) for name, status, n in rows]


def skip_reasons(store: ScheduleStore, since: datetime, until: datetime, *, limit: int) -> list[tuple[str, int]]:
    """The most frequent reasons of runs skipped in ``[since, until)``, most frequent first."""
    r = schema.scheduled_runs
    n = func.count().label("n")
    stmt = (
        select(r.c.reason, n)
        .where(
            and_(
                r.c.status == RunStatus.SKIPPED.value,
                r.c.intended_run_at >= _db(since),
                r.c.intended_run_at < _db(until),
            )
        )
        .group_by(r.c.reason)
        .order_by(n.desc(), r.c.reason)
        .limit(limit)
    )
    rows = store.atomic(lambda: _connection(store).execute(stmt).all())
    return [(reason or "(no reason)", int(count)) for reason, count in rows]


def recent_errors(
    store: ScheduleStore, since: datetime, until: datetime, *, limit: int
) -> list[tuple[str, datetime, str]]:
    """(schedule, intended time, error) of the latest failed or dead-lettered runs in ``[since, until)``."""
    r = schema.scheduled_runs
    stmt = (
        select(r.c.schedule_name, r.c.intended_run_at, r.c.error)
        .where(
            and_(
                r.c.status.in_([RunStatus.FAILED.value, RunStatus.DEAD_LETTERED.value]),
                r.c.intended_run_at >= _db(since),
                r.c.intended_run_at < _db(until),
            )
        )
        .order_by(r.c.intended_run_at.desc())
        .limit(limit)
    )
    rows = store.atomic(lambda: _connection(store).execute(stmt).all())
    return [(name, at.replace(tzinfo=UTC), error or "(no error text)") for name, at, error in rows]


def prune_runs(
    store: ScheduleStore, before: datetime, *, statuses: Iterable[RunStatus] = PRUNABLE, batch: int = PRUNE_BATCH
) -> int:
    """Delete runs in ``statuses`` last changed before ``before``; returns how many.

    The newest run of every schedule is kept whatever its age, so "last outcome" never goes blank.
    Works in batches of ``batch`` runs, one transaction each.
    """
    r = schema.scheduled_runs
    newer = r.alias("newer")
    has_newer = (
        select(newer.c.run_id)
        .where(and_(newer.c.schedule_id == r.c.schedule_id, newer.c.intended_run_at > r.c.intended_run_at))
        .exists()
    )
    chosen = (
        select(r.c.run_id)
        .where(
            and_(
                r.c.status.in_([RunStatus(s).value for s in statuses]),
                r.c.updated_at < _db(before),
                has_newer,
            )
        )
        .limit(batch)
    )

    def one_batch() -> int:
        conn = _connection(store)
        ids = list(conn.execute(chosen).scalars())
        if ids:
            conn.execute(delete(r).where(r.c.run_id.in_(ids)))
        return len(ids)

    total = 0
    while True:
        deleted: int = store.atomic(one_batch)
        total += deleted
        if deleted < batch:
            return total


def optimize(store: ScheduleStore) -> str:
    """``PRAGMA optimize`` on SQLite (outside any transaction); what was done, in words."""
    if store.dialect != "sqlite":
        return f"no optimize step on {store.dialect} (its autovacuum keeps statistics current)"
    engine: Any = store.db.engine
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA optimize")
        conn.commit()
    return "PRAGMA optimize done"
