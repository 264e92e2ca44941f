"""Change feeds: how an engine learns, within a fraction of a second, that another process wrote.

A feed answers one question, ``changed()``: did a connection other than this store's write to the
database since the last call? Between calls it wakes the engine (``on_change``) from its own
thread. A feed that cannot tell (its connection is lost) says so with ``live``; the engine then
falls back to scanning every ``tick_seconds``, and a feed that comes back reports a change, since
what happened while it was away is unknown. A feed never raises into the engine.

SQLite: ``PRAGMA data_version`` on a dedicated connection changes when another connection commits.
The store tells the feed when its own transactions begin (holding the write lock, so nobody else
can commit until they end) and end; the feed takes in the store's own commits there, so they do
not look like changes made elsewhere. PostgreSQL: every store's writing transaction sends
``pg_notify`` (see ``ScheduleStore``) with the store's origin; a dedicated connection LISTENs on a
thread and ignores its own store's notifications.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable
from typing import Protocol

from sqlalchemy.engine import make_url

from ..errors import DatabaseReplaced
from ..store import NOTIFY_CHANNEL, EngineStore

log = logging.getLogger(__name__)

#: SQLite: ``PRAGMA data_version`` is checked this often (real seconds); one check costs microseconds.
POLL_SECONDS = 0.1
#: PostgreSQL: the listening thread looks up from its connection this often (real seconds), so that
#: ``stop()`` is noticed.
LISTEN_SECONDS = 0.25
#: A lost feed connection is opened again after this long, doubling up to RECONNECT_MAX_SECONDS.
RECONNECT_MIN_SECONDS = 0.1
RECONNECT_MAX_SECONDS = 5.0
#: How long opening a PostgreSQL feed connection may take before the attempt counts as failed.
CONNECT_TIMEOUT_SECONDS = 3


class ChangeFeed(Protocol):
    """Tells an engine that another process wrote to its database."""

    @property
    def live(self) -> bool:
        """Whether the feed can see changes now; while not, the engine scans on its own."""
        ...

    def start(self, on_change: Callable[[], None]) -> None:
        """Begin watching; ``on_change()`` is called from the feed's thread when something changed."""
        ...

    def stop(self) -> None:
        """Stop watching and close the feed's connection."""
        ...

    def changed(self) -> bool:
        """Whether another process wrote since the last call (then True once, until the next change)."""
        ...


def open_feed(store: EngineStore) -> ChangeFeed:
    """The feed of ``store``'s backend: data_version for a SQLite file, LISTEN for PostgreSQL."""
    if store.dialect == "postgresql":
        return PostgresChangeFeed(store)
    if store.dialect == "sqlite" and store.path is not None:
        return SqliteChangeFeed(store)
    return NoFeed()


class NoFeed:
    """No way to see other processes' writes (an in-memory database): the engine scans on its own."""

    live = False

    def start(self, on_change: Callable[[], None]) -> None:
        pass

    def stop(self) -> None:
        pass

    def changed(self) -> bool:
        return False


class SqliteChangeFeed:
    """``PRAGMA data_version`` on a dedicated connection, checked every POLL_SECONDS and on ``changed()``.

    Started inside a running event loop (the engine's), the check is a timer of that loop: a look
    costs microseconds, less than waking a thread of its own; elsewhere a thread checks.
    """

    def __init__(self, store: EngineStore, *, poll_seconds: float = POLL_SECONDS) -> None:
        if store.path is None:
            raise ValueError("a SQLite change feed needs a database file (store.path is None)")
        self._store = store
        self._path = store.path
        self._poll = poll_seconds
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._version: int | None = None
        self._own = 0
        """The store's transactions now open (their commits are the store's own)."""
        self._seen = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._unwatch: Callable[[], None] | None = None
        self._on_change: Callable[[], None] = lambda: None
        self.live = False

    def start(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change
        with self._lock:
            self._look()
            self._seen = False  # the engine's first tick scans anyway
        self._unwatch = self._store.watch_transactions(self._began, self._ended)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._thread = threading.Thread(target=self._run, name="scheduler-feed", daemon=True)
            self._thread.start()
        else:
            self._timer = loop.call_later(self._poll, self._on_timer, loop)

    def stop(self) -> None:
        self._stop.set()
        self.live = False  # a stopped feed sees nothing
        if self._timer is not None:
            self._timer.cancel()
        if self._unwatch is not None:
            self._unwatch()
        if self._thread is not None:
            self._thread.join(timeout=5 * self._poll + 1)
        with self._lock:
            self._close()

    def changed(self) -> bool:
        with self._lock:
            if not self._own:
                self._look()
            seen, self._seen = self._seen, False
        return seen

    def _began(self) -> None:
        # The store's transaction holds the write lock: what changed before it was written elsewhere.
        with self._lock:
            self._own += 1
            self._look()

    def _ended(self) -> None:
        # Taken in as the store's own. A commit by another process in the instant between this
        # transaction's end and this read is taken in too; the safety-net scan covers that case.
        with self._lock:
            self._own -= 1
            if not self._own:
                version = self._read()
                if version is not None:
                    self._version = version

    def _run(self) -> None:
        while not self._stop.wait(self._poll):
            self._check()

    def _on_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._stop.is_set() or loop.is_closed():
            return
        self._check()
        self._timer = loop.call_later(self._poll, self._on_timer, loop)

    def _check(self) -> None:
        with self._lock:
            if not self._own:
                self._look()
            seen = self._seen
        try:
            self._store.check_identity()
        except DatabaseReplaced:
            seen = True  # the engine's own check stops it
        if seen:
            self._on_change()

    def _look(self) -> None:
        """Compare data_version with the last one seen (under the lock)."""
        version = self._read()
        if version is None:
            return
        if self._version is not None and version != self._version:
            self._seen = True
        self._version = version

    def _read(self) -> int | None:
        """This connection's data_version; None (and the feed not live) when it cannot be read."""
        try:
            if self._conn is None:
                # mode=rw: never create the file (a deleted database must stay missing).
                self._conn = sqlite3.connect(
                    f"file:{self._path}?mode=rw", uri=True, isolation_level=None, check_same_thread=False, timeout=1
                )
                # Back after a loss: what changed meanwhile is unknown (versions are per connection).
                self._seen = self._seen or self._version is not None
                self._version = None
            row = self._conn.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error as exc:
            if self.live:
                log.warning("change feed on %s lost (%s): scanning every tick until it is back", self._path, exc)
            self._close()
            self.live = False
            return None
        if not self.live:
            log.debug("change feed on %s live", self._path)
            self.live = True
        return int(row[0])

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None


class PostgresChangeFeed:
    """LISTEN on a dedicated psycopg connection, in a thread; reconnects after a lost connection."""

    def __init__(self, store: EngineStore) -> None:
        url = make_url(store.url).set(drivername="postgresql")
        self._conninfo = url.render_as_string(hide_password=False)
        self._origin = store.origin
        self._seen = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_change: Callable[[], None] = lambda: None
        self.live = False

    def start(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change
        self._thread = threading.Thread(target=self._run, name="scheduler-feed", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.live = False  # a stopped feed sees nothing
        if self._thread is not None:
            self._thread.join(timeout=LISTEN_SECONDS + CONNECT_TIMEOUT_SECONDS + 1)

    def changed(self) -> bool:
        with self._lock:
            seen, self._seen = self._seen, False
        return seen

    def _note(self) -> None:
        with self._lock:
            self._seen = True
        self._on_change()

    def _run(self) -> None:
        import psycopg

        wait = RECONNECT_MIN_SECONDS
        connected_before = False
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.live = True
                    wait = RECONNECT_MIN_SECONDS
                    if connected_before:
                        log.info("change feed reconnected: one full scan for what was missed meanwhile")
                        self._note()  # notifications sent while it was away are gone
                    connected_before = True
                    while not self._stop.is_set():
                        for notify in conn.notifies(timeout=LISTEN_SECONDS):
                            if notify.payload != self._origin:
                                self._note()
            except Exception as exc:  # any failure only degrades the feed: the engine scans on its own
                if self.live:
                    log.warning("change feed lost (%s): scanning every tick until it is back", exc)
                    self._note()
                self.live = False
                self._stop.wait(wait)
                wait = min(wait * 2, RECONNECT_MAX_SECONDS)
        self.live = False
