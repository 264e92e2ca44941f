"""Hot statements on SQLite, compiled once per shape and handed to the driver as plain tuples.

``Connection.execute`` does, on every call, work whose result never changes for a prepared
statement: it looks up the compiled form, renders the placeholders of every ``IN`` list afresh,
and builds a dict of parameters per row before converting each value. For the few statements a
steady tick runs per run (the insert of a prepared run, the conditional moves of runs and
schedules) that bookkeeping cost as much as SQLite's own work. Here the SQL of each shape (the
columns given, the length of each ``IN`` list) is compiled once by SQLAlchemy, and each call
only converts the values with SQLAlchemy's own bind processors and passes them to
``exec_driver_sql``, which translates driver errors (a lock, a full disk) as ``execute`` does.
What is written, the rowcount and any ``RETURNING`` rows are the same as through ``execute``;
the rows come as the driver gives them, so only statements whose result columns need no
conversion (text, integers) are accepted.

On PostgreSQL ``execute`` is kept: its driver's many-row INSERT needs SQLAlchemy's
``insertmanyvalues``, and a round trip there costs more than the bookkeeping saved.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, DateTime
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.sql.sqltypes import TupleType

Processor = Callable[[Any], Any]

# What fills a placeholder: a value given, an expanded list of values or of tuples, or a value the
# statement itself holds (a literal in its WHERE clause, bound already processed).
_VALUE, _LIST, _TUPLES, _CONSTANT = "value", "list", "tuples", "constant"
_Slot = tuple[str, str, tuple[Processor | None, ...], Any]

#: Shapes kept per store; the oldest goes first. A steady load uses a handful (the lengths of its chunks).
MAX_SHAPES = 256

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
            return value.isoformat(" ", "microseconds")
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
        if len(slots) > 1 and all(kind is _VALUE for _, kind, _, _ in slots):
            self._get = itemgetter(*(name for name, _, _, _ in slots))
        self._converts = tuple((i, p, _none_to_none(p)) for i, (_, _, (p, *_), _) in enumerate(slots) if p)

    def values(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
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
        for name, kind, processors, constant in self._slots:
            one = processors[0]
            if kind is _CONSTANT:
                flat.append(constant)
            elif kind is _VALUE:
                value = params[name]
                flat.append(value if one is None else one(value))
            elif kind is _LIST:
                flat.extend(params[name] if one is None else map(one, params[name]))
            else:
                for item in params[name]:
                    flat.extend(v if p is None else p(v) for v, p in zip(item, processors, strict=True))
        return tuple(flat)


def _none_to_none(processor: Processor) -> bool:
    """Whether ``processor`` keeps None as None (a JSON column's does not: it writes ``null``)."""
    try:
        return processor(None) is None
    except Exception:
        return False


class DirectStatements:
    """The compiled shapes of a store's hot statements, on one dialect."""

    def __init__(self, dialect_name: str) -> None:
        self.enabled = dialect_name == "sqlite"
        self._shapes: dict[tuple[Any, ...], _Shape] = {}

    def execute(self, conn: Connection, stmt: Any, params: Mapping[str, Any]) -> Any:
        """``conn.execute(stmt, params)`` (its CursorResult); ``params`` may hold lists for the
        statement's expanding binds."""
        if not self.enabled:
            return conn.execute(stmt, params)
        lengths = tuple(len(v) if isinstance(v, list) else -1 for v in params.values())
        key = (stmt, tuple(params), lengths)
        shape = self._shapes.get(key) or self._compile(key, conn, stmt, params)
        return conn.exec_driver_sql(shape.sql, shape.values(params))

    def executemany(self, conn: Connection, stmt: Any, rows: Sequence[Mapping[str, Any]]) -> int:
        """``conn.execute(stmt, rows)`` for rows of the same keys (no expanding binds); the rowcount."""
        if not self.enabled or not rows:
            return int(conn.execute(stmt, list(rows)).rowcount)
        key = (stmt, tuple(rows[0]), None)
        shape = self._shapes.get(key) or self._compile(key, conn, stmt, rows[0])
        values = shape.values
        return int(conn.exec_driver_sql(shape.sql, [values(row) for row in rows]).rowcount)

    def _compile(self, key: tuple[Any, ...], conn: Connection, stmt: Any, params: Mapping[str, Any]) -> _Shape:
        dialect = conn.dialect
        for column in getattr(stmt, "exported_columns", ()):
            if column.type.dialect_impl(dialect).result_processor(dialect, None) is not None:
                raise ValueError(f"a direct statement returns rows as the driver gives them; {column.name} needs more")
        # An INSERT sets the columns given; an UPDATE only what its statement names.
        compiled = stmt.compile(dialect=dialect, column_keys=list(params) if stmt.is_insert else None)
        per_call = {c.key for c in (*compiled.insert_prefetch, *compiled.update_prefetch)}
        expanded = compiled.construct_expanded_state({k: v for k, v in params.items() if k in compiled.binds})
        slots: list[_Slot] = []
        missing = []
        for name in compiled.positiontup:
            bind = compiled.binds[name]
            if name not in params:
                if name in per_call or bind.required or bind.callable is not None:
                    missing.append(name)  # a value SQLAlchemy would draw per call (onupdate, say)
                    continue
                processor = _processor(bind.type, dialect)
                constant = bind.value if processor is None else processor(bind.value)
                slots.append((name, _CONSTANT, (None,), constant))
            elif not bind.expanding:
                slots.append((name, _VALUE, (_processor(bind.type, dialect),), None))
            elif isinstance(bind.type, TupleType):
                slots.append((name, _TUPLES, tuple(_processor(t, dialect) for t in bind.type.types), None))
            else:
                slots.append((name, _LIST, (_processor(bind.type, dialect),), None))
        if missing:
            raise ValueError(f"a direct statement is given every value; missing: {', '.join(sorted(missing))}")
        if len(self._shapes) >= MAX_SHAPES:
            del self._shapes[next(iter(self._shapes))]
        shape = self._shapes[key] = _Shape(expanded.statement, slots)
        return shape
