"""The connection: opening a store, transactions retried whole on transient faults, migration, checkpoints."""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self, TypeVar
from urllib.parse import quote

import dataset
from sqlalchemy import Connection, Table, event, func, inspect, select, update
from sqlalchemy import text as sql_text
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError, SQLAlchemyError
from sqlalchemy.schema import CreateIndex
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential_jitter

from .. import schema
from ..clock import Clock, SystemClock
from ..config import mask_url
from ..db_faults import Fault, classify, is_transient
from ..errors import (
    DatabaseNotFound,
    DatabaseReplaced,
    DatabaseUnavailable,
    SchedulerError,
    SchemaMissing,
    SchemaTooNew,
    StoreError,
)
from ..settings import Settings, load_settings
from .direct import DirectStatements

T = TypeVar("T")


log = logging.getLogger(__name__)


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


#: The embedded default database.
DEFAULT_DB_PATH = Path("~/.actp/scheduler.db")


#: Runs per claim or completion statement (bounded: SQLite limits bound parameters per statement).
CLAIM_CHUNK = 400


#: Below this many items a batched path costs more than one prepared statement per item.
BATCH_MIN = 16


#: The ``meta`` key, and its value, that say every stored schedule was checked against the limits.
LIMITS_CHECKED_KEY = "limits_checked"


LIMITS_CHECKED = "1"


#: PostgreSQL channel on which every writing transaction announces itself (see engine.feed).
NOTIFY_CHANNEL = "actp_scheduler"


#: Writes to these tables concern no other process's engine (a worker's heartbeat), so they announce nothing.
QUIET_TABLES = ("engine_state",)


#: Set on a connection's ``info`` by a statement that writes (PostgreSQL), until its transaction ends.
WROTE = "actp_wrote"


def note_writes(engine: Any) -> None:
    """Mark the connection of every statement that writes (INSERT, UPDATE, DELETE), for NOTIFY."""

    @event.listens_for(engine, "before_cursor_execute", named=True)
    def _mark(conn: Any, statement: str, **_: Any) -> None:
        head = statement.lstrip()[:6].upper()
        if head in ("INSERT", "UPDATE", "DELETE") and not any(t in statement for t in QUIET_TABLES):
            conn.info[WROTE] = True


def default_url(settings: Settings | None = None) -> str:
    """``ACTP_SCHEDULER_DB`` of ``settings`` (default: read now), else the SQLite file ``~/.actp/scheduler.db``."""
    return (settings or load_settings(only=("ACTP_SCHEDULER_DB",))).scheduler_db


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


def begin_immediate(engine: Any, statement: str = "BEGIN IMMEDIATE") -> None:
    """Make every SQLite transaction take the write lock when it begins (SQLAlchemy's recipe).

    pysqlite otherwise begins lazily at the first write, so a transaction's reads could see a
    state that another process changes before its writes: a check-then-claim (forbid) would race.
    A read-only store begins with a plain ``BEGIN``: one snapshot for all its reads, no lock.
    """

    @event.listens_for(engine, "connect")
    def _driver_leaves_transactions_to_us(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql(statement)


def sqlite_read_only(path: str) -> Callable[[], sqlite3.Connection]:
    """A connection factory that opens the SQLite file at ``path`` for reading only, creating nothing.

    SQLite opens a WAL database read-only (``mode=ro``) through its ``-wal`` and ``-shm`` files,
    and creates them when they are missing (or fails, in a read-only directory). They exist while
    any process has the database open; when there is no ``-wal`` file, every committed write is in
    the database file itself, which is then read as ``immutable`` (no locks, no side files). A
    writer that opens the database meanwhile writes into a new ``-wal``, not into that file.
    """

    def connect() -> sqlite3.Connection:
        immutable = "" if os.path.exists(path + "-wal") else "&immutable=1"
        return sqlite3.connect(
            f"file:{quote(path)}?mode=ro{immutable}",
            uri=True,
            timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
            check_same_thread=False,
        )

    return connect


def give_up(state: RetryCallState) -> bool:
    """tenacity's stop: contention is waited out for LOCK_RETRY_SECONDS, an outage for OUTAGE_RETRY_SECONDS."""
    exc = state.outcome.exception() if state.outcome is not None else None
    budget = LOCK_RETRY_SECONDS if classify(exc) is Fault.CONTENTION else OUTAGE_RETRY_SECONDS
    return (state.seconds_since_start or 0.0) >= budget


def file_identity(path: str | None) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file at ``path``; None when there is none."""
    if not path:
        return None
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def listen(listeners: list[Callable[[], None]], listener: Callable[[], None]) -> Callable[[], None]:
    listeners.append(listener)
    return lambda: listeners.remove(listener) if listener in listeners else None


def execute(statement: Any, conn: Connection) -> None:
    conn.execute(statement)


class StoreCore:
    """The connection: opening a store, transactions retried whole on transient faults, migration,
    checkpoints.
    """

    def __init__(
        self,
        url: str | os.PathLike[str] | None = None,
        *,
        clock: Clock | None = None,
        batch_min: int = BATCH_MIN,
        read_only: bool = False,
    ) -> None:
        if isinstance(batch_min, bool) or not isinstance(batch_min, int) or batch_min < 1:
            raise ValueError(f"batch_min must be an int of at least 1, got {batch_min!r}")
        self.batch_min = batch_min
        """From this many items on, a batch method writes a few statements per chunk."""
        self.read_only = read_only
        """Opened for reading only: nothing is created, upgraded or written (a write raises StoreError)."""
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
            if read_only:
                engine_kwargs["connect_args"] = {"options": "-c default_transaction_read_only=on"}
        if is_sqlite:
            path = self.url.split(":///", 1)[1] if ":///" in self.url else ""
            if path and path != ":memory:" and not path.startswith("file:"):
                self.path = path
            if read_only:
                if self.path is None:
                    raise StoreError(f"a read-only store needs a SQLite file, not {mask_url(self.url)}")
                if not os.path.isfile(self.path):
                    raise DatabaseNotFound(f"no database at {self.path}: reading does not create one")
                if not os.access(self.path, os.R_OK):
                    raise StoreError(f"cannot read the database at {self.path}: permission denied")
                engine_kwargs["creator"] = sqlite_read_only(self.path)
            elif path and path != ":memory:":
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
                sqlite_wal_mode=not read_only,
                on_connect_statements=on_connect,
                engine_kwargs=engine_kwargs,
            )
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise StoreError(f"cannot open the schedule store at {mask_url(self.url)}: {exc}") from exc
        self.dialect = self.db.engine.dialect.name if self.db.engine else "unknown"
        self._direct = DirectStatements(self.dialect)
        if is_sqlite and self.db.engine is not None:
            begin_immediate(self.db.engine, "BEGIN" if read_only else "BEGIN IMMEDIATE")
        if self.dialect == "postgresql" and self.db.engine is not None:
            note_writes(self.db.engine)
        self.origin = uuid.uuid4().hex
        """This store's name in its change notifications, so that a feed can tell its own apart."""
        self._watchers: builtins.list[tuple[Callable[[], None], Callable[[], None]]] = []
        self._retrying = Retrying(
            retry=retry_if_exception(is_transient),
            stop=give_up,
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
            self._check_schema() if read_only else self._migrate()
        except BaseException:
            self.db.close()
            raise
        self._identity = file_identity(self.path)

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` after this store changes schedules or creates runs; returns an unsubscribe."""
        return listen(self._listeners, listener)

    def subscribe_alerts(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` after this store queues an alert; returns an unsubscribe."""
        return listen(self._alert_listeners, listener)

    def _changed(self) -> None:
        for listener in list(self._listeners):
            listener()

    def close(self) -> None:
        """Close every connection; the store cannot be used afterwards."""
        self.db.close()

    def __enter__(self) -> Self:
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
                raise DatabaseUnavailable(f"database unavailable on {self.dialect} at {self.where}: {cause}") from exc
            raise StoreError(f"database error on {self.dialect} at {self.where}: {cause}") from exc

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
        found = file_identity(self.path)
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
        # This thread's sqlite3 connection, in autocommit mode (see begin_immediate): a PRAGMA
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
            if version <= schema.SCHEMA_VERSION:
                for index in schema.ADDED_INDEXES:  # looked for first: no lock is taken when it is there
                    if not conn.dialect.has_index(conn, index.table.name, str(index.name)):  # type: ignore[union-attr]
                        conn.execute(CreateIndex(index, if_not_exists=True))
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

    def _check_schema(self) -> None:
        """A read-only store's open: the schema must be there and this code's version; nothing is created."""

        def read(conn: Connection) -> str | None:
            if not inspect(conn).has_table(schema.meta.name):
                return None
            found = conn.execute(select(schema.meta.c.value).where(schema.meta.c.key == "schema_version")).scalar()
            return None if found is None else str(found)

        found = self._tx(read)
        where = self.where
        if found is None:
            raise SchemaMissing(f"{where} holds no scheduler schema: a command that writes, or the worker, creates it")
        version = int(found)
        if version > schema.SCHEMA_VERSION:
            raise SchemaTooNew(
                f"the database at {where} has schema version {version}, newer than this code's "
                f"{schema.SCHEMA_VERSION}: upgrade the scheduler before opening it"
            )
        if version < schema.SCHEMA_VERSION:
            raise SchemaMissing(
                f"the database at {where} has schema version {version}, older than this code's "
                f"{schema.SCHEMA_VERSION}: a read does not upgrade it; a command that writes, or the worker, does"
            )

    @property
    def where(self) -> str:
        """The database as messages name it: the SQLite file's path, or the URL without its password."""
        return self.path or mask_url(self.url)

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

    def _prepared(self, key: Any, build: Callable[[], Any]) -> Any:
        stmt = self._statements.get(key)
        if stmt is None:
            stmt = self._statements[key] = build()
        return stmt

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
            conn.info.pop(WROTE, None)
            for begin, _ in watchers:
                begin()
            began = True
            result = work(conn)
            if conn.info.pop(WROTE, False):
                conn.execute(select(func.pg_notify(NOTIFY_CHANNEL, self.origin)))
            return result

        try:
            yield run
        finally:
            if began:
                for _, end in watchers:
                    end()
