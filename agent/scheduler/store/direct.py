"""Hot statements on SQLite, compiled once per shape and handed to the driver as plain tuples.

``Connection.execute`` does, on every call, work whose result never changes for a prepared
statement: it looks up the compiled form, renders the placeholders of every ``IN`` list afresh,
and builds a dict of parameters per row before converting each value. For the few statements a
steady tick runs per run (the insert of a prepared run, the conditional moves of runs and
schedules) that bookkeeping cost as much as SQLite's own work. Here the SQL of each shape (the
columns given, the length of each ``IN`` list) is compiled once by SQLAlchemy, and each call
only converts the values with SQLAlchemy's own bind processors and passes them to
``exec_driver_sql``, which translates driver errors (a lock, a full disk) as ``execute`` does.
For the statements it accepts, what is written, the rowcount and any ``RETURNING`` rows are the
same as through ``execute`` (a test compares both on the store's own statements). It refuses at
compile time what it could not do the same: result columns that need converting (rows come as
the driver gives them), values SQLAlchemy would draw per call (``onupdate``), literal ``IN``
lists and ``literal_execute`` parameters.

An ``IN`` list is compiled for its length rounded up to a multiple of ``BUCKET``, and padded with
its last element (``x IN (a, b, b)`` is ``x IN (a, b)``): a statement has a few shapes, not
one per batch size, and a miss (a compile, a few milliseconds) stays rare.

On PostgreSQL ``execute`` is kept: its driver's many-row INSERT needs SQLAlchemy's
``insertmanyvalues``, and a round trip there costs more than the bookkeeping saved.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, DateTime
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.exc import StatementError
from sqlalchemy.sql.sqltypes import TupleType

Processor = Callable[[Any], Any]

# What fills a placeholder: a value given, an expanded list of values or of tuples, or a value the
# statement itself holds (a literal in it, bound already converted).
_VALUE, _LIST, _TUPLES, _CONSTANT = "value", "list", "tuples", "constant"


@dataclass(frozen=True, slots=True)
class _Slot:
    name: str
    kind: str
    processors: tuple[Processor | None, ...]
    size: int = 0
    """An IN list's bucket: how many items its placeholders take."""
    constant: Any = None


#: An IN list's length is rounded up to a multiple of this (its last element repeated).
BUCKET = 16
#: Shapes kept per store; the oldest goes first. The store's statements with their buckets need a few hundred.
MAX_SHAPES = 1024


def _bucket(length: int) -> int:
    return -(-length // BUCKET) * BUCKET


_PROBES = tuple(
    datetime.fromisoformat(text)
    for text in (
        "2027-03-01 12:30:05.123456",
        "1999-12-31 23:59:59",
        "0987-01-02 03:04:05.000006",
        "9999-12-31 23:59:59.999999",
    )
)


def _iso(value: Any) -> Any:
    return value.isoformat(" ", "microseconds")


def _faster(processor: Processor) -> Processor:
    """SQLite's DATETIME processor formats through a dict and ``%``; for a naive datetime (the store
    writes naive UTC) ``isoformat`` gives the same text at a fifth of the cost. Used only when it
    gives what ``processor`` gives on every probe; anything else still goes to ``processor``."""
    try:
        same = all(processor(p) == _iso(p) for p in _PROBES)
    except Exception:
        same = False
    if not same:
        return processor

    def process(value: Any) -> Any:
        if type(value) is datetime and value.tzinfo is None:
            return _iso(value)
        return processor(value)

    return process


def _processor(type_: Any, dialect: Dialect) -> Processor | None:
    processor: Processor | None = type_.dialect_impl(dialect).bind_processor(dialect)
    if processor is not None and isinstance(type_, DateTime):
        return _faster(processor)
    return processor


class _Shape:
    """One statement compiled for one shape of parameters: its SQL and how to fill its placeholders."""

    __slots__ = ("_converts", "_get", "_slots", "sql")

    def __init__(self, sql: str, slots: list[_Slot]) -> None:
        self.sql = sql
        self._slots = tuple(slots)
        self._get = None
        if len(slots) > 1 and all(slot.kind is _VALUE for slot in slots):
            self._get = itemgetter(*(slot.name for slot in slots))
        self._converts = tuple(
            (i, p, _none_to_none(p)) for i, slot in enumerate(slots) if (p := slot.processors[0]) is not None
        )

    def values(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        """The driver's parameters, in placeholder order (KeyError, TypeError or ValueError if they do not fit)."""
        if self._get is not None:  # one value per placeholder: taken in one call, converted where needed
            if not self._converts:
                return self._get(params)  # type: ignore[no-any-return]
            out = list(self._get(params))
            for i, p, skip_none in self._converts:
                v = out[i]
                if v is not None or not skip_none:
                    out[i] = p(v)
            return tuple(out)
        flat: list[Any] = []
        for slot in self._slots:
            kind, one = slot.kind, slot.processors[0]
            if kind is _CONSTANT:
                flat.append(slot.constant)
                continue
            value = params[slot.name]
            if kind is _VALUE:
                flat.append(value if one is None else one(value))
                continue
            items = list(value)
            if items:  # padded to its bucket with its last element: the same set
                items += [items[-1]] * (slot.size - len(items))
            if len(items) != slot.size:
                raise ValueError(f"{slot.name} has {len(value)} items, compiled for up to {slot.size}")
            if kind is _LIST:
                flat.extend(items if one is None else map(one, items))
            else:
                processors = slot.processors
                for item in items:
                    flat.extend(v if p is None else p(v) for v, p in zip(item, processors, strict=True))
        return tuple(flat)


def _none_to_none(processor: Processor) -> bool:
    """Whether ``processor`` keeps None as None (a JSON column's does not: it writes ``null``)."""
    try:
        return processor(None) is None
    except Exception:
        return False


def _refused(why: str) -> ValueError:
    return ValueError(f"not a statement to run directly: {why}")


class DirectStatements:
    """The compiled shapes of a store's hot statements, on one dialect; shared by the store's threads."""

    def __init__(self, dialect_name: str) -> None:
        self.enabled = dialect_name == "sqlite"
        self._shapes: dict[tuple[Any, ...], _Shape] = {}
        self._compiling = threading.Lock()

    def execute(self, conn: Connection, stmt: Any, params: Mapping[str, Any]) -> Any:
        """``conn.execute(stmt, params)`` (its CursorResult); ``params`` may hold lists (or tuples)
        for the statement's expanding binds."""
        if not self.enabled:
            return conn.execute(stmt, params)
        lengths = tuple(_bucket(len(v)) if isinstance(v, list | tuple) else -1 for v in params.values())
        key = (stmt, tuple(params), lengths)
        shape = self._shapes.get(key) or self._compile(key, conn, stmt, params, many=False)
        try:
            values = shape.values(params)
        except (KeyError, TypeError, ValueError) as exc:
            raise StatementError(f"parameters do not fit: {exc!r}", shape.sql, None, exc) from exc
        return conn.exec_driver_sql(shape.sql, values)

    def executemany(self, conn: Connection, stmt: Any, rows: Sequence[Mapping[str, Any]]) -> int:
        """``conn.execute(stmt, rows)`` for rows of the same keys and no expanding binds; the rowcount.
        No rows: nothing runs."""
        if not rows:
            return 0
        if not self.enabled:
            return int(conn.execute(stmt, list(rows)).rowcount)
        key = (stmt, tuple(rows[0]), None)
        shape = self._shapes.get(key) or self._compile(key, conn, stmt, rows[0], many=True)
        values = shape.values
        try:
            params = [values(row) for row in rows]
        except (KeyError, TypeError, ValueError) as exc:
            raise StatementError(f"parameters do not fit: {exc!r}", shape.sql, None, exc) from exc
        return int(conn.exec_driver_sql(shape.sql, params).rowcount)

    def _compile(
        self, key: tuple[Any, ...], conn: Connection, stmt: Any, params: Mapping[str, Any], *, many: bool
    ) -> _Shape:
        with self._compiling:  # one thread compiles and evicts at a time; readers only look up
            known = self._shapes.get(key)
            if known is not None:
                return known
            shape = _shape_of(conn.dialect, stmt, params, many=many)
            while len(self._shapes) >= MAX_SHAPES:
                del self._shapes[next(iter(self._shapes))]
            self._shapes[key] = shape
            return shape


def _shape_of(dialect: Dialect, stmt: Any, params: Mapping[str, Any], *, many: bool) -> _Shape:
    for column in getattr(stmt, "exported_columns", ()):
        if column.type.dialect_impl(dialect).result_processor(dialect, None) is not None:
            raise _refused(f"its result column {column.name} needs converting")
    # As execute compiles: an INSERT or UPDATE sets the columns its parameters name.
    keys = sorted(params) if stmt.is_insert or stmt.is_update else None
    compiled = stmt.compile(dialect=dialect, column_keys=keys)
    if not compiled.positional:
        raise _refused("its parameters are not positional")
    if compiled.literal_execute_params:
        raise _refused("it renders literal_execute parameters into its SQL")
    per_call = {c.key for c in (*compiled.insert_prefetch, *compiled.update_prefetch)}
    sizes = {k: _bucket(len(v)) for k, v in params.items() if isinstance(v, list | tuple)}
    slots: list[_Slot] = []
    missing = []
    for name in compiled.positiontup:
        bind = compiled.binds[name]
        if name not in params:
            if bind.expanding:
                raise _refused(f"{name} is an IN list of literals")
            if name in per_call or bind.required or bind.callable is not None:
                missing.append(name)  # a value SQLAlchemy would draw per call (onupdate, say)
                continue
            processor = _processor(bind.type, dialect)
            constant = bind.value if processor is None else processor(bind.value)
            slots.append(_Slot(name, _CONSTANT, (None,), constant=constant))
        elif not bind.expanding:
            slots.append(_Slot(name, _VALUE, (_processor(bind.type, dialect),)))
        elif many:
            raise _refused(f"{name} is an IN list, and executemany takes none")
        elif name not in sizes:
            raise _refused(f"{name} is an IN list, given {type(params[name]).__name__}")
        elif isinstance(bind.type, TupleType):
            processors = tuple(_processor(t, dialect) for t in bind.type.types)
            slots.append(_Slot(name, _TUPLES, processors, size=sizes[name]))
        else:
            slots.append(_Slot(name, _LIST, (_processor(bind.type, dialect),), size=sizes[name]))
    if missing:
        raise _refused(f"it is not given every value; missing: {', '.join(sorted(missing))}")
    sample = {k: v for k, v in params.items() if k in compiled.binds}
    for name, size in sizes.items():  # the SQL for the bucket: the IN lists at its length
        if name in compiled.binds and compiled.binds[name].expanding and sample[name]:
            items = list(sample[name])
            sample[name] = items + [items[-1]] * (size - len(items))
    return _Shape(compiled.construct_expanded_state(sample).statement, slots)
