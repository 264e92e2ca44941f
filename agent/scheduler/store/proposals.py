"""Proposals: agent-proposed schedules through their machine, and their activation as schedules."""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, select, update
from sqlalchemy.exc import IntegrityError

from .. import schema
from ..definition import ScheduleDefinition
from ..errors import DuplicateSchedule, StaleState
from ..machines.binding import Transition
from ..machines.proposal import fire_proposal
from ..records import ProposalRecord
from .rows import lookup_key, proposal_from, schedule_row, to_db
from .schedules import ScheduleRows


class ProposalRows(ScheduleRows):
    """Proposals: agent-proposed schedules through their machine, and their activation as schedules."""

    def save_proposal(self, record: ProposalRecord) -> ProposalRecord:
        """Insert or replace a proposal record."""
        p = schema.proposals
        now = self.clock.now()
        row = {
            "id": record.id,
            "name": record.name,
            "status": record.status,
            "proposed_by": record.proposed_by,
            "payload": record.payload,
            "report": record.report,
            "decided_by": record.decided_by,
            "decided_via": record.decided_via,
            "decided_at": to_db(record.decided_at),
            "decision_reason": record.decision_reason,
            "schedule_id": record.schedule_id,
            "expires_at": to_db(record.expires_at),
            "created_at": to_db(record.created_at or now),
            "updated_at": to_db(now),
        }

        def work(conn: Connection) -> None:
            if conn.execute(update(p).where(p.c.id == record.id).values(**row)).rowcount == 0:
                conn.execute(p.insert().values(**row))

        self._tx(work)
        return self.get_proposal(record.id)

    def proposals(self, status: str | None = None, *, proposed_by: str | None = None) -> builtins.list[ProposalRecord]:
        """Stored proposals, oldest first, optionally by status and proposer."""
        if proposed_by is not None:
            lookup_key("proposed_by", proposed_by)
        p = schema.proposals
        stmt = select(p).order_by(p.c.created_at, p.c.id)
        if status is not None:
            stmt = stmt.where(p.c.status == status)
        if proposed_by is not None:
            stmt = stmt.where(p.c.proposed_by == proposed_by)
        return [proposal_from(r) for r in self._tx(lambda c: c.execute(stmt).mappings().all())]

    def transition_proposal(
        self, record: ProposalRecord, trigger: str, *, now: datetime | None = None, **changes: Any
    ) -> ProposalRecord:
        """Fire a proposal trigger (reject, hold, approve, activate, expire), written conditionally on its status.

        ``changes`` set fields of the record (decided_by, decision_reason, report, schedule_id...).
        """
        at = now or self.clock.now()

        def persist(current: ProposalRecord, transition: Transition, fields: dict[str, Any]) -> None:
            self._tx(lambda conn: self._write_proposal(conn, current, transition, fields, at))

        return fire_proposal(record, trigger, now=at, persist=persist, changes=changes)

    def activate_proposal(self, record: ProposalRecord, definition: ScheduleDefinition) -> ScheduleDefinition:
        """Create the proposal's schedule and move the proposal to ``active``, in one transaction."""
        now = self.clock.now()
        stored = definition.with_changes(created_at=now, updated_at=now, proposal_id=record.id)

        def insert(conn: Connection) -> None:
            self._refuse_crossed(conn, stored)
            conn.execute(schema.schedules.insert().values(**schedule_row(stored)))

        def work() -> ScheduleDefinition:
            self._tx(insert)
            self.transition_proposal(record, "activate", now=now, schedule_id=stored.id)
            return stored

        try:
            result = self.atomic(work)
        except IntegrityError as exc:
            raise DuplicateSchedule(stored.name) from exc
        self._changed()
        return result

    def _write_proposal(
        self, conn: Connection, record: ProposalRecord, transition: Transition, fields: dict[str, Any], now: datetime
    ) -> None:
        p = schema.proposals
        values = {"status": transition.dest, "updated_at": to_db(now)}
        values.update({k: to_db(v) if isinstance(v, datetime) else v for k, v in fields.items()})
        stmt = update(p).where(and_(p.c.id == record.id, p.c.status == transition.source)).values(**values)
        if conn.execute(stmt).rowcount != 1:
            actual = conn.execute(select(p.c.status).where(p.c.id == record.id)).scalar()
            raise StaleState(record.id, transition.source, actual, transition.trigger)

    def get_proposal(self, proposal_id: str) -> ProposalRecord:
        """A stored proposal; LookupError when there is none."""
        lookup_key("proposal_id", proposal_id)
        p = schema.proposals
        r = self._tx(lambda c: c.execute(select(p).where(p.c.id == proposal_id)).mappings().first())
        if r is None:
            raise LookupError(f"no proposal with id {proposal_id!r}")
        return proposal_from(r)
