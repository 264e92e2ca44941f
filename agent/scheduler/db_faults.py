"""Which database errors are transient: one classification of driver errors, for every retry decision.

A transient fault is one a later attempt of the same transaction can get past without anyone
changing anything: another writer holds a lock, two transactions deadlocked, the server
restarted or dropped the connection, the disk filled up or went read-only for a while. Anything
else (a bad statement, a constraint, a missing table) is permanent and retrying would only hide it.
"""

from __future__ import annotations

import sqlite3
from enum import StrEnum

from sqlalchemy import exc as sa_exc

__all__ = ["Fault", "classify", "is_contention", "is_transient", "sqlstate"]


class Fault(StrEnum):
    """The kind of a transient database fault."""

    #: Another transaction is in the way (a lock, a deadlock, a serialization failure): retry soon.
    CONTENTION = "contention"
    #: The database cannot be reached or written now (connection lost, server down, disk full,
    #: read-only): retry with backoff until it is back; a pooled connection may be dead.
    UNAVAILABLE = "unavailable"


#: SQLite primary result codes of contention: SQLITE_BUSY, SQLITE_LOCKED.
_SQLITE_CONTENTION = frozenset({5, 6})
#: SQLite primary result codes of a database that cannot be written now: SQLITE_NOMEM,
#: SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_PROTOCOL.
_SQLITE_UNAVAILABLE = frozenset({7, 8, 10, 13, 14, 15})
#: Messages of the same faults, for drivers that do not carry the result code.
_SQLITE_CONTENTION_TEXT = ("database is locked", "database table is locked", "database is busy")
_SQLITE_UNAVAILABLE_TEXT = (
    "database or disk is full",
    "readonly database",
    "disk i/o error",
    "unable to open database file",
    "out of memory",
)
#: PostgreSQL SQLSTATEs of contention: serialization_failure, deadlock_detected, lock_not_available.
_PG_CONTENTION = frozenset({"40001", "40P01", "55P03"})
#: PostgreSQL SQLSTATEs (or their class, two characters) of a server that cannot serve now:
#: connection exceptions (08), insufficient resources such as disk full or too many connections (53),
#: admin or crash shutdown and "cannot connect now" (57P01-57P03), system I/O errors (58), and a
#: read-only transaction (25006: a failover to a standby, default_transaction_read_only).
_PG_UNAVAILABLE = frozenset({"08", "53", "57P01", "57P02", "57P03", "58", "25006"})


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a PostgreSQL error (through SQLAlchemy's wrapper), or None."""
    orig = getattr(exc, "orig", None) or exc
    code = getattr(orig, "sqlstate", None)
    return code if isinstance(code, str) else None


def classify(exc: BaseException | None) -> Fault | None:
    """The kind of transient fault ``exc`` is, or None when it is permanent (or not a database error)."""
    if exc is None:
        return None
    if isinstance(exc, sa_exc.TimeoutError):  # no pooled connection came free in time
        return Fault.UNAVAILABLE
    orig = getattr(exc, "orig", None) or exc
    if isinstance(orig, sqlite3.Error):
        return _classify_sqlite(orig)
    code = sqlstate(exc)
    if code is not None:
        if code in _PG_CONTENTION:
            return Fault.CONTENTION
        if code in _PG_UNAVAILABLE or code[:2] in _PG_UNAVAILABLE:
            return Fault.UNAVAILABLE
        return None
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return Fault.UNAVAILABLE
    # A driver error without a SQLSTATE at the DBAPI level is the connection itself failing:
    # refused, reset, closed by the server ("server closed the connection unexpectedly").
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
        return Fault.UNAVAILABLE
    return None


def _classify_sqlite(orig: sqlite3.Error) -> Fault | None:
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        primary = code & 0xFF
        if primary in _SQLITE_CONTENTION:
            return Fault.CONTENTION
        if primary in _SQLITE_UNAVAILABLE:
            return Fault.UNAVAILABLE
    text = str(orig).lower()
    if any(t in text for t in _SQLITE_CONTENTION_TEXT):
        return Fault.CONTENTION
    if any(t in text for t in _SQLITE_UNAVAILABLE_TEXT):
        return Fault.UNAVAILABLE
    return None


def is_transient(exc: BaseException | None) -> bool:
    """Whether retrying the whole transaction later can succeed (tenacity's retry predicate)."""
    return classify(exc) is not None


def is_contention(exc: BaseException | None) -> bool:
    """Whether ``exc`` is a lock, deadlock or serialization failure (retried quickly, for longer)."""
    return classify(exc) is Fault.CONTENTION
