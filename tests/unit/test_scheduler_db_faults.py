"""Database faults: which driver errors are transient, and the outage state behind the log lines and the alert."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import errors as pg
from sqlalchemy import exc as sa

from agent.scheduler.clock import FakeClock
from agent.scheduler.db_faults import Fault, classify, is_contention, is_transient
from agent.scheduler.db_health import OUTAGE_BACKOFF_MAX_SECONDS, DatabaseHealth, outage_wait
from agent.scheduler.errors import DatabaseUnavailable, OperatorActionRequired, SchemaTooNew, StoreError, WorkerIdInUse


def sqlite_error(message: str, code: int | None = None) -> sqlite3.Error:
    error = sqlite3.OperationalError(message)
    if code is not None:
        error.sqlite_errorcode = code  # type: ignore[attr-defined]
    return error


def wrapped(orig: BaseException, kind: type[sa.DBAPIError] = sa.OperationalError) -> sa.DBAPIError:
    """The error as SQLAlchemy raises it from the driver's."""
    return kind("UPDATE schedules SET ...", {}, orig)


@pytest.mark.parametrize(
    ("error", "fault"),
    [
        # SQLite, by result code (extended codes too) and by message
        (wrapped(sqlite_error("database is locked", 5)), Fault.CONTENTION),
        (wrapped(sqlite_error("database is locked", 5 | (3 << 8))), Fault.CONTENTION),  # SQLITE_BUSY_SNAPSHOT
        (wrapped(sqlite_error("database table is locked")), Fault.CONTENTION),
        (wrapped(sqlite_error("database or disk is full", 13)), Fault.UNAVAILABLE),
        (wrapped(sqlite_error("database or disk is full")), Fault.UNAVAILABLE),
        (wrapped(sqlite_error("attempt to write a readonly database", 8)), Fault.UNAVAILABLE),
        (wrapped(sqlite_error("disk I/O error", 10 | (4 << 8))), Fault.UNAVAILABLE),
        (wrapped(sqlite_error("unable to open database file", 14)), Fault.UNAVAILABLE),
        (wrapped(sqlite_error("no such table: schedules", 1)), None),
        (wrapped(sqlite3.IntegrityError("UNIQUE constraint failed"), sa.IntegrityError), None),
        # PostgreSQL, by SQLSTATE
        (wrapped(pg.DeadlockDetected("deadlock detected")), Fault.CONTENTION),
        (wrapped(pg.SerializationFailure("could not serialize access")), Fault.CONTENTION),
        (wrapped(pg.LockNotAvailable("could not obtain lock")), Fault.CONTENTION),
        (wrapped(pg.AdminShutdown("terminating connection due to administrator command")), Fault.UNAVAILABLE),
        (wrapped(pg.CannotConnectNow("the database system is starting up")), Fault.UNAVAILABLE),
        (wrapped(pg.DiskFull("could not extend file")), Fault.UNAVAILABLE),
        (wrapped(pg.TooManyConnections("too many clients")), Fault.UNAVAILABLE),
        (wrapped(pg.ReadOnlySqlTransaction("cannot execute UPDATE in a read-only transaction")), Fault.UNAVAILABLE),
        (wrapped(pg.ConnectionFailure("connection failure")), Fault.UNAVAILABLE),
        (wrapped(psycopg.OperationalError("connection refused")), Fault.UNAVAILABLE),  # no SQLSTATE: the socket
        (wrapped(psycopg.InterfaceError("the connection is closed"), sa.InterfaceError), Fault.UNAVAILABLE),
        (wrapped(pg.UndefinedTable("relation does not exist"), sa.ProgrammingError), None),
        (wrapped(pg.UniqueViolation("duplicate key"), sa.IntegrityError), None),
        (sa.TimeoutError("QueuePool limit reached"), Fault.UNAVAILABLE),
        (ValueError("not a database error"), None),
        (None, None),
    ],
)
def test_each_driver_error_is_classified_once(error: BaseException | None, fault: Fault | None) -> None:
    assert classify(error) is fault
    assert is_transient(error) is (fault is not None)
    assert is_contention(error) is (fault is Fault.CONTENTION)


def test_a_deadlock_is_a_transient_error_that_tenacity_retries() -> None:
    deadlock = wrapped(pg.DeadlockDetected("deadlock detected"))
    assert is_transient(deadlock) and is_contention(deadlock)


def test_errors_an_operator_must_fix_are_told_apart_from_an_outage() -> None:
    assert issubclass(DatabaseUnavailable, StoreError) and not issubclass(DatabaseUnavailable, OperatorActionRequired)
    assert issubclass(SchemaTooNew, OperatorActionRequired) and issubclass(SchemaTooNew, StoreError)
    assert issubclass(WorkerIdInUse, OperatorActionRequired)


T0 = datetime(2027, 3, 13, 12, tzinfo=UTC)


def test_an_outage_logs_once_when_lost_once_a_minute_while_away_and_reports_its_length_when_back() -> None:
    clock = FakeClock(T0)
    health = DatabaseHealth(report_every=timedelta(minutes=1))
    assert health.succeeded(clock.now()) is None and not health.down  # up, nothing to say
    lines = []
    for _ in range(40):  # 40 failed attempts, 5 s apart: 3 min 15 s
        lines.append(health.failed(clock.now(), DatabaseUnavailable("connection refused")))
        clock.advance(timedelta(seconds=5))
    said = [line for line in lines if line is not None]
    assert said[0].startswith("database unavailable, dispatching paused") and health.down
    assert [line.split(" (")[0] for line in said[1:]] == [
        "database still unavailable after 60 s",
        "database still unavailable after 120 s",
        "database still unavailable after 180 s",
    ]
    outage = health.succeeded(clock.now())
    assert outage is not None and not health.down
    assert outage.since == T0 and outage.seconds == 200 and outage.attempts == 40
    assert outage.error == "connection refused"
    assert "unavailable for 200.0 s" in outage.text("w1") and outage.payload()["seconds"] == 200
    assert health.unreported == outage  # until the alert is in the outbox
    health.alert_queued()
    assert health.unreported is None
    assert health.succeeded(clock.now()) is None  # one recovery, one report
    assert health.failed(clock.now(), DatabaseUnavailable("again")) is not None  # a new outage is news


def test_the_backoff_grows_is_jittered_and_capped_without_end() -> None:
    wait = outage_wait()

    class State:
        def __init__(self, n: int) -> None:
            self.attempt_number = n

    waits = [wait(State(n)) for n in range(1, 40)]  # type: ignore[arg-type]
    assert 0.1 <= waits[0] < 1.0
    assert all(w <= OUTAGE_BACKOFF_MAX_SECONDS for w in waits)
    assert waits[-1] == OUTAGE_BACKOFF_MAX_SECONDS  # still retrying after 39 attempts, at the cap
