"""Run telemetry: finished runs exported to ``actp_scheduled_runs`` in a PostgreSQL database (Supabase).

The export reads the store from a cursor kept in ``meta`` (so a backlog survives restarts),
upserts batches by run id (so a batch sent twice changes nothing), and advances the cursor only
after the batch committed. It runs beside the engine: a failing export never blocks or fails a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Column, DateTime, Engine, Float, Integer, MetaData, String, Table, Text, create_engine
from sqlalchemy.dialects.postgresql import insert
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from ..scheduled_run import ScheduledRun
from ..settings import Settings, load_settings
from ..store import ScheduleStore, normalize_url

log = logging.getLogger(__name__)

#: The dashboards' table.
TABLE_NAME = "actp_scheduled_runs"
#: Where the export resumes, in the store's ``meta``: ``<updated_at ISO>|<run_id>``.
CURSOR_KEY = "telemetry_cursor"
#: Runs per upsert.
BATCH_SIZE = 500
#: Seconds between export passes.
EXPORT_INTERVAL_SECONDS = 15.0

_metadata = MetaData()
runs_table = Table(
    TABLE_NAME,
    _metadata,
    Column("run_id", String(64), primary_key=True),
    Column("schedule_id", String(64), nullable=False),
    Column("schedule_name", String(128), nullable=False),
    Column("status", String(32), nullable=False),
    Column("intended_run_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("completed_at", DateTime(timezone=True)),
    Column("duration_s", Float),
    Column("attempt", Integer, nullable=False),
    Column("outcome", Text),
    Column("error", Text),
    Column("worker_id", String(128)),
    Column("exported_at", DateTime(timezone=True), nullable=False),
)


def _row(run: ScheduledRun, now: datetime) -> dict[str, Any]:
    duration = (run.completed_at - run.started_at).total_seconds() if run.started_at and run.completed_at else None
    return {
        "run_id": run.run_id,
        "schedule_id": run.schedule_id,
        "schedule_name": run.schedule_name,
        "status": run.status.value,
        "intended_run_at": run.intended_run_at,
        "started_at": run.started_at,
        "completed_at": run.completed_at,
        "duration_s": duration,
        "attempt": run.attempt,
        "outcome": run.outcome,
        "error": run.error,
        "worker_id": run.owner,
        "exported_at": now,
    }


class TelemetryExporter:
    """Exports finished runs from ``store`` to the database at ``target_url``."""

    def __init__(self, store: ScheduleStore, target_url: str, *, batch_size: int = BATCH_SIZE) -> None:
        self.store = store
        self.batch_size = batch_size
        self.target: Engine = create_engine(normalize_url(target_url), pool_pre_ping=True, pool_size=1)
        self._table_ready = False

    @classmethod
    def from_env(cls, store: ScheduleStore, environ: Mapping[str, str] | None = None) -> TelemetryExporter | None:
        """:meth:`from_settings` of ``SUPABASE_DB_URL`` in ``environ`` (default: the process environment)."""
        return cls.from_settings(store, load_settings(environ, only=("SUPABASE_DB_URL",)))

    @classmethod
    def from_settings(cls, store: ScheduleStore, settings: Settings) -> TelemetryExporter | None:
        """The exporter for ``SUPABASE_DB_URL``; None, with one log line, when it is not set."""
        url = settings.supabase_db_url
        if not url:
            log.info("run telemetry export off: set SUPABASE_DB_URL to export finished runs to %s", TABLE_NAME)
            return None
        return cls(store, url)

    def _cursor(self) -> tuple[datetime, str] | None:
        raw = self.store.meta_get(CURSOR_KEY)
        if not raw:
            return None
        at, _, run_id = raw.partition("|")
        return datetime.fromisoformat(at), run_id

    def export_batch(self) -> int:
        """Export the next batch (blocking); returns how many runs it carried. Raises when the target fails."""
        runs = self.store.finished_runs_after(self._cursor(), limit=self.batch_size)
        if not runs:
            return 0
        now = self.store.clock.now()
        rows = [_row(r, now) for r in runs]
        stmt = insert(runs_table)
        upsert = stmt.on_conflict_do_update(
            index_elements=[runs_table.c.run_id],
            set_={c.name: stmt.excluded[c.name] for c in runs_table.c if c.name != "run_id"},
        )
        with self.target.begin() as conn:
            if not self._table_ready:
                _metadata.create_all(conn, checkfirst=True)
                self._table_ready = True
            conn.execute(upsert, rows)
        last = runs[-1]
        assert last.updated_at is not None
        self.store.meta_set(CURSOR_KEY, f"{last.updated_at.isoformat()}|{last.run_id}")
        return len(runs)

    def export_backlog(self) -> int:
        """Export batches until none is left (blocking); returns how many runs went out."""
        total = 0
        while (n := self.export_batch()) > 0:
            total += n
        return total

    async def run(self, stopping: asyncio.Event, *, interval: float = EXPORT_INTERVAL_SECONDS) -> None:
        """Export now and then until ``stopping`` is set; failures are logged and retried, never raised."""
        while not stopping.is_set():
            try:
                async for attempt in AsyncRetrying(
                    retry=retry_if_exception_type(Exception),
                    stop=stop_after_attempt(3),
                    wait=wait_exponential_jitter(multiplier=0.5, max=5.0, jitter=0.5),
                    reraise=True,
                ):
                    with attempt:
                        sent = await asyncio.to_thread(self.export_backlog)
                if sent:
                    log.info("telemetry: %d finished run(s) exported to %s", sent, TABLE_NAME)
            except Exception as exc:
                log.warning("telemetry export failed, backlog kept for the next pass: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=interval)

    def close(self) -> None:
        self.target.dispose()
