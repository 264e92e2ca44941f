"""Engine state and reports: worker liveness rows and the reconciliation reports of each start."""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, DateTime, bindparam, select, update

from .. import schema
from ..errors import StoreError
from ..records import StoredReport
from .connection import StoreCore
from .rows import from_db, new_id, to_db


class StateRows(StoreCore):
    """Engine state and reports: worker liveness rows and the reconciliation reports of each start."""

    def save_report(
        self,
        *,
        worker_id: str,
        started_at: datetime,
        finished_at: datetime | None,
        report: dict[str, Any],
        dry_run: bool = False,
    ) -> StoredReport:
        """Persist a reconciliation report."""
        stored = StoredReport(
            id=new_id("rec"),
            worker_id=worker_id,
            started_at=started_at,
            finished_at=finished_at,
            dry_run=dry_run,
            report=report,
        )
        row = {
            "id": stored.id,
            "worker_id": worker_id,
            "started_at": to_db(started_at),
            "finished_at": to_db(finished_at),
            "dry_run": dry_run,
            "report": report,
        }
        self._tx(lambda c: c.execute(schema.reconciliation_reports.insert().values(**row)))
        return stored

    def update_report(self, report_id: str, *, finished_at: datetime | None, report: dict[str, Any]) -> None:
        """Bring a stored report up to date: a start writes it with each change it makes, and closes it
        (``finished_at``) at the end, so a start cut short leaves a report that matches the rows."""
        t = schema.reconciliation_reports
        stmt = update(t).where(t.c.id == report_id).values(finished_at=to_db(finished_at), report=report)
        if self._tx(lambda c: c.execute(stmt).rowcount) != 1:
            raise StoreError(f"no reconciliation report {report_id}")

    def reports(self, *, limit: int = 10) -> builtins.list[StoredReport]:
        """The latest reconciliation reports, newest first."""
        t = schema.reconciliation_reports
        stmt = select(t).order_by(t.c.started_at.desc(), t.c.id).limit(limit)
        rows = self._tx(lambda c: c.execute(stmt).mappings().all())
        return [
            StoredReport(
                id=r["id"],
                worker_id=r["worker_id"],
                started_at=from_db(r["started_at"]) or r["started_at"],
                finished_at=from_db(r["finished_at"]),
                dry_run=r["dry_run"],
                report=r["report"],
            )
            for r in rows
        ]

    def put_state(self, key: str, value: dict[str, Any]) -> None:
        """Set an ``engine_state`` entry (worker heartbeats, clean-shutdown markers)."""
        e = schema.engine_state
        now = to_db(self.clock.now())
        stmt = self._prepared(
            "put_state",
            lambda: (
                update(e)
                .where(e.c.key == bindparam("k"))
                .values(value=bindparam("v", type_=e.c.value.type), updated_at=bindparam("t", type_=DateTime))
            ),
        )

        def work(conn: Connection) -> None:
            if conn.execute(stmt, {"k": key, "v": value, "t": now}).rowcount == 0:
                conn.execute(e.insert().values(key=key, value=value, updated_at=now))

        self._tx(work)

    def get_state(self, key: str) -> dict[str, Any] | None:
        """An ``engine_state`` entry, or None."""
        e = schema.engine_state
        result: dict[str, Any] | None = self._tx(lambda c: c.execute(select(e.c.value).where(e.c.key == key)).scalar())
        return result
