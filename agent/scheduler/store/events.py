"""The event inbox: events written by any door, each consumed by exactly one worker with a conditional UPDATE."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import Connection, and_, bindparam, delete, func, select, update

from .. import schema
from ..enums import EventStatus
from ..errors import EventRefused
from ..inbox import check_event
from ..records import InboxEvent
from .connection import StoreCore
from .rows import compact_json, event_from, event_row, to_db
from .schedules import turn_key

#: PostgreSQL advisory lock namespace of an emitter's quota lock: "ACTE".
EMITTER_LOCK_NAMESPACE = 0x41435445


class EventRows(StoreCore):
    """The event inbox: events written by any door, each consumed by exactly one worker with a conditional UPDATE."""

    def add_event(self, event: InboxEvent, *, hourly_quota: int | None = None) -> InboxEvent:
        """Write a pending event (``inbox.new_event`` builds one); the engines are told, as for a new run.

        The name and payload are checked again here (InvalidSchedule naming the field): nothing
        reaches the inbox that a worker could not turn into runs. With ``hourly_quota``, an emitter
        that already has that many events in the hour before this one's ``emitted_at`` gets
        EventRefused and nothing is written; the count and the write are one transaction under the
        emitter's lock (SQLite: the write lock; PostgreSQL: an advisory lock on the emitter), so
        simultaneous calls cannot pass the quota together.
        """
        check_event(event.name, event.payload)
        if event.status is not EventStatus.PENDING:
            raise ValueError(f"an event enters the inbox pending, got {event.status.value}")
        row = event_row(event)
        # An event handed in again (a tick whose commit was in doubt, written twice) is written once.
        stmt = self._insert(schema.event_inbox).on_conflict_do_nothing()

        def work(conn: Connection) -> None:
            if hourly_quota is not None:
                if self.dialect == "postgresql":
                    key = {"ns": EMITTER_LOCK_NAMESPACE, "key": turn_key(event.emitted_by)}
                    conn.execute(select(func.pg_advisory_xact_lock(bindparam("ns"), bindparam("key"))), key).all()
                sent = self._count_by(conn, event.emitted_by, since=event.emitted_at - timedelta(hours=1))
                if sent >= hourly_quota:
                    raise EventRefused(
                        f"{event.emitted_by} emitted {sent} events in the last hour; at most {hourly_quota} "
                        "an hour are accepted from it"
                    )
            conn.execute(stmt, row)

        self._tx(work)
        self._changed()
        return event

    def pending_events(self, *, limit: int) -> builtins.list[InboxEvent]:
        """Up to ``limit`` pending events, oldest first. On PostgreSQL they stay locked until the transaction
        ends and events another transaction holds are passed over, so two workers never wait on each other's."""
        e = schema.event_inbox
        stmt = (
            select(e)
            .where(e.c.status == EventStatus.PENDING.value)
            .order_by(e.c.emitted_at, e.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        rows = self._tx(lambda c: c.execute(stmt).mappings().all())
        return [event_from(r) for r in rows]

    def consume_event(self, event_id: str, *, worker_id: str, now: datetime) -> bool:
        """Take a pending event for ``worker_id``: pending -> consumed, written only if it is still pending.

        True for the one caller that moved it; every other (another worker, a second attempt) gets False.
        """
        e = schema.event_inbox
        stmt = (
            update(e)
            .where(and_(e.c.id == event_id, e.c.status == EventStatus.PENDING.value))
            .values(status=EventStatus.CONSUMED.value, consumed_at=to_db(now), consumed_by=worker_id, runs=0)
        )
        return bool(self._tx(lambda c: c.execute(stmt).rowcount) == 1)

    def record_event_runs(self, event_id: str, *, run_ids: Sequence[str], reason: str | None) -> None:
        """Record the runs a consumed event created (in the consuming transaction) and, if fewer than hoped, why."""
        e = schema.event_inbox
        stmt = (
            update(e)
            .where(and_(e.c.id == event_id, e.c.status == EventStatus.CONSUMED.value))
            .values(runs=len(run_ids), run_ids=compact_json(list(run_ids)), reason=reason)
        )
        self._tx(lambda c: c.execute(stmt))

    def events(self, status: EventStatus | str | None = None, *, limit: int = 20) -> builtins.list[InboxEvent]:
        """The latest events, newest first (emission time), optionally of one status."""
        e = schema.event_inbox
        stmt = select(e).order_by(e.c.emitted_at.desc(), e.c.id.desc()).limit(limit)
        if status is not None:
            stmt = stmt.where(e.c.status == EventStatus(status).value)
        rows = self._tx(lambda c: c.execute(stmt).mappings().all())
        return [event_from(r) for r in rows]

    @staticmethod
    def _count_by(conn: Connection, emitted_by: str, *, since: datetime) -> int:
        e = schema.event_inbox
        stmt = (
            select(func.count())
            .select_from(e)
            .where(and_(e.c.emitted_by == emitted_by, e.c.emitted_at >= to_db(since)))
        )
        found: int = conn.execute(stmt).scalar() or 0
        return found

    def purge_events(self, *, consumed_before: datetime) -> int:
        """Delete the events consumed before ``consumed_before``; pending ones are kept. Returns how many went."""
        e = schema.event_inbox
        stmt = delete(e).where(and_(e.c.status == EventStatus.CONSUMED.value, e.c.consumed_at < to_db(consumed_before)))
        gone: int = self._tx(lambda c: c.execute(stmt).rowcount)
        if gone:
            self._changed()
        return gone

    def count_events(self, status: EventStatus | str | None = None) -> int:
        """How many events the inbox holds, optionally of one status."""
        e = schema.event_inbox
        stmt = select(func.count()).select_from(e)
        if status is not None:
            stmt = stmt.where(e.c.status == EventStatus(status).value)
        found: int = self._tx(lambda c: c.execute(stmt).scalar()) or 0
        return found
