"""ScheduleStore: schedules, runs and their records in SQLite or PostgreSQL, through dataset.

Every write is one transaction (``with db:``) retried whole when SQLite reports a lock; every
state change is a conditional UPDATE checked by rowcount, never a read-modify-write. Rows are
mapped to value objects here and nowhere else.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import dataset
from sqlalchemy import Connection, DateTime, Table, and_, bindparam, event, func, or_, select, tuple_, update
from sqlalchemy import text as sql_text
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError, SQLAlchemyError
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential_jitter

from . import limits, schema
from .clock import Clock, SystemClock
from .db_faults import Fault, classify, is_transient
from .definition import TIME_BASED, ScheduleDefinition
from .enums import AlertStatus, BreakerState, RunStatus, TriggerType
from .errors import (
    DatabaseReplaced,
    DatabaseUnavailable,
    DuplicateSchedule,
    GuardRejected,
    InvalidSchedule,
    InvalidTransition,
    RunNotFound,
    ScheduleNotFound,
    SchedulerError,
    SchemaTooNew,
    StaleBreaker,
    StaleRun,
    StaleState,
    StoreError,
)
from .machines.binding import Transition
from .machines.breaker import FAILURE_COUNT, fire_breaker, success_effects
from .machines.outbox import alert_status, fire_outbox, settle_trigger
from .machines.proposal import fire_proposal
from .machines.run_lifecycle import RunMove, plan_run, plan_runs
from .policies.outbox import claim_expires_before, claimable_statuses
from .records import Alert, DeadLetter, ProposalRecord, StoredReport
from .scheduled_run import ScheduledRun, time_occurrence_key

__all__ = ["ScheduleDefinition", "ScheduleStore", "default_url"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: SQLite waits this long for a lock before reporting "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 5000
#: A transaction that keeps finding the database locked is retried for this long in all.
LOCK_RETRY_SECONDS = 30.0
#: A transaction that finds the database unavailable (connection lost, disk full, read-only) is
#: retried for this long, on a fresh connection, before DatabaseUnavailable is raised: long enough
#: to get past one dropped pooled connection, short enough to let the engine's loop back off.
OUTAGE_RETRY_SECONDS = 1.0
#: How long a thread waits for a pooled connection.
POOL_TIMEOUT_SECONDS = 10
#: Runs per claim or completion statement (bounded: SQLite limits bound parameters per statement).
CLAIM_CHUNK = 400
#: Below this many items a batched path costs more than one prepared statement per item.
BATCH_MIN = 16
#: PostgreSQL advisory lock namespace (the first key) of the schedules' turn locks: "ACTP".
TURN_LOCK_NAMESPACE = 0x41435450
#: The embedded default database.
DEFAULT_DB_PATH = Path("~/.actp/scheduler.db")
#: The ``meta`` key, and its value, that say every stored schedule was checked against the limits.
LIMITS_CHECKED_KEY = "limits_checked"
LIMITS_CHECKED = "1"

#: PostgreSQL channel on which every writing transaction announces itself (see change_feed).
NOTIFY_CHANNEL = "actp_scheduler"
#: Set on a connection's ``info`` by a statement that writes (PostgreSQL), until its transaction ends.
_WROTE = "actp_wrote"
#: Writes to these tables concern no other process's engine (a worker's heartbeat), so they announce nothing.
_QUIET_TABLES = ("engine_state",)

#: Duration fields of ScheduleDefinition and the columns that hold them in seconds.
_SPAN_COLUMNS = {
    "retry_backoff": "retry_backoff_s",
    "timeout": "timeout_s",
    "grace": "grace_s",
    "shutdown_timeout": "shutdown_timeout_s",
    "breaker_cooldown": "breaker_cooldown_s",
}
#: Schedule fields that only the breaker machine or the store itself may change.
_GUARDED_SCHEDULE_FIELDS = frozenset(
    {"id", "breaker_state", "consecutive_failures", "breaker_opened_at", "created_at", "updated_at"}
)
#: Run triggers whose guards read the schedule.
_GUARDED_TRIGGERS = frozenset({"retry", "dead_letter", "replay", "due", "stop"})
#: Run fields a transition may set besides the status.
_RUN_CHANGE_FIELDS = frozenset(f.name for f in fields(ScheduledRun)) - {
    "run_id",
    "schedule_id",
    "schedule_name",
    "intended_run_at",
    "occurrence_key",
    "status",
    "created_at",
}


@dataclass(frozen=True, slots=True)
class Materialization:
    """What one schedule's due occurrences become: runs to create and where its next_run_at moves."""

    schedule: ScheduleDefinition
    runs: list[Any]
    """PlannedRun items (intended_at, catch_up, coalesced_from, skip_reason)."""
    next_run_at: datetime | None
    anchor_at: datetime | None = None
    disable_reason: str | None = None
    prepared: bool = False
    """The runs are stored ahead of their time (``ScheduledRun.prepared``)."""


def default_url() -> str:
    """``ACTP_SCHEDULER_DB`` if set, else the SQLite file ``~/.actp/scheduler.db``."""
    return os.environ.get("ACTP_SCHEDULER_DB") or str(DEFAULT_DB_PATH.expanduser())


def normalize_url(url_or_path: str | os.PathLike[str]) -> str:
    """A SQLAlchemy URL for a URL or a plain file path; ``postgres://`` URLs use psycopg 3."""
    text = os.fspath(url_or_path)
    if "://" not in text:
        path = Path(text).expanduser().resolve()
        return f"sqlite:///{path}"
    for prefix in ("postgres://", "postgresql://"):
        if text.startswith(prefix):
            return "postgresql+psycopg://" + text[len(prefix) :]
    return text


def _begin_immediate(engine: Any) -> None:
    """Make every SQLite transaction take the write lock when it begins (SQLAlchemy's recipe).

    pysqlite otherwise begins lazily at the first write, so a transaction's reads could see a
    state that another process changes before its writes: a check-then-claim (forbid) would race.
    """

    @event.listens_for(engine, "connect")
    def _driver_leaves_transactions_to_us(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _note_writes(engine: Any) -> None:
    """Mark the connection of every statement that writes (INSERT, UPDATE, DELETE), for NOTIFY."""

    @event.listens_for(engine, "before_cursor_execute", named=True)
    def _mark(conn: Any, statement: str, **_: Any) -> None:
        head = statement.lstrip()[:6].upper()
        if head in ("INSERT", "UPDATE", "DELETE") and not any(t in statement for t in _QUIET_TABLES):
            conn.info[_WROTE] = True


def _to_db(instant: datetime | None) -> datetime | None:
    # Naive UTC in the database: SQLite would otherwise keep local wall time, Postgres convert.
    return None if instant is None else instant.astimezone(UTC).replace(tzinfo=None)


def _from_db(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=UTC)


def _give_up(state: RetryCallState) -> bool:
    """tenacity's stop: contention is waited out for LOCK_RETRY_SECONDS, an outage for OUTAGE_RETRY_SECONDS."""
    exc = state.outcome.exception() if state.outcome is not None else None
    budget = LOCK_RETRY_SECONDS if classify(exc) is Fault.CONTENTION else OUTAGE_RETRY_SECONDS
    return (state.seconds_since_start or 0.0) >= budget


def _file_identity(path: str | None) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file at ``path``; None when there is none."""
    if not path:
        return None
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _turn_key(schedule_id: str) -> int:
    """A schedule's turn lock: a stable signed 32-bit hash of its id (a collision only makes two share turns)."""
    return int.from_bytes(hashlib.blake2b(schedule_id.encode(), digest_size=4).digest(), "big", signed=True)


def _listen(listeners: list[Callable[[], None]], listener: Callable[[], None]) -> Callable[[], None]:
    listeners.append(listener)
    return lambda: listeners.remove(listener) if listener in listeners else None


def _execute(statement: Any, conn: Connection) -> None:
    conn.execute(statement)


def _key(argument: str, value: Any) -> str:
    """A name or id to look up, refused (InvalidSchedule naming ``argument``) before the database when
    no row can hold it: not a string, longer than a name, or with control characters or lone surrogates."""
    text: str = limits.check_text(argument, value, limits.NAME_CHARS, single_line=True)
    return text


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class ScheduleStore:
    """Durable schedules and runs over ``dataset``: any SQLAlchemy URL, SQLite or PostgreSQL.

    ``ScheduleStore("sqlite:////abs/path/scheduler.db")`` or a plain path; the schema is created
    (or checked) on open. ``clock`` stamps created/updated times and is the default ``now`` of
    transitions; give the engine and the store the same clock. ``batch_min``: from this many
    items on, the batch methods (start_many, finish_many, transition_many, reset_failures,
    materialize_many) write with a few statements per chunk instead of one per item.
    """

    def __init__(
        self,
        url: str | os.PathLike[str] | None = None,
        *,
        clock: Clock | None = None,
        batch_min: int = BATCH_MIN,
    ) -> None:
        if isinstance(batch_min, bool) or not isinstance(batch_min, int) or batch_min < 1:
            raise ValueError(f"batch_min must be an int of at least 1, got {batch_min!r}")
        self.batch_min = batch_min
        """From this many items on, a batch method writes a few statements per chunk."""
        self.url = normalize_url(url if url is not None else default_url())
        self.clock: Clock = clock or SystemClock()
        is_sqlite = self.url.startswith("sqlite")
        engine_kwargs: dict[str, Any] = {"pool_timeout": POOL_TIMEOUT_SECONDS}
        on_connect: list[str] = []
        self.path: str | None = None
        """The SQLite file this store opened (None for PostgreSQL or an in-memory database)."""
        if not is_sqlite:
            # A pooled connection the server dropped (a restart, an idle timeout) is replaced at checkout.
            engine_kwargs["pool_pre_ping"] = True
        if is_sqlite:
            path = self.url.split(":///", 1)[1] if ":///" in self.url else ""
            if path and path != ":memory:" and not path.startswith("file:"):
                self.path = path
            if path and path != ":memory:":
                try:
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreError(f"cannot create the directory of {path}: {exc}") from exc
            engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
            on_connect = [f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}", "PRAGMA synchronous=NORMAL"]
        try:
            self.db = dataset.connect(
                self.url,
                ensure_schema=False,
                sqlite_wal_mode=True,
                on_connect_statements=on_connect,
                engine_kwargs=engine_kwargs,
            )
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise StoreError(f"cannot open the schedule store at {self.url}: {exc}") from exc
        self.dialect = self.db.engine.dialect.name if self.db.engine else "unknown"
        if is_sqlite and self.db.engine is not None:
            _begin_immediate(self.db.engine)
        if self.dialect == "postgresql" and self.db.engine is not None:
            _note_writes(self.db.engine)
        self.origin = uuid.uuid4().hex
        """This store's name in its change notifications, so that a feed can tell its own apart."""
        self._watchers: builtins.list[tuple[Callable[[], None], Callable[[], None]]] = []
        self._retrying = Retrying(
            retry=retry_if_exception(is_transient),
            stop=_give_up,
            wait=wait_exponential_jitter(multiplier=0.05, max=0.5, jitter=0.05),
            before_sleep=lambda state: self._after_fault(state.outcome.exception() if state.outcome else None),
            reraise=True,
        )
        self._identity: tuple[int, int] | None = None
        self._checkpoint_failing = False
        self._listeners: builtins.list[Callable[[], None]] = []
        self._alert_listeners: builtins.list[Callable[[], None]] = []
        self._checkpoints_deferred = False
        self._depth: dict[int, int] = {}
        self._statements: dict[Any, Any] = {}
        try:
            self._migrate()
        except BaseException:
            self.db.close()
            raise
        self._identity = _file_identity(self.path)

    # ------------------------------------------------------------------ plumbing

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` after this store changes schedules or creates runs; returns an unsubscribe."""
        return _listen(self._listeners, listener)

    def subscribe_alerts(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` after this store queues an alert; returns an unsubscribe."""
        return _listen(self._alert_listeners, listener)

    def watch_transactions(self, began: Callable[[], None], ended: Callable[[], None]) -> Callable[[], None]:
        """Call ``began()`` inside each of this store's transactions, before its work (on SQLite it
        then holds the write lock), and ``ended()`` once it committed or rolled back, both on the
        transaction's thread; returns an unsubscribe. For the change feed, which must tell this
        store's commits from other processes'."""
        pair = (began, ended)
        self._watchers.append(pair)
        return lambda: self._watchers.remove(pair) if pair in self._watchers else None

    @contextlib.contextmanager
    def _watched(self) -> Iterator[Callable[[Connection, Callable[[Connection], T]], T]]:
        """Wrap one outermost transaction: watchers are told, and on PostgreSQL a transaction that
        wrote sends a notification with this store's origin, delivered if and only if it commits."""
        watchers = builtins.list(self._watchers)
        began = False

        def run(conn: Connection, work: Callable[[Connection], T]) -> T:
            nonlocal began
            conn.info.pop(_WROTE, None)
            for begin, _ in watchers:
                begin()
            began = True
            result = work(conn)
            if conn.info.pop(_WROTE, False):
                conn.execute(select(func.pg_notify(NOTIFY_CHANNEL, self.origin)))
            return result

        try:
            yield run
        finally:
            if began:
                for _, end in watchers:
                    end()

    def _changed(self) -> None:
        for listener in list(self._listeners):
            listener()

    def close(self) -> None:
        """Close every connection; the store cannot be used afterwards."""
        self.db.close()

    def __enter__(self) -> ScheduleStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _once(self, work: Callable[[Connection], T]) -> T:
        with self._watched() as watched, self.db as tx:
            return watched(tx.executable, work)

    def atomic(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``work(*args, **kwargs)`` with every store call inside it in ONE transaction.

        The whole of ``work`` is retried while SQLite reports a lock, so it must not have
        effects outside the database that cannot run twice. Nested calls join the transaction.
        The thread's connection goes back to the pool afterwards.
        """
        return self._atomic(work, args, kwargs, keep_connection=False)

    def atomic_kept(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``atomic`` for one long-lived thread (the engine's): its connection is kept between calls.

        Any other thread should use ``atomic``: each thread that keeps one holds a pooled connection.
        """
        return self._atomic(work, args, kwargs, keep_connection=True)

    def _atomic(
        self, work: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any], *, keep_connection: bool
    ) -> T:
        if self._depth.get(threading.get_ident(), 0):
            return work(*args, **kwargs)

        def whole(conn: Connection) -> T:
            ident = threading.get_ident()
            self._depth[ident] = 1
            try:
                return work(*args, **kwargs)
            finally:
                self._depth.pop(ident, None)

        return self._tx(whole, keep_connection=keep_connection)

    def _kept(self, work: Callable[[Connection], T]) -> T:
        # The engine's database thread runs a transaction per tick: keeping its connection
        # (dataset returns it to the pool after every commit) saves a checkout and a reset each time.
        conn = self.db.executable
        with self._watched() as watched, conn.begin():
            return watched(conn, work)

    def _tx(self, work: Callable[[Connection], T], *, keep_connection: bool = False) -> T:
        """Run ``work`` in one transaction; the whole transaction is retried on a transient fault.

        Contention (a lock, a deadlock, a serialization failure) is retried for LOCK_RETRY_SECONDS,
        an outage (connection lost, disk full, read-only) for OUTAGE_RETRY_SECONDS on a fresh
        connection; a fault that outlasts its budget raises DatabaseUnavailable, any other
        database error StoreError.
        """
        if self._depth.get(threading.get_ident(), 0):
            return work(self.db.executable)
        once = self._kept if keep_connection else self._once
        try:
            try:
                return once(work)
            except SQLAlchemyError as exc:
                if not is_transient(exc):
                    raise
                self._after_fault(exc)
            # Transient: retry the whole transaction with backoff (the first attempt is the one above).
            result: T = self._retrying.copy()(once, work)
            return result
        except (SchedulerError, IntegrityError):
            raise
        except SQLAlchemyError as exc:
            cause = getattr(exc, "orig", None) or exc
            if is_transient(exc):
                raise DatabaseUnavailable(f"database unavailable on {self.dialect}: {cause}") from exc
            raise StoreError(f"database error on {self.dialect}: {cause}") from exc

    def _after_fault(self, exc: BaseException | None) -> None:
        """After an outage-type fault: drop this thread's connection and the pool's idle ones (maybe dead)."""
        if classify(exc) is not Fault.UNAVAILABLE or self.db.engine is None:
            return
        with self.db.lock:
            conn = self.db.connections.pop(threading.get_ident(), None)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.invalidate()
            with contextlib.suppress(Exception):
                conn.close()
        self.db.engine.dispose()

    def check_identity(self) -> None:
        """SQLite: raise DatabaseReplaced if the file at the path is gone or is not the one opened.

        A deleted file stays writable through the open connections, and a file put in its place
        is another database: either way writing on would lose every write. Costs one ``stat``.
        """
        if self._identity is None:
            return
        found = _file_identity(self.path)
        if found is None:
            raise DatabaseReplaced(str(self.path), "was deleted")
        if found != self._identity:
            raise DatabaseReplaced(str(self.path), "was replaced by another file")

    def defer_checkpoints(self) -> None:
        """SQLite: this store's connections no longer checkpoint the WAL when a commit makes it long.

        For the engine: a checkpoint (a copy back into the database file and an fsync) inside the
        commit that due runs wait for would delay them, so it calls ``checkpoint()`` itself after
        dispatching. Every connection of this store, on any thread, now or later, leaves it to
        that call; other processes (the CLI) checkpoint as usual. PostgreSQL: nothing to do.
        """
        if self.dialect != "sqlite" or self.db.engine is None or self._checkpoints_deferred:
            return
        self._checkpoints_deferred = True

        def off(dbapi_connection: Any, info: dict[str, Any]) -> None:
            if not info.get("checkpoints_deferred"):
                dbapi_connection.execute("PRAGMA wal_autocheckpoint=0")
                info["checkpoints_deferred"] = True

        event.listen(self.db.engine, "checkout", lambda dbapi, record, _proxy: off(dbapi, record.info))
        current = self.db.executable.connection  # this thread's, already checked out
        off(current.dbapi_connection, current.info)

    def checkpoint(self) -> bool:
        """SQLite: copy the WAL back into the database now, without waiting for readers (PASSIVE).

        Returns whether it was done. A checkpoint is housekeeping: one that fails (disk full, I/O
        error, a dropped connection) is logged and left for the next call, never raised.
        """
        if self.dialect != "sqlite":
            return True
        try:
            self._driver_connection().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except (sqlite3.Error, SQLAlchemyError) as exc:
            if not self._checkpoint_failing:
                log.warning("WAL checkpoints skipped until they work again: %s", exc)
            self._checkpoint_failing = True
            self._after_fault(exc)
            return False
        if self._checkpoint_failing:
            log.info("WAL checkpoints work again")
            self._checkpoint_failing = False
        return True

    def _driver_connection(self) -> Any:
        # This thread's sqlite3 connection, in autocommit mode (see _begin_immediate): a PRAGMA
        # sent here runs outside any transaction.
        return self.db.executable.connection.dbapi_connection

    def _migrate(self) -> None:
        def create(conn: Connection) -> int | None:
            schema.metadata.create_all(conn, checkfirst=True)
            found = conn.execute(select(schema.meta.c.value).where(schema.meta.c.key == "schema_version")).scalar()
            if found is None:
                conn.execute(schema.meta.insert().values(key="schema_version", value=str(schema.SCHEMA_VERSION)))
                # A new database holds only what the limits let in: nothing for disable_out_of_bounds.
                conn.execute(schema.meta.insert().values(key=LIMITS_CHECKED_KEY, value=LIMITS_CHECKED))
                return None
            version = int(found)
            if version < schema.SCHEMA_VERSION:
                # An older database: upgraded in this same transaction, step by step.
                for step in range(version, schema.SCHEMA_VERSION):
                    for statement in schema.UPGRADES[step]:
                        conn.execute(sql_text(statement))
                conn.execute(
                    update(schema.meta)
                    .where(schema.meta.c.key == "schema_version")
                    .values(value=str(schema.SCHEMA_VERSION))
                )
                log.info("schema of %s upgraded from version %d to %d", self.url, version, schema.SCHEMA_VERSION)
            return version

        for attempt in range(3):
            try:
                version = self._tx(create)
                break
            except (StoreError, IntegrityError) as exc:
                # Two processes creating the schema at once: the loser sees "already exists"; look again.
                cause = exc.__cause__ if isinstance(exc, StoreError) else exc
                if attempt == 2 or not isinstance(cause, OperationalError | ProgrammingError | IntegrityError):
                    raise
        if version is not None and version > schema.SCHEMA_VERSION:
            raise SchemaTooNew(
                f"the database at {self.url} has schema version {version}, newer than this code's "
                f"{schema.SCHEMA_VERSION}: upgrade the scheduler before opening it"
            )

    def disable_out_of_bounds(self) -> None:
        """Disable the enabled schedules an earlier version stored with a value the limits now refuse
        (a sub-second interval, a name ending in a newline...), each with the reason, so that none of
        them stops the engine; fixing the field (``update``) and ``enable`` bring it back. The engine
        does this when it starts; reading a store never changes it. Once done, ``meta`` says so, and
        later starts skip it (the schema version keeps older code, which knew no limits, out)."""
        if self.meta_get(LIMITS_CHECKED_KEY) == LIMITS_CHECKED:
            return
        s = schema.schedules
        rows = self._tx(lambda c: c.execute(select(s).where(s.c.enabled.is_(True))).mappings().all())
        for row in rows:
            stored = _schedule_from(row)
            try:
                stored.with_changes()
            except InvalidSchedule as exc:
                reason = limits.storable_text(f"disabled at start: {exc}")[: limits.REASON_CHARS]
                values = {"enabled": False, "disabled_reason": reason, "updated_at": _to_db(self.clock.now())}
                still_enabled = and_(s.c.id == stored.id, s.c.enabled.is_(True))  # another process may be first
                self._tx(partial(_execute, update(s).where(still_enabled).values(**values)))
                log.warning("schedule %s disabled: it holds a value no longer allowed: %s", stored.name, exc)
        self.meta_set(LIMITS_CHECKED_KEY, LIMITS_CHECKED)

    def schema_version(self) -> int:
        """The schema version recorded in ``meta``."""
        value = self._tx(
            lambda c: c.execute(select(schema.meta.c.value).where(schema.meta.c.key == "schema_version")).scalar()
        )
        if value is None:
            raise StoreError(f"the database at {self.url} has no schema version in meta")
        return int(value)

    def meta_get(self, key: str) -> str | None:
        """A value from the ``meta`` table."""
        result: str | None = self._tx(
            lambda c: c.execute(select(schema.meta.c.value).where(schema.meta.c.key == key)).scalar()
        )
        return result

    def meta_set(self, key: str, value: str) -> None:
        """Set a value in the ``meta`` table."""

        def work(conn: Connection) -> None:
            if conn.execute(update(schema.meta).where(schema.meta.c.key == key).values(value=value)).rowcount == 0:
                conn.execute(schema.meta.insert().values(key=key, value=value))

        self._tx(work)

    def _insert(self, table: Table) -> Any:
        """An INSERT that can ``on_conflict_do_nothing`` on this dialect and reports its rowcount.

        SQLAlchemy keeps an INSERT's rowcount only when asked (``preserve_rowcount``); PostgreSQL's
        driver would otherwise report -1, and a duplicate occurrence would go unnoticed.
        """
        ns = pg_dialect if self.dialect == "postgresql" else sqlite_dialect
        return ns.insert(table).execution_options(preserve_rowcount=True)

    # Building a SQLAlchemy statement costs far more than running it on SQLite, so the
    # statements of the hot path are built once, with bind parameters, and reused.

    def _prepared(self, key: Any, build: Callable[[], Any]) -> Any:
        stmt = self._statements.get(key)
        if stmt is None:
            stmt = self._statements[key] = build()
        return stmt

    def _run_update(self, columns: tuple[str, ...]) -> Any:
        """``UPDATE scheduled_runs SET <columns> WHERE run_id, status and attempt are as expected``."""
        r = schema.scheduled_runs

        def build() -> Any:
            cond = and_(
                r.c.run_id == bindparam("w_run_id"),
                r.c.status == bindparam("w_status"),
                r.c.attempt == bindparam("w_attempt"),
            )
            return update(r).where(cond).values({c: bindparam(f"v_{c}", type_=r.c[c].type) for c in columns})

        return self._prepared(("run_update", columns), build)

    def _insert_run_statement(self) -> Any:
        return self._prepared("insert_run", lambda: self._insert(schema.scheduled_runs).on_conflict_do_nothing())

    # ------------------------------------------------------------------ schedules

    def add(self, definition: ScheduleDefinition) -> ScheduleDefinition:
        """Store a new schedule and return it as stored; a taken name raises DuplicateSchedule."""
        now = self.clock.now()
        stored = definition.with_changes(created_at=definition.created_at or now, updated_at=now)
        row = _schedule_row(stored)

        def work(conn: Connection) -> None:
            self._refuse_crossed(conn, stored)
            conn.execute(schema.schedules.insert().values(**row))

        try:
            self._tx(work)
        except IntegrityError as exc:
            if self._find_schedule(stored.name) is not None:
                raise DuplicateSchedule(stored.name) from exc
            raise InvalidSchedule("id", stored.id, "an id not already used by another schedule") from exc
        self._changed()
        log.info(
            "schedule %s added (%s %r, target %s)", stored.name, stored.trigger_type, stored.expression, stored.target
        )
        return stored

    def add_many(
        self, definitions: Iterable[ScheduleDefinition], *, skip_existing: bool = True
    ) -> list[ScheduleDefinition]:
        """Store several schedules in one transaction; with ``skip_existing`` a taken name or id is left as is.

        Returns the schedules that were added. Nothing is written if any write fails.
        """
        now = self.clock.now()
        staged = [d.with_changes(created_at=d.created_at or now, updated_at=now) for d in definitions]

        def work(conn: Connection) -> list[ScheduleDefinition]:
            added = []
            for d in staged:
                stmt = self._insert(schema.schedules).values(**_schedule_row(d))
                if skip_existing:
                    stmt = stmt.on_conflict_do_nothing()
                if conn.execute(stmt).rowcount == 1:
                    added.append(d)
            return added

        try:
            return self._tx(work)
        except IntegrityError as exc:
            raise InvalidSchedule("name", "<batch>", "names and ids not already used") from exc

    def _find_schedule(self, name_or_id: str) -> ScheduleDefinition | None:
        _key("name_or_id", name_or_id)
        s = schema.schedules
        # A name is looked up before an id, so the answer never depends on which row the database reads first.
        stmt = select(s).where(or_(s.c.name == name_or_id, s.c.id == name_or_id)).order_by(s.c.name != name_or_id)
        row = self._tx(lambda c: c.execute(stmt).mappings().first())
        return None if row is None else _schedule_from(row)

    @staticmethod
    def _refuse_crossed(conn: Connection, d: ScheduleDefinition) -> None:
        """DuplicateSchedule when ``d``'s name is another schedule's id, or its id another's name: either
        would make one of them answer to the other's name."""
        s = schema.schedules
        crossed = select(s.c.id).where(or_(s.c.id == d.name, s.c.name == d.id), s.c.id != d.id).limit(1)
        if conn.execute(crossed).first() is not None:
            raise DuplicateSchedule(d.name)

    def get(self, name_or_id: str) -> ScheduleDefinition:
        """The schedule with this name (or id); ScheduleNotFound when there is none."""
        found = self._find_schedule(name_or_id)
        if found is None:
            raise ScheduleNotFound(name_or_id)
        return found

    def list(
        self, *, enabled: bool | None = None, source: str | None = None, trigger_type: str | None = None
    ) -> builtins.list[ScheduleDefinition]:
        """Every schedule, by name, optionally filtered."""
        s = schema.schedules
        stmt = select(s).order_by(s.c.name)
        if enabled is not None:
            stmt = stmt.where(s.c.enabled == enabled)
        if source is not None:
            stmt = stmt.where(s.c.source == str(source))
        if trigger_type is not None:
            stmt = stmt.where(s.c.trigger_type == str(trigger_type))
        rows = self._tx(lambda c: c.execute(stmt).mappings().all())
        return [_schedule_from(r) for r in rows]

    def update(self, name_or_id: str, **changes: Any) -> ScheduleDefinition:
        """Change definition fields of a schedule (validated); breaker fields change only through the breaker."""
        for key, value in changes.items():
            if key in _GUARDED_SCHEDULE_FIELDS:
                raise InvalidSchedule(key, value, "not changeable here (breaker fields move through the breaker)")
        current = self.get(name_or_id)
        changed = current.with_changes(updated_at=self.clock.now(), **changes)  # validates the whole result
        if any(getattr(changed, f) != getattr(current, f) for f in ("trigger_type", "expression", "timezone")):
            # New occurrences: the next one is computed afresh from the new trigger, not the old time.
            changes = {**changes, "next_run_at": None}
            changed = changed.with_state(next_run_at=None)
        # Write only the columns asked for: the engine may have moved next_run_at or the breaker
        # since we read the row, and writing our snapshot back would undo that.
        columns = {_SPAN_COLUMNS.get(name, name) for name in (*changes, "updated_at")}
        row = {k: v for k, v in _schedule_row(changed).items() if k in columns}
        s = schema.schedules

        def work(conn: Connection) -> int:
            if "name" in changes:
                self._refuse_crossed(conn, changed)
            return int(conn.execute(update(s).where(s.c.id == current.id).values(**row)).rowcount)

        try:
            count = self._tx(work)
        except IntegrityError as exc:
            raise DuplicateSchedule(changed.name) from exc
        if count != 1:
            raise ScheduleNotFound(name_or_id)
        self._changed()
        return self.get(current.id)

    def disable(self, name_or_id: str, reason: str = "") -> ScheduleDefinition:
        """Stop a schedule from producing runs, recording why."""
        limits.check_text("reason", reason, limits.REASON_CHARS)
        return self.update(name_or_id, enabled=False, disabled_reason=reason or "disabled")

    def enable(self, name_or_id: str) -> ScheduleDefinition:
        """Let a disabled schedule produce runs again, from now on.

        Occurrences that fell in the disabled period were not missed, so they are not caught up:
        the next occurrence is computed afresh (an interval keeps its anchor).
        """
        current = self.get(name_or_id)
        if current.enabled:
            return current
        return self.update(name_or_id, enabled=True, disabled_reason=None, next_run_at=None)

    def remove(self, name_or_id: str) -> None:
        """Delete a schedule; its runs and dead letters stay as history."""
        current = self.get(name_or_id)
        s = schema.schedules
        self._tx(lambda c: c.execute(s.delete().where(s.c.id == current.id)))

    def record_outcome(self, schedule_id: str, *, failed: bool) -> ScheduleDefinition | None:
        """Count a terminal failure (or reset the count on success) in one atomic UPDATE.

        Returns the schedule after the change; None for a success that changed nothing (the
        count was already 0 and the breaker closed), which costs one statement.
        """
        s = schema.schedules

        def build() -> Any:
            key = s.c.id == bindparam("schedule_id")
            if failed:
                return update(s).where(key).values({FAILURE_COUNT: s.c[FAILURE_COUNT] + 1})
            effects = success_effects()
            differs = (s.c[c] != v for c, v in effects.items())
            busy = or_(*differs, s.c.breaker_state != BreakerState.CLOSED.value)
            return update(s).where(and_(key, busy)).values(effects)

        stmt = self._prepared(("count", failed), build)

        def work(conn: Connection) -> Any:
            if conn.execute(stmt, {"schedule_id": schedule_id}).rowcount == 0:
                return False
            return conn.execute(select(s).where(s.c.id == schedule_id)).mappings().first()

        row = self._tx(work)
        if row is False and not failed:
            return None
        if not row:
            raise ScheduleNotFound(schedule_id)
        return _schedule_from(row)

    def transition_breaker(
        self, name_or_schedule: str | ScheduleDefinition, trigger: str, *, now: datetime | None = None
    ) -> ScheduleDefinition:
        """Fire a breaker trigger (trip, probe, close, reopen, reset) on a schedule; persisted conditionally."""
        schedule = self.get(name_or_schedule) if isinstance(name_or_schedule, str) else name_or_schedule
        at = now or self.clock.now()

        def persist(current: ScheduleDefinition, transition: Transition, changes: dict[str, Any]) -> None:
            s = schema.schedules
            values = {"breaker_state": transition.dest, "updated_at": _to_db(at)}
            values.update({k: _to_db(v) if isinstance(v, datetime) else v for k, v in changes.items()})
            stmt = update(s).where(and_(s.c.id == current.id, s.c.breaker_state == transition.source)).values(**values)

            def work(conn: Connection) -> None:
                if conn.execute(stmt).rowcount != 1:
                    actual = conn.execute(select(s.c.breaker_state).where(s.c.id == current.id)).scalar()
                    raise StaleBreaker(current.id, transition.source, actual, transition.trigger)

            self._tx(work)
            log.info(
                "breaker of %s: %s -> %s (%s)", current.name, transition.source, transition.dest, transition.trigger
            )

        moved = fire_breaker(schedule, trigger, now=at, persist=persist)
        self._changed()
        return moved

    # ------------------------------------------------------------------ runs

    def create_run(
        self,
        schedule: ScheduleDefinition,
        intended_run_at: datetime,
        *,
        occurrence_key: str | None = None,
        origin: str = "schedule",
        params: dict[str, Any] | None = None,
        catch_up: bool = False,
        coalesced_from: int = 1,
        reason: str | None = None,
    ) -> ScheduledRun | None:
        """Materialize a pending run; None when this occurrence already has a run (a no-op).

        ``occurrence_key`` defaults to the intended time, which is what makes a time-based
        occurrence unique per schedule; events and manual runs pass their own id.
        """
        run = self._new_run(
            schedule,
            intended_run_at,
            self.clock.now(),
            occurrence_key=occurrence_key,
            origin=origin,
            params=params,
            catch_up=catch_up,
            coalesced_from=coalesced_from,
            reason=reason,
        )
        stmt = self._insert_run_statement()
        created = self._tx(lambda c: c.execute(stmt, _run_row(run)).rowcount)
        if created != 1:
            return None
        self._changed()
        return run

    def get_run(self, run_id: str) -> ScheduledRun:
        """The run with this id; RunNotFound when there is none."""
        _key("run_id", run_id)
        r = schema.scheduled_runs
        row = self._tx(lambda c: c.execute(select(r).where(r.c.run_id == run_id)).mappings().first())
        if row is None:
            raise RunNotFound(run_id)
        return _run_from(row)

    def runs(
        self,
        schedule: str | None = None,
        status: RunStatus | str | Iterable[RunStatus | str] | None = None,
        *,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> builtins.list[ScheduledRun]:
        """Runs, oldest intended time first (or newest); ``schedule`` is a name or id, ``status`` one or several."""
        if schedule is not None:
            _key("schedule", schedule)
        r = schema.scheduled_runs
        order = (r.c.intended_run_at, r.c.created_at, r.c.run_id)
        stmt = select(r).order_by(*(c.desc() for c in order) if newest_first else order)
        if schedule is not None:
            stmt = stmt.where(or_(r.c.schedule_name == schedule, r.c.schedule_id == schedule))
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            stmt = stmt.where(r.c.status.in_([RunStatus(s).value for s in wanted]))
        if limit is not None:
            stmt = stmt.limit(limit)
        rows = self._tx(lambda c: c.execute(stmt).mappings().all())
        return [_run_from(row) for row in rows]

    def latest_runs(self) -> dict[str, ScheduledRun]:
        """The most recent run (by intended time) of every schedule that has one, by schedule id."""
        r = schema.scheduled_runs
        newest = (
            select(r.c.schedule_id, func.max(r.c.intended_run_at).label("newest")).group_by(r.c.schedule_id).subquery()
        )
        stmt = select(r).join(
            newest, and_(r.c.schedule_id == newest.c.schedule_id, r.c.intended_run_at == newest.c.newest)
        )
        rows = self._tx(lambda c: c.execute(stmt).mappings().all())
        out: dict[str, ScheduledRun] = {}
        for row in rows:
            run = _run_from(row)
            if run.schedule_id not in out or (run.created_at or run.intended_run_at) > (
                out[run.schedule_id].created_at or run.intended_run_at
            ):
                out[run.schedule_id] = run
        return out

    def count_runs(self, schedule: str | None = None, status: RunStatus | str | None = None) -> int:
        """How many runs match."""
        if schedule is not None:
            _key("schedule", schedule)
        r = schema.scheduled_runs
        stmt = select(func.count()).select_from(r)
        if schedule is not None:
            stmt = stmt.where(or_(r.c.schedule_name == schedule, r.c.schedule_id == schedule))
        if status is not None:
            stmt = stmt.where(r.c.status == RunStatus(status).value)
        return int(self._tx(lambda c: c.execute(stmt).scalar()) or 0)

    def transition(
        self,
        run: ScheduledRun,
        trigger: str,
        *,
        now: datetime | None = None,
        schedule: ScheduleDefinition | None = None,
        actor: str | None = None,
        force: bool = False,
        **changes: Any,
    ) -> ScheduledRun:
        """Fire ``trigger`` on ``run`` through the run machine; returns the new snapshot.

        The write is ``UPDATE ... WHERE run_id=? AND status=<run.status> AND attempt=<run.attempt>``;
        if another worker moved the run first, StaleRun is raised and nothing changes.
        ``changes`` set row fields (outcome, error, reason, owner, checkpoint...). A
        ``dead_letter`` also writes the dead-letter row, a ``replay`` marks it replayed by ``actor``,
        in the same transaction.
        """
        unknown = set(changes) - _RUN_CHANGE_FIELDS
        if unknown:
            raise ValueError(f"not run fields a transition can set: {', '.join(sorted(unknown))}")
        if actor is not None:
            limits.check_text("actor", actor, limits.NAME_CHARS, single_line=True)
        at = now or self.clock.now()
        if schedule is None and trigger in _GUARDED_TRIGGERS:
            schedule = self.get(run.schedule_id)
        move = plan_run(run, trigger, now=at, schedule=schedule, changes=changes, force=force)
        self._tx(lambda conn: self._write_run(conn, move, now=at, actor=actor))
        moved = move.moved
        log.info(
            "run %s of %s: %s -> %s (%s)%s",
            run.run_id,
            run.schedule_name,
            run.status,
            moved.status,
            trigger,
            f": {moved.reason}" if moved.reason else "",
        )
        return moved

    def _write_run(self, conn: Connection, move: RunMove, *, now: datetime, actor: str | None) -> None:
        """Write one move with its conditional UPDATE (StaleRun when the row is not as the move expects)."""
        run, transition = move.run, move.transition
        params: dict[str, Any] = {f"v_{k}": _db_value(v) for k, v in move.fields.items()}
        params.update(w_run_id=run.run_id, w_status=transition.source, w_attempt=run.attempt)
        if conn.execute(self._run_update(tuple(sorted(move.fields))), params).rowcount != 1:
            raise self._stale_runs(conn, [move])[run.run_id]
        self._after_move(conn, move, now=now, actor=actor)

    def _stale_runs(self, conn: Connection, moves: builtins.list[RunMove]) -> dict[str, StaleRun]:
        """Why these moves' conditional writes matched no row: who holds each run now, and its attempt."""
        r = schema.scheduled_runs
        stmt = self._prepared(
            "holders",
            lambda: select(r.c.run_id, r.c.status, r.c.owner, r.c.attempt).where(
                r.c.run_id.in_(bindparam("ids", expanding=True))
            ),
        )
        found = {row.run_id: row for row in conn.execute(stmt, {"ids": [m.run.run_id for m in moves]})}
        out: dict[str, StaleRun] = {}
        for m in moves:
            run, transition, row = m.run, m.transition, found.get(m.run.run_id)
            if row is None:
                out[run.run_id] = StaleRun(run.run_id, transition.source, None, transition.trigger)
                continue
            out[run.run_id] = StaleRun(
                run.run_id,
                transition.source,
                row.status,
                transition.trigger,
                holder=row.owner,
                attempts=(run.attempt, row.attempt),
            )
        return out

    def _after_move(self, conn: Connection, move: RunMove, *, now: datetime, actor: str | None) -> None:
        """The records a written move keeps beside the run: a dead letter, or its replay."""
        run, trigger, values = move.run, move.transition.trigger, move.fields
        if trigger == "dead_letter":
            conn.execute(
                schema.dead_letters.insert().values(
                    id=_new_id("dl"),
                    run_id=run.run_id,
                    schedule_id=run.schedule_id,
                    schedule_name=run.schedule_name,
                    intended_run_at=_to_db(run.intended_run_at),
                    attempts=run.attempt,
                    error_type=values.get("error_type", run.error_type),
                    error=values.get("error", run.error),
                    error_traceback=values.get("error_traceback", run.error_traceback),
                    params=run.params,
                    checkpoint=values.get("checkpoint", run.checkpoint),
                    created_at=_to_db(now),
                    updated_at=_to_db(now),
                )
            )
        elif trigger == "replay":
            d = schema.dead_letters
            conn.execute(
                update(d)
                .where(and_(d.c.run_id == run.run_id, d.c.replayed_at.is_(None)))
                .values(replayed_at=_to_db(now), replayed_by=actor or "operator", updated_at=_to_db(now))
            )

    def _write_moves(
        self, conn: Connection, planned: builtins.list[RunMove | SchedulerError], *, now: datetime
    ) -> builtins.list[ScheduledRun | SchedulerError]:
        """Write planned moves in this transaction; per item, the run after it or why it did not move.

        Fewer than ``batch_min`` moves (or one run moved twice) go one conditional UPDATE each;
        more go through ``_write_batch``. Both write exactly the fields the machine computed.
        """
        moves = [p for p in planned if isinstance(p, RunMove)]
        if len(moves) < self.batch_min or len({m.run.run_id for m in moves}) < len(moves):
            out: builtins.list[ScheduledRun | SchedulerError] = []
            for p in planned:
                if isinstance(p, RunMove):
                    try:
                        self._write_run(conn, p, now=now, actor=None)
                    except StaleRun as stale:
                        out.append(stale)
                        continue
                    out.append(p.moved)
                else:
                    out.append(p)
            return out
        lost = self._write_batch(conn, moves, now=now)
        return [p if isinstance(p, SchedulerError) else lost.get(p.run.run_id, p.moved) for p in planned]

    def _write_batch(self, conn: Connection, moves: builtins.list[RunMove], *, now: datetime) -> dict[str, StaleRun]:
        """Write many moves (distinct runs) with a few statements per chunk; returns the runs that lost.

        Moves from the same status to the same status that write the same columns form a group,
        written in chunks in run-id order (one lock order on every worker). Per chunk, one
        ``UPDATE ... SET <the values all its moves share> WHERE (run_id, attempt) IN (...) AND
        status = :expected RETURNING run_id`` says which runs this call moved; the values that
        differ from run to run (an outcome, a start count) follow for those runs in one executemany.
        """
        groups: dict[tuple[str, str, tuple[str, ...]], builtins.list[RunMove]] = {}
        for m in sorted(moves, key=lambda m: m.run.run_id):
            groups.setdefault((m.transition.source, m.transition.dest, tuple(m.fields)), []).append(m)
        lost: dict[str, StaleRun] = {}
        for (source, _, columns), group in groups.items():
            for i in range(0, len(group), CLAIM_CHUNK):
                chunk = group[i : i + CLAIM_CHUNK]
                first = chunk[0].fields
                shared = tuple(c for c in columns if _all_same([m.fields[c] for m in chunk]))
                varying = tuple(c for c in columns if c not in shared)
                params: dict[str, Any] = {f"v_{c}": _db_value(first[c]) for c in shared}
                params.update(pairs=[(m.run.run_id, m.run.attempt) for m in chunk], w_status=source)
                won = {row[0] for row in conn.execute(self._claim_statement(shared), params)}
                winners = [m for m in chunk if m.run.run_id in won]
                if varying and winners:
                    rows = [
                        {"w_key": m.run.run_id, **{f"v_{c}": _db_value(m.fields[c]) for c in varying}} for m in winners
                    ]
                    conn.execute(self._fill_statement(schema.scheduled_runs, "run_id", varying), rows)
                for m in winners:
                    self._after_move(conn, m, now=now, actor=None)
                if len(winners) < len(chunk):
                    lost.update(self._stale_runs(conn, [m for m in chunk if m.run.run_id not in won]))
        return lost

    def _claim_statement(self, columns: tuple[str, ...]) -> Any:
        """``UPDATE scheduled_runs SET <columns> WHERE (run_id, attempt) IN :pairs AND status = :w_status
        RETURNING run_id``, prepared."""
        r = schema.scheduled_runs

        def build() -> Any:
            cond = and_(
                tuple_(r.c.run_id, r.c.attempt).in_(bindparam("pairs", expanding=True)),
                r.c.status == bindparam("w_status"),
            )
            values = {c: bindparam(f"v_{c}", type_=r.c[c].type) for c in columns}
            return update(r).where(cond).values(values).returning(r.c.run_id)

        return self._prepared(("claim", columns), build)

    def _fill_statement(self, table: Table, key: str, columns: tuple[str, ...]) -> Any:
        """``UPDATE <table> SET <columns> WHERE <key> = :w_key``, prepared: the values of their own
        that rows this transaction has just moved conditionally still need."""

        def build() -> Any:
            values = {c: bindparam(f"v_{c}", type_=table.c[c].type) for c in columns}
            return update(table).where(table.c[key] == bindparam("w_key")).values(values)

        return self._prepared(("fill", table.name, columns), build)

    def start_many(
        self,
        runs: Iterable[ScheduledRun],
        *,
        owner: str,
        lease_until: datetime,
        reasons: dict[str, str] | None = None,
        now: datetime | None = None,
        trigger: str = "start",
        schedules: dict[str, ScheduleDefinition] | None = None,
        facts: Mapping[str, Any] | None = None,
    ) -> builtins.list[ScheduledRun]:
        """Fire ``trigger`` (``start``, or ``due`` with its guards) on many pending runs; returns the
        runs this call started, in the order given.

        From ``batch_min`` runs on, the claim is one conditional UPDATE per chunk (``WHERE
        (run_id, attempt) IN (...) AND status = 'pending' RETURNING run_id``): a run another
        worker took first is simply not returned, nor is one the guards of ``due`` send elsewhere
        (the engine gives only runs they start). ``schedules`` and ``facts`` (by run id) go to
        those guards.
        """
        why = reasons or {}
        runs_list = list(runs)
        # Claimed in one lock order (by run id) on every worker; returned in the order given.
        position = {run.run_id: i for i, run in enumerate(runs_list)}
        items = [
            (run, trigger, {"owner": owner, "lease_expires_at": lease_until, "reason": why.get(run.run_id)})
            for run in sorted(runs_list, key=lambda r: r.run_id)
        ]
        fired = self.transition_many(items, now=now, schedules=schedules, facts=facts)
        started = [m for m in fired if isinstance(m, ScheduledRun) and m.status is RunStatus.RUNNING]
        return sorted(started, key=lambda m: position[m.run_id])

    def finish_many(
        self, items: Iterable[tuple[ScheduledRun, str, dict[str, Any]]], *, now: datetime | None = None
    ) -> builtins.list[ScheduledRun | SchedulerError]:
        """Record many finished runs (succeed with their outcome, fail, skip, cancel): ``transition_many``."""
        return self.transition_many(items, now=now)

    def reset_failures(self, schedule_ids: Iterable[str]) -> builtins.list[ScheduleDefinition]:
        """After successes: zero the failure counts of these schedules; return those whose breaker is not closed."""
        ids = sorted(set(schedule_ids))
        if not ids:
            return []
        if len(ids) < self.batch_min:
            changed = [self.record_outcome(i, failed=False) for i in ids]
            return [c for c in changed if c is not None and c.breaker_state is not BreakerState.CLOSED]
        s = schema.schedules
        effects = success_effects()

        def build() -> Any:
            differs = or_(*(s.c[c] != v for c, v in effects.items()))
            return update(s).where(and_(s.c.id.in_(bindparam("ids", expanding=True)), differs)).values(effects)

        reset = self._prepared("reset_failures", build)
        not_closed = self._prepared(
            "not_closed",
            lambda: select(s).where(
                and_(s.c.id.in_(bindparam("ids", expanding=True)), s.c.breaker_state != BreakerState.CLOSED.value)
            ),
        )

        def work(conn: Connection) -> builtins.list[Any]:
            rows: builtins.list[Any] = []
            for i in range(0, len(ids), CLAIM_CHUNK):
                chunk = ids[i : i + CLAIM_CHUNK]
                conn.execute(reset, {"ids": chunk})
                rows.extend(conn.execute(not_closed, {"ids": chunk}).mappings().all())
            return rows

        return [_schedule_from(row) for row in self._tx(work)]

    def transition_many(
        self,
        items: Iterable[tuple[ScheduledRun, str, dict[str, Any]]],
        *,
        now: datetime | None = None,
        schedules: dict[str, ScheduleDefinition] | None = None,
        facts: Mapping[str, Any] | None = None,
    ) -> builtins.list[ScheduledRun | SchedulerError]:
        """Fire many ``(run, trigger, changes)`` in one transaction; each result is the new run or its error.

        The machine decides each item (InvalidTransition, GuardRejected) and computes what it
        writes; the store writes exactly that, conditionally on each run's status and attempt: one
        UPDATE per item, or from ``batch_min`` items on a few statements per chunk. A run another
        worker moved first (StaleRun) does not stop the others. ``facts`` (by run id) go to the
        guards of ``due`` and ``stop``.
        """
        at = now or self.clock.now()
        batch = list(items)
        known = dict(schedules or {})
        missing = {r.schedule_id for r, t, _ in batch if t in _GUARDED_TRIGGERS and r.schedule_id not in known}
        for schedule_id in missing:
            known[schedule_id] = self.get(schedule_id)
        planned: builtins.list[RunMove | SchedulerError] = list(plan_runs(batch, now=at, schedules=known, facts=facts))
        if not planned:
            return []
        return self._tx(lambda conn: self._write_moves(conn, planned, now=at))

    def _fire_in(
        self,
        conn: Connection,
        run: ScheduledRun,
        trigger: str,
        *,
        now: datetime,
        changes: dict[str, Any],
        schedule: ScheduleDefinition | None,
        facts: Any = None,
    ) -> ScheduledRun:
        """Fire one trigger inside an open transaction."""
        move = plan_run(run, trigger, now=now, schedule=schedule, changes=changes, facts=facts)
        self._write_run(conn, move, now=now, actor=None)
        return move.moved

    def save_checkpoint(self, run_id: str, data: Any, *, owner: str | None = None) -> None:
        """Store a running run's checkpoint (JSON); only while it runs (and, if given, for its owner).

        Data no store holds (not JSON, NaN, NUL or lone surrogates in a string) raises InvalidSchedule.
        """
        limits.check_json("checkpoint", data)
        r = schema.scheduled_runs
        cond = and_(r.c.run_id == run_id, r.c.status == RunStatus.RUNNING.value)
        if owner is not None:
            cond = and_(cond, r.c.owner == owner)
        stmt = update(r).where(cond).values(checkpoint=data, heartbeat_at=_to_db(self.clock.now()))
        if self._tx(lambda c: c.execute(stmt).rowcount) != 1:
            raise StaleRun(run_id, RunStatus.RUNNING.value, None, "save_checkpoint", holder=owner)

    def due_schedules(self, now: datetime) -> builtins.list[ScheduleDefinition]:
        """Enabled time-based schedules whose breaker is not open and whose next occurrence is due or unset."""
        s = schema.schedules

        def build() -> Any:
            return (
                select(s)
                .where(
                    and_(
                        s.c.enabled.is_(True),
                        # Comparisons, not IN: an IN list is re-rendered on every execution.
                        *(s.c.trigger_type != t.value for t in TriggerType if t not in TIME_BASED),
                        s.c.breaker_state != BreakerState.OPEN.value,
                        or_(s.c.next_run_at.is_(None), s.c.next_run_at <= bindparam("now", type_=DateTime)),
                    )
                )
                .order_by(s.c.next_run_at)
            )

        if self.dialect == "postgresql":
            # Materializing is this worker's alone until the transaction ends: the due rows are
            # locked in id order, and those another worker holds are left to it (SKIP LOCKED),
            # so two workers never wait on each other here, whatever order they lock in elsewhere.
            stmt = self._prepared(
                "due_schedules_locked",
                lambda: build().order_by(None).order_by(s.c.id).with_for_update(skip_locked=True),
            )
            rows = self._tx(lambda c: c.execute(stmt, {"now": _to_db(now)}).mappings().all())
            found = [_schedule_from(r) for r in rows]
            return sorted(found, key=lambda d: (d.next_run_at is not None, d.next_run_at or now))
        stmt = self._prepared("due_schedules", build)
        rows = self._tx(lambda c: c.execute(stmt, {"now": _to_db(now)}).mappings().all())
        return [_schedule_from(r) for r in rows]

    def next_due(self, *, count_up_to: int = 16) -> tuple[datetime | None, int]:
        """The earliest ``next_run_at`` of an enabled schedule whose breaker is not open, and how
        many schedules share it (counted up to ``count_up_to``: one walk of the index, whatever the size)."""
        s = schema.schedules
        stmt = self._prepared(
            "next_due",
            lambda: (
                select(s.c.next_run_at)
                .where(
                    and_(
                        s.c.enabled.is_(True),
                        s.c.next_run_at.is_not(None),
                        s.c.breaker_state != BreakerState.OPEN.value,
                    )
                )
                .order_by(s.c.next_run_at)
                .limit(bindparam("cap"))
            ),
        )
        times = self._tx(lambda c: c.execute(stmt, {"cap": count_up_to}).scalars().all())
        if not times:
            return None, 0
        return _from_db(times[0]), sum(1 for t in times if t == times[0])

    def next_pending_at(self, now: datetime) -> datetime | None:
        """The earliest intended time of a pending run not yet due (a run prepared ahead of its time)."""
        r = schema.scheduled_runs
        stmt = self._prepared(
            "next_pending_at",
            lambda: select(func.min(r.c.intended_run_at)).where(
                and_(
                    r.c.status == RunStatus.PENDING.value,
                    r.c.intended_run_at > bindparam("now", type_=DateTime),
                )
            ),
        )
        return _from_db(self._tx(lambda c: c.execute(stmt, {"now": _to_db(now)}).scalar()))

    def next_lease_expiry(self, now: datetime, *, owner: str) -> datetime | None:
        """When the earliest lease held by another owner than ``owner`` lapses, if after ``now``:
        the moment its run may have to be taken over (its owner died)."""
        r = schema.scheduled_runs
        stmt = self._prepared(
            "next_lease_expiry",
            lambda: select(func.min(r.c.lease_expires_at)).where(
                and_(
                    r.c.status == RunStatus.RUNNING.value,
                    r.c.lease_expires_at > bindparam("now", type_=DateTime),
                    r.c.owner != bindparam("owner"),
                )
            ),
        )
        return _from_db(self._tx(lambda c: c.execute(stmt, {"now": _to_db(now), "owner": owner}).scalar()))

    def schedule_versions(self, ids: Iterable[str]) -> dict[str, datetime]:
        """``updated_at`` of these schedules (missing ones left out): whether a copy in memory is current."""
        wanted = sorted(set(ids))
        s = schema.schedules
        stmt = self._prepared(
            "schedule_versions",
            lambda: select(s.c.id, s.c.updated_at).where(s.c.id.in_(bindparam("ids", expanding=True))),
        )

        def work(conn: Connection) -> dict[str, datetime]:
            out: dict[str, datetime] = {}
            for k in range(0, len(wanted), CLAIM_CHUNK):
                for sid, at in conn.execute(stmt, {"ids": wanted[k : k + CLAIM_CHUNK]}):
                    out[sid] = at.replace(tzinfo=UTC)
            return out

        return self._tx(work) if wanted else {}

    def materialize(
        self,
        schedule: ScheduleDefinition,
        runs: Iterable[Any],
        *,
        next_run_at: datetime | None,
        anchor_at: datetime | None = None,
        disable_reason: str | None = None,
        now: datetime | None = None,
    ) -> builtins.list[ScheduledRun] | None:
        """Create the planned runs of ``schedule`` and move its ``next_run_at``, in one transaction.

        The move is conditional on ``next_run_at`` still being what ``schedule`` says, so two
        workers never both materialize the same occurrences; the loser gets None. Planned runs
        with a ``skip_reason`` are recorded and moved to ``skipped`` through the machine. Runs
        that already exist (same occurrence) are left alone. ``disable_reason`` disables the
        schedule (a delay that fired).
        """
        plan = Materialization(schedule, list(runs), next_run_at, anchor_at, disable_reason)
        return self.materialize_many([plan], now=now)[0]

    def materialize_many(
        self, plans: Iterable[Materialization], *, now: datetime | None = None
    ) -> builtins.list[builtins.list[ScheduledRun] | None]:
        """``materialize`` for many schedules in one transaction and a few statements.

        The conditional moves of ``next_run_at`` run as one UPDATE ... RETURNING per shape and chunk
        (``_advance_schedules``), which says which this call made (only those schedules get runs);
        all their runs go in with one executemany. Returns, per plan, the runs created, or None when
        another worker moved first.
        """
        at = now or self.clock.now()
        batch = list(plans)
        s = schema.schedules
        shapes: dict[tuple[bool, tuple[str, ...]], builtins.list[dict[str, Any]]] = {}
        shaped: builtins.list[tuple[tuple[bool, tuple[str, ...]], dict[str, Any]]] = []
        for m in batch:
            values: dict[str, Any] = {"next_run_at": _to_db(m.next_run_at), "updated_at": _to_db(at)}
            if m.runs:
                values["last_run_at"] = _to_db(max(p.intended_at for p in m.runs))
            if m.anchor_at is not None:
                values["anchor_at"] = _to_db(m.anchor_at)
            if m.disable_reason is not None:
                values.update(enabled=False, disabled_reason=m.disable_reason)
            params = {f"v_{k}": v for k, v in values.items()}
            params.update(w_id=m.schedule.id, w_next=_to_db(m.schedule.next_run_at))
            shape = (m.schedule.next_run_at is None, tuple(sorted(values)))
            shapes.setdefault(shape, []).append(params)
            shaped.append((shape, params))

        def advance(unset: bool, columns: tuple[str, ...]) -> Any:
            def build() -> Any:
                expected = (
                    s.c.next_run_at.is_(None) if unset else s.c.next_run_at == bindparam("w_next", type_=DateTime)
                )
                cond = and_(s.c.id == bindparam("w_id"), expected)
                return update(s).where(cond).values({c: bindparam(f"v_{c}", type_=s.c[c].type) for c in columns})

            return self._prepared(("advance", unset, columns), build)

        def one_by_one(conn: Connection) -> builtins.list[builtins.list[ScheduledRun] | None]:
            self._lock_rows(conn, (m.schedule.id for m in batch))
            out: builtins.list[builtins.list[ScheduledRun] | None] = []
            for m, ((unset, columns), params) in zip(batch, shaped, strict=True):
                if conn.execute(advance(unset, columns), params).rowcount != 1:
                    out.append(None)
                    continue
                created = []
                for p in m.runs:
                    run = self._planned_run(m.schedule, p, at, prepared=m.prepared)
                    if conn.execute(self._insert_run_statement(), _run_row(run)).rowcount != 1:
                        continue
                    if p.skip_reason is not None:
                        run = self._fire_in(
                            conn, run, "skip", now=at, changes={"reason": p.skip_reason}, schedule=m.schedule
                        )
                    created.append(run)
                out.append(created)
            return out

        if len(batch) < self.batch_min or len({m.schedule.id for m in batch}) < len(batch):
            return self._tx(one_by_one)

        def work(conn: Connection) -> builtins.list[builtins.list[ScheduledRun] | None]:
            self._lock_rows(conn, (m.schedule.id for m in batch))
            moved: set[str] = set()
            for (unset, columns), rows in shapes.items():
                for k in range(0, len(rows), CLAIM_CHUNK):
                    moved |= self._advance_schedules(conn, unset, columns, rows[k : k + CLAIM_CHUNK])
            out: builtins.list[builtins.list[ScheduledRun] | None] = []
            staged: builtins.list[tuple[ScheduledRun, Any, ScheduleDefinition]] = []
            for m in batch:
                if m.schedule.id not in moved:
                    out.append(None)
                    continue
                mine = []
                for p in m.runs:
                    run = self._planned_run(m.schedule, p, at, prepared=m.prepared)
                    staged.append((run, p, m.schedule))
                    mine.append(run)
                out.append(mine)
            rows = [_run_row(run) for run, _, _ in staged]
            inserted = 0
            for k in range(0, len(rows), CLAIM_CHUNK):
                inserted += conn.execute(self._insert_run_statement(), rows[k : k + CLAIM_CHUNK]).rowcount
            created = {run.run_id for run, _, _ in staged}
            if inserted != len(staged):  # some occurrences already had a run: keep only ours
                r = schema.scheduled_runs
                created = set()
                for k in range(0, len(staged), CLAIM_CHUNK):
                    mine_ids = [run.run_id for run, _, _ in staged[k : k + CLAIM_CHUNK]]
                    created |= {row[0] for row in conn.execute(select(r.c.run_id).where(r.c.run_id.in_(mine_ids)))}
            skipped: dict[str, ScheduledRun] = {}
            for run, p, schedule in staged:
                if run.run_id in created and p.skip_reason is not None:
                    skipped[run.run_id] = self._fire_in(
                        conn, run, "skip", now=at, changes={"reason": p.skip_reason}, schedule=schedule
                    )
            return [
                None if runs is None else [skipped.get(r.run_id, r) for r in runs if r.run_id in created]
                for runs in out
            ]

        return self._tx(work)

    def _advance_schedules(
        self, conn: Connection, unset: bool, columns: tuple[str, ...], rows: builtins.list[dict[str, Any]]
    ) -> set[str]:
        """Move many schedules' ``next_run_at``, each only from the value it was read with; the ids moved.

        The values every row shares go in one ``UPDATE ... WHERE (id, next_run_at) IN (...)
        RETURNING id`` (``next_run_at IS NULL`` for the unset); the values of their own follow, for
        the schedules moved, in one executemany.
        """
        s = schema.schedules
        first = rows[0]
        shared = tuple(c for c in columns if _all_same([r[f"v_{c}"] for r in rows]))
        varying = tuple(c for c in columns if c not in shared)

        def build() -> Any:
            if unset:
                cond = and_(s.c.id.in_(bindparam("ids", expanding=True)), s.c.next_run_at.is_(None))
            else:
                cond = tuple_(s.c.id, s.c.next_run_at).in_(bindparam("pairs", expanding=True))
            values = {c: bindparam(f"v_{c}", type_=s.c[c].type) for c in shared}
            return update(s).where(cond).values(values).returning(s.c.id)

        params: dict[str, Any] = {f"v_{c}": first[f"v_{c}"] for c in shared}
        if unset:
            params["ids"] = [r["w_id"] for r in rows]
        else:
            params["pairs"] = [(r["w_id"], r["w_next"]) for r in rows]
        won = {row[0] for row in conn.execute(self._prepared(("advance_many", unset, shared), build), params)}
        if varying and won:
            own = [{"w_key": r["w_id"], **{f"v_{c}": r[f"v_{c}"] for c in varying}} for r in rows if r["w_id"] in won]
            conn.execute(self._fill_statement(s, "id", varying), own)
        return won

    def _planned_run(
        self, schedule: ScheduleDefinition, plan: Any, now: datetime, *, prepared: bool = False
    ) -> ScheduledRun:
        """The run a PlannedRun of ``schedule`` becomes."""
        return self._new_run(
            schedule,
            plan.intended_at,
            now,
            catch_up=plan.catch_up,
            coalesced_from=plan.coalesced_from,
            origin="catch_up" if plan.catch_up else "schedule",
            prepared=prepared,
        )

    def _new_run(
        self,
        schedule: ScheduleDefinition,
        intended_run_at: datetime,
        now: datetime,
        *,
        occurrence_key: str | None = None,
        origin: str = "schedule",
        params: dict[str, Any] | None = None,
        catch_up: bool = False,
        coalesced_from: int = 1,
        reason: str | None = None,
        prepared: bool = False,
    ) -> ScheduledRun:
        return ScheduledRun(
            run_id=_new_id("run"),
            schedule_id=schedule.id,
            schedule_name=schedule.name,
            intended_run_at=intended_run_at.astimezone(UTC),
            occurrence_key=occurrence_key or time_occurrence_key(intended_run_at),
            origin=origin,
            params=dict(schedule.params if params is None else params),
            catch_up=catch_up,
            coalesced_from=coalesced_from,
            reason=reason,
            prepared=prepared,
            created_at=now,
            updated_at=now,
        )

    def pending_due(self, now: datetime) -> builtins.list[ScheduledRun]:
        """Pending runs whose intended time has come, oldest first."""
        r = schema.scheduled_runs
        stmt = self._prepared(
            "pending_due",
            lambda: (
                select(r)
                .where(
                    and_(r.c.status == RunStatus.PENDING.value, r.c.intended_run_at <= bindparam("now", type_=DateTime))
                )
                .order_by(r.c.intended_run_at, r.c.created_at)
            ),
        )
        rows = self._tx(lambda c: c.execute(stmt, {"now": _to_db(now)}).mappings().all())
        return [_run_from(row) for row in rows]

    def finished_runs_after(
        self, cursor: tuple[datetime, str] | None, *, limit: int = 500
    ) -> builtins.list[ScheduledRun]:
        """Runs in a final status changed after ``cursor`` (updated_at, run_id), in that order: an export feed."""
        r = schema.scheduled_runs
        final = [
            s.value
            for s in (
                RunStatus.SUCCEEDED,
                RunStatus.FAILED,
                RunStatus.DEAD_LETTERED,
                RunStatus.SKIPPED,
                RunStatus.CANCELLED,
            )
        ]
        stmt = select(r).where(r.c.status.in_(final))
        if cursor is not None:
            at, run_id = _to_db(cursor[0]), cursor[1]
            stmt = stmt.where(or_(r.c.updated_at > at, and_(r.c.updated_at == at, r.c.run_id > run_id)))
        stmt = stmt.order_by(r.c.updated_at, r.c.run_id).limit(limit)
        return [_run_from(row) for row in self._tx(lambda c: c.execute(stmt).mappings().all())]

    def lock_schedules(self, schedule_ids: Iterable[str]) -> None:
        """Take these schedules' turn locks until the transaction ends (PostgreSQL), so two workers
        deciding starts for the same schedule take turns. SQLite's transactions already hold the
        database's write lock from their first statement.

        The turn locks are transaction-level advisory locks, taken in one order (by key), not the
        schedules' rows: a worker waiting for its turn then never waits on, nor holds up, a row
        that another worker's materialization or bookkeeping has updated in its own transaction,
        which in any other order would be a deadlock.
        """
        if self.dialect != "postgresql":
            return
        keys = sorted({_turn_key(i) for i in schedule_ids})
        if not keys:
            return
        stmt = self._prepared(
            "lock_schedules",
            lambda: select(func.pg_advisory_xact_lock(bindparam("ns"), bindparam("key"))),
        )

        def work(conn: Connection) -> None:
            for key in keys:  # one statement each: the order of the waits is the order of the keys
                conn.execute(stmt, {"ns": TURN_LOCK_NAMESPACE, "key": key}).all()

        self._tx(work)

    def _lock_rows(self, conn: Connection, schedule_ids: Iterable[str]) -> None:
        """PostgreSQL: lock these schedules' rows in id order before updating several of them."""
        if self.dialect != "postgresql":
            return
        ids = sorted(set(schedule_ids))
        if len(ids) < 2:
            return
        s = schema.schedules
        stmt = self._prepared(
            "lock_rows",
            lambda: (
                select(s.c.id).where(s.c.id.in_(bindparam("ids", expanding=True))).order_by(s.c.id).with_for_update()
            ),
        )
        for k in range(0, len(ids), CLAIM_CHUNK):
            conn.execute(stmt, {"ids": ids[k : k + CLAIM_CHUNK]}).all()

    def running_counts(self, schedule_ids: Iterable[str]) -> dict[str, int]:
        """How many runs of each schedule are running, on any worker."""
        ids = list(set(schedule_ids))
        if not ids:
            return {}
        r = schema.scheduled_runs
        stmt = self._prepared(
            "running_counts",
            lambda: (
                select(r.c.schedule_id, func.count())
                .where(
                    and_(r.c.status == RunStatus.RUNNING.value, r.c.schedule_id.in_(bindparam("ids", expanding=True)))
                )
                .group_by(r.c.schedule_id)
            ),
        )
        rows = self._tx(lambda c: c.execute(stmt, {"ids": ids}).all())
        return {schedule_id: int(n) for schedule_id, n in rows}

    def schedules_by_id(self, ids: Iterable[str]) -> dict[str, ScheduleDefinition]:
        """The schedules with these ids (missing ones are left out)."""
        wanted = list(set(ids))
        if not wanted:
            return {}
        s = schema.schedules
        stmt = self._prepared("schedules_by_id", lambda: select(s).where(s.c.id.in_(bindparam("ids", expanding=True))))
        rows = self._tx(lambda c: c.execute(stmt, {"ids": wanted}).mappings().all())
        return {row["id"]: _schedule_from(row) for row in rows}

    def renew_leases(self, run_ids: Iterable[str], *, owner: str, until: datetime, now: datetime | None = None) -> int:
        """Extend the lease of running runs held by ``owner``; returns how many were still held."""
        ids = list(run_ids)
        if not ids:
            return 0
        r = schema.scheduled_runs
        at = _to_db(now or self.clock.now())
        stmt = (
            update(r)
            .where(and_(r.c.run_id.in_(ids), r.c.status == RunStatus.RUNNING.value, r.c.owner == owner))
            .values(lease_expires_at=_to_db(until), heartbeat_at=at)
        )
        return int(self._tx(lambda c: c.execute(stmt).rowcount))

    def dead_letters(self, schedule: str | None = None, *, include_replayed: bool = True) -> builtins.list[DeadLetter]:
        """Dead-lettered runs, oldest first."""
        if schedule is not None:
            _key("schedule", schedule)
        d = schema.dead_letters
        stmt = select(d).order_by(d.c.created_at, d.c.id)
        if schedule is not None:
            stmt = stmt.where(or_(d.c.schedule_name == schedule, d.c.schedule_id == schedule))
        if not include_replayed:
            stmt = stmt.where(d.c.replayed_at.is_(None))
        rows = self._tx(lambda c: c.execute(stmt).mappings().all())
        return [_dead_letter_from(row) for row in rows]

    def dead_letter(self, letter_or_run_id: str) -> DeadLetter:
        """One dead letter, by its id or its run's id (the newest for that run)."""
        _key("letter_or_run_id", letter_or_run_id)
        d = schema.dead_letters
        stmt = (
            select(d)
            .where(or_(d.c.id == letter_or_run_id, d.c.run_id == letter_or_run_id))
            .order_by(d.c.created_at.desc())
        )
        row = self._tx(lambda c: c.execute(stmt).mappings().first())
        if row is None:
            raise RunNotFound(letter_or_run_id)
        return _dead_letter_from(row)

    def replay_dead_letter(
        self, letter_or_run_id: str, *, actor: str, force: bool = False, now: datetime | None = None
    ) -> ScheduledRun:
        """Send a dead-lettered run back to pending through the machine, with a fresh retry budget.

        Refused (GuardRejected) while the schedule's breaker is open, unless ``force``.
        """
        limits.check_text("actor", actor, limits.NAME_CHARS, single_line=True)
        letter = self.dead_letter(letter_or_run_id)
        run = self.get_run(letter.run_id)
        return self.transition(run, "replay", now=now, actor=actor, force=force, reason=f"replayed by {actor}")

    def purge_dead_letters(self, older_than: timedelta, *, now: datetime | None = None) -> int:
        """Delete dead letters created more than ``older_than`` ago; returns how many. Runs stay."""
        cutoff = _to_db((now or self.clock.now()) - older_than)
        d = schema.dead_letters
        return int(self._tx(lambda c: c.execute(d.delete().where(d.c.created_at < cutoff)).rowcount))

    def open_breakers(self) -> builtins.list[ScheduleDefinition]:
        """Schedules whose breaker is open."""
        s = schema.schedules
        stmt = select(s).where(s.c.breaker_state == BreakerState.OPEN.value).order_by(s.c.name)
        return [_schedule_from(r) for r in self._tx(lambda c: c.execute(stmt).mappings().all())]

    # ------------------------------------------------------------------ alerts, reports, engine state, proposals

    def add_alert(self, kind: str, text: str, payload: dict[str, Any] | None = None) -> Alert:
        """Queue an alert in the outbox, in the outbox machine's first state (pending)."""
        now = self.clock.now()
        alert = Alert(id=_new_id("al"), kind=kind, text=text, payload=dict(payload or {}), created_at=now)
        row = {
            "id": alert.id,
            "kind": kind,
            "text": text,
            "payload": alert.payload,
            "status": alert.status.value,
            "attempts": alert.attempts,
            "created_at": _to_db(now),
            "updated_at": _to_db(now),
        }
        self._tx(lambda c: c.execute(schema.alerts_outbox.insert().values(**row)))
        for listener in list(self._alert_listeners):
            listener()
        return alert

    def alerts(self, status: AlertStatus | str | None = None) -> builtins.list[Alert]:
        """Alerts in the outbox, oldest first; ``status`` one of pending, sending, sent, undeliverable."""
        a = schema.alerts_outbox
        stmt = select(a).order_by(a.c.created_at, a.c.id)
        if status is not None:
            stmt = stmt.where(a.c.status == alert_status(status).value)
        rows = self._tx(lambda c: c.execute(stmt).mappings().all())
        return [_alert_from(r) for r in rows]

    def claim_alerts(
        self, *, now: datetime, lease: timedelta, limit: int = 50, include_undeliverable: bool = True
    ) -> builtins.list[Alert]:
        """Take up to ``limit`` deliverable alerts (pending, undeliverable, or a claim older than ``lease``).

        Each claim fires the outbox machine's ``claim``, written conditionally on the status, the
        claim time and the attempts seen, so two dispatchers never send the same alert at once.
        ``include_undeliverable`` says whether this dispatcher has a notifier to send them with.
        """
        a = schema.alerts_outbox

        def build() -> Any:
            free = claimable_statuses(include_undeliverable)
            stale = and_(a.c.status == AlertStatus.SENDING.value, a.c.updated_at < bindparam("cutoff", type_=DateTime))
            return (
                select(a)
                .where(or_(*(a.c.status == s.value for s in free), stale))
                .order_by(a.c.created_at, a.c.id)
                .limit(bindparam("limit"))
            )

        find = self._prepared(("open_alerts", include_undeliverable), build)
        take = self._prepared(
            "claim_alert",
            lambda: (
                update(a)
                .where(
                    and_(
                        a.c.id == bindparam("w_id"),
                        a.c.status == bindparam("w_status"),
                        a.c.updated_at == bindparam("w_at", type_=DateTime),
                        a.c.attempts == bindparam("w_attempts"),
                    )
                )
                .values(
                    status=bindparam("v_status"),
                    attempts=bindparam("v_attempts"),
                    updated_at=bindparam("v_at", type_=DateTime),
                )
            ),
        )

        def work(conn: Connection) -> builtins.list[Alert]:
            cutoff = claim_expires_before(now, lease)
            rows = conn.execute(find, {"cutoff": _to_db(cutoff), "limit": limit}).mappings().all()
            claimed = []
            for r in rows:

                def persist(current: Alert, transition: Transition, fields: dict[str, Any], r: Any = r) -> None:
                    params = {
                        "w_id": current.id,
                        "w_status": transition.source,
                        "w_at": r["updated_at"],
                        "w_attempts": current.attempts,
                        "v_status": transition.dest,
                        "v_attempts": fields["attempts"],
                        "v_at": _to_db(now),
                    }
                    if conn.execute(take, params).rowcount != 1:
                        self._stale_alert(conn, current, transition)

                try:
                    claimed.append(
                        fire_outbox(
                            _alert_from(r),
                            "claim",
                            now=now,
                            persist=persist,
                            lease=lease,
                            claimed_at=_from_db(r["updated_at"]),
                            notifier_configured=include_undeliverable,
                        )
                    )
                except (StaleState, GuardRejected) as exc:
                    log.debug("alert %s not claimed: %s", r["id"], exc)
            return claimed

        return self._tx(work)

    def mark_alerts(
        self, ids: Iterable[str], status: AlertStatus | str, *, error: str | None = None, now: datetime | None = None
    ) -> int:
        """Settle claimed alerts: ``sent`` (with the delivery time) or back to ``pending``/``undeliverable``.

        Each alert fires the outbox machine's trigger for ``status`` from ``sending``, written
        conditionally on that status; one no longer ``sending`` (settled by a dispatcher that took
        over its expired claim) is left as it is. Returns how many were settled.
        """
        trigger = settle_trigger(status)
        at = now or self.clock.now()
        wanted = list(ids)
        if not wanted:
            return 0
        a = schema.alerts_outbox

        def work(conn: Connection) -> int:
            settled = 0
            for r in conn.execute(select(a).where(a.c.id.in_(wanted))).mappings().all():

                def persist(current: Alert, transition: Transition, fields: dict[str, Any]) -> None:
                    values = {"status": transition.dest, "updated_at": _to_db(at)}
                    values.update({k: _to_db(v) if isinstance(v, datetime) else v for k, v in fields.items()})
                    cond = and_(a.c.id == current.id, a.c.status == transition.source)
                    if conn.execute(update(a).where(cond).values(**values)).rowcount != 1:
                        self._stale_alert(conn, current, transition)

                try:
                    fire_outbox(_alert_from(r), trigger, now=at, persist=persist, error=error)
                except (StaleState, InvalidTransition) as exc:
                    log.info("alert %s left as it is: %s", r["id"], exc)
                    continue
                settled += 1
            return settled

        return self._tx(work)

    @staticmethod
    def _stale_alert(conn: Connection, alert: Alert, transition: Transition) -> None:
        a = schema.alerts_outbox
        actual = conn.execute(select(a.c.status).where(a.c.id == alert.id)).scalar()
        raise StaleState(alert.id, transition.source, actual, transition.trigger)

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
            id=_new_id("rec"),
            worker_id=worker_id,
            started_at=started_at,
            finished_at=finished_at,
            dry_run=dry_run,
            report=report,
        )
        row = {
            "id": stored.id,
            "worker_id": worker_id,
            "started_at": _to_db(started_at),
            "finished_at": _to_db(finished_at),
            "dry_run": dry_run,
            "report": report,
        }
        self._tx(lambda c: c.execute(schema.reconciliation_reports.insert().values(**row)))
        return stored

    def update_report(self, report_id: str, *, finished_at: datetime | None, report: dict[str, Any]) -> None:
        """Bring a stored report up to date: a start writes it with each change it makes, and closes it
        (``finished_at``) at the end, so a start cut short leaves a report that matches the rows."""
        t = schema.reconciliation_reports
        stmt = update(t).where(t.c.id == report_id).values(finished_at=_to_db(finished_at), report=report)
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
                started_at=_from_db(r["started_at"]) or r["started_at"],
                finished_at=_from_db(r["finished_at"]),
                dry_run=r["dry_run"],
                report=r["report"],
            )
            for r in rows
        ]

    def put_state(self, key: str, value: dict[str, Any]) -> None:
        """Set an ``engine_state`` entry (worker heartbeats, clean-shutdown markers)."""
        e = schema.engine_state
        now = _to_db(self.clock.now())
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
            "decided_at": _to_db(record.decided_at),
            "decision_reason": record.decision_reason,
            "schedule_id": record.schedule_id,
            "expires_at": _to_db(record.expires_at),
            "created_at": _to_db(record.created_at or now),
            "updated_at": _to_db(now),
        }

        def work(conn: Connection) -> None:
            if conn.execute(update(p).where(p.c.id == record.id).values(**row)).rowcount == 0:
                conn.execute(p.insert().values(**row))

        self._tx(work)
        return self.get_proposal(record.id)

    def proposals(self, status: str | None = None, *, proposed_by: str | None = None) -> builtins.list[ProposalRecord]:
        """Stored proposals, oldest first, optionally by status and proposer."""
        if proposed_by is not None:
            _key("proposed_by", proposed_by)
        p = schema.proposals
        stmt = select(p).order_by(p.c.created_at, p.c.id)
        if status is not None:
            stmt = stmt.where(p.c.status == status)
        if proposed_by is not None:
            stmt = stmt.where(p.c.proposed_by == proposed_by)
        return [_proposal_from(r) for r in self._tx(lambda c: c.execute(stmt).mappings().all())]

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
            conn.execute(schema.schedules.insert().values(**_schedule_row(stored)))

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
        values = {"status": transition.dest, "updated_at": _to_db(now)}
        values.update({k: _to_db(v) if isinstance(v, datetime) else v for k, v in fields.items()})
        stmt = update(p).where(and_(p.c.id == record.id, p.c.status == transition.source)).values(**values)
        if conn.execute(stmt).rowcount != 1:
            actual = conn.execute(select(p.c.status).where(p.c.id == record.id)).scalar()
            raise StaleState(record.id, transition.source, actual, transition.trigger)

    def get_proposal(self, proposal_id: str) -> ProposalRecord:
        """A stored proposal; LookupError when there is none."""
        _key("proposal_id", proposal_id)
        p = schema.proposals
        r = self._tx(lambda c: c.execute(select(p).where(p.c.id == proposal_id)).mappings().first())
        if r is None:
            raise LookupError(f"no proposal with id {proposal_id!r}")
        return _proposal_from(r)


# ---------------------------------------------------------------------- row mapping


def _schedule_row(d: ScheduleDefinition) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for f in fields(d):
        value = getattr(d, f.name)
        if f.name in _SPAN_COLUMNS:
            row[_SPAN_COLUMNS[f.name]] = None if value is None else value.total_seconds()
        elif isinstance(value, datetime):
            row[f.name] = _to_db(value)
        elif isinstance(value, StrEnum):
            row[f.name] = value.value
        else:
            row[f.name] = value
    return row


def _db_value(value: Any) -> Any:
    """A field's value as its column holds it: instants naive UTC, enums their value."""
    if isinstance(value, datetime):
        return _to_db(value)
    if isinstance(value, StrEnum):
        return value.value
    return value


def _all_same(values: builtins.list[Any]) -> bool:
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


def _span_from(seconds: float | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=seconds)


def _same(value: Any) -> Any:
    return value


def _field_readers(cls: Any, columns: dict[str, str]) -> builtins.list[tuple[str, str, Callable[[Any], Any]]]:
    """(field, column, converter) for every field of ``cls``: the mapping of a row, computed once."""
    out: builtins.list[tuple[str, str, Callable[[Any], Any]]] = []
    for f in fields(cls):
        if f.name in _SPAN_COLUMNS and cls is ScheduleDefinition:
            out.append((f.name, columns[f.name], _span_from))
        elif "datetime" in str(f.type):
            out.append((f.name, f.name, _from_db))
        else:
            out.append((f.name, f.name, _same))
    return out


_SCHEDULE_READERS = _field_readers(ScheduleDefinition, _SPAN_COLUMNS)
_RUN_READERS = _field_readers(ScheduledRun, {})


def _schedule_from(row: Any) -> ScheduleDefinition:
    # Stored rows were validated when written: rebuild without parsing the expression again.
    return ScheduleDefinition.from_trusted(**{name: conv(row[col]) for name, col, conv in _SCHEDULE_READERS})


def _run_row(run: ScheduledRun) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for f in fields(run):
        value = getattr(run, f.name)
        if isinstance(value, datetime):
            value = _to_db(value)
        elif isinstance(value, StrEnum):
            value = value.value
        row[f.name] = value
    return row


def _run_from(row: Any) -> ScheduledRun:
    kwargs = {name: conv(row[col]) for name, col, conv in _RUN_READERS}
    kwargs["status"] = RunStatus(kwargs["status"])
    return ScheduledRun(**kwargs)


_PROPOSAL_READERS = _field_readers(ProposalRecord, {})
_ALERT_READERS = _field_readers(Alert, {})
_LETTER_READERS = _field_readers(DeadLetter, {})


def _proposal_from(row: Any) -> ProposalRecord:
    return ProposalRecord(**{name: conv(row[col]) for name, col, conv in _PROPOSAL_READERS})


def _alert_from(row: Any) -> Alert:
    kwargs = {name: conv(row[col]) for name, col, conv in _ALERT_READERS}
    kwargs["status"] = AlertStatus(kwargs["status"])
    return Alert(**kwargs)


def _dead_letter_from(row: Any) -> DeadLetter:
    return DeadLetter(**{name: conv(row[col]) for name, col, conv in _LETTER_READERS})
