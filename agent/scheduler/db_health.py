"""Riding out a database outage: the backoff between attempts and one log line per change of state.

The engine's loop hands every tick that fails with DatabaseUnavailable to ``DatabaseHealth``:
it says what to log when the database is lost, every ``report_every`` while it stays away, and
when it is back (with how long it was down, for the one alert queued on recovery), and gives the
backoff between attempts. It holds no connection and reads no clock: the caller passes ``now``.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta

from tenacity import wait_exponential_jitter

from .errors import DatabaseReplaced
from .store import EngineStore, ScheduleStore

__all__ = [
    "OUTAGE_BACKOFF_MAX_SECONDS",
    "OUTAGE_REPORT_EVERY",
    "DatabaseHealth",
    "Outage",
    "outage_wait",
    "report_replaced_database",
]

log = logging.getLogger(__name__)

#: The first retry after a failed tick waits about this long (seconds, before jitter).
OUTAGE_BACKOFF_FIRST_SECONDS = 0.1
#: Retries while the database is away are never further apart than this (seconds): a database
#: that comes back is used again within this time.
OUTAGE_BACKOFF_MAX_SECONDS = 5.0
#: Random extra wait added to each retry (seconds), so that several workers do not retry in step.
OUTAGE_BACKOFF_JITTER_SECONDS = 0.5
#: While the database stays away, one line says so this often (not one per attempt).
OUTAGE_REPORT_EVERY = timedelta(minutes=1)


def outage_wait() -> wait_exponential_jitter:
    """tenacity's wait between attempts during an outage: jittered exponential, capped, no end."""
    return wait_exponential_jitter(
        multiplier=OUTAGE_BACKOFF_FIRST_SECONDS,
        max=OUTAGE_BACKOFF_MAX_SECONDS,
        jitter=OUTAGE_BACKOFF_JITTER_SECONDS,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Outage:
    """One period during which the database could not be used."""

    since: datetime
    until: datetime
    attempts: int
    """Failed attempts, the first one included."""
    error: str
    """The last error seen."""

    @property
    def seconds(self) -> float:
        """How long the database was away."""
        return (self.until - self.since).total_seconds()

    def text(self, worker_id: str) -> str:
        """The alert's text."""
        return (
            f"Worker {worker_id}: the database was unavailable for {self.seconds:.1f} s "
            f"(since {self.since.isoformat(timespec='seconds')}, {self.attempts} failed attempt(s); "
            f"last error: {self.error}). It is back; the worker carried on."
        )

    def payload(self) -> dict[str, object]:
        """The alert's payload."""
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "seconds": round(self.seconds, 3),
            "attempts": self.attempts,
            "error": self.error,
        }


class DatabaseHealth:
    """Up or down, and since when: the state behind the outage log lines and the recovery alert."""

    def __init__(self, *, report_every: timedelta = OUTAGE_REPORT_EVERY) -> None:
        self.report_every = report_every
        self.since: datetime | None = None
        """When the current outage began; None while the database is up."""
        self.attempts = 0
        self.error = ""
        self._reported_at: datetime | None = None
        self.unreported: Outage | None = None
        """An outage whose alert could not be queued yet (the database went away again first)."""

    @property
    def down(self) -> bool:
        """Whether the last attempt failed."""
        return self.since is not None

    def failed(self, now: datetime, exc: BaseException) -> str | None:
        """A tick failed with ``exc``; returns the line to log now, or None (one per state change)."""
        self.attempts += 1
        self.error = str(exc)
        if self.since is None:
            self.since = self._reported_at = now
            return f"database unavailable, dispatching paused; retrying with backoff: {exc}"
        assert self._reported_at is not None
        if now - self._reported_at >= self.report_every:
            self._reported_at = now
            down = (now - self.since).total_seconds()
            return f"database still unavailable after {down:.0f} s ({self.attempts} attempts): {exc}"
        return None

    def succeeded(self, now: datetime) -> Outage | None:
        """A tick went through; returns the outage that just ended, if there was one."""
        if self.since is None:
            return None
        outage = Outage(since=self.since, until=now, attempts=self.attempts, error=self.error)
        self.since = self._reported_at = None
        self.attempts = 0
        self.error = ""
        self.unreported = outage
        return outage

    def alert_queued(self) -> None:
        """The recovery alert of the last outage is in the outbox."""
        self.unreported = None


def _is_a_schedule_store(path: str) -> bool:
    """Whether the file at ``path`` is a schedule store already (read only: nothing is created in it)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)) as conn:
            return conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() is not None
    except sqlite3.Error:
        return False


def report_replaced_database(store: EngineStore, worker_id: str, exc: DatabaseReplaced) -> bool:
    """Best effort: queue an alert about a deleted or replaced SQLite file in the file now at its path.

    The lost file cannot carry it (nobody will read it again); a file that exists at the path now
    is the one an operator will look at. Nothing is created where there is no file. Returns
    whether the alert was queued.
    """
    if store.path is None or not _is_a_schedule_store(store.path):
        return False
    try:
        with ScheduleStore(store.path) as current:
            current.add_alert(
                "database_replaced",
                f"Worker {worker_id} stopped: {exc}. Runs it had in flight were not recorded.",
                {"path": store.path, "detail": exc.detail},
            )
    except Exception as err:  # the file at the path may be anything: this is only a courtesy
        log.info("could not queue the database_replaced alert in %s: %s", store.path, err)
        return False
    return True
