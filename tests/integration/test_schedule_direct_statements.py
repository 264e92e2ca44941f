"""The store's hot statements on SQLite, compiled once per shape and run through the driver: each
writes, counts and returns exactly what ``Connection.execute`` does with the same statement."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import IntegrityError

from agent.scheduler import schema
from agent.scheduler.store import direct
from agent.scheduler.store.direct import DirectStatements

R = schema.scheduled_runs


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[tuple[sa.Engine, sa.Engine]]:
    """Two SQLite files with the scheduler's tables: one written through the driver, one through execute."""
    pair = []
    for name in ("direct", "execute"):
        engine = sa.create_engine(f"sqlite:///{tmp_path / name}.db")
        schema.metadata.create_all(engine)
        pair.append(engine)
    yield pair[0], pair[1]
    for engine in pair:
        engine.dispose()


def _table(engine: sa.Engine, table: str) -> list[tuple[Any, ...]]:
    """The rows as SQLite stores them (text, not what SQLAlchemy makes of it), in a stable order."""
    path = engine.url.database
    assert path is not None
    with sqlite3.connect(path) as conn:
        return sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr)  # noqa: S608


def _run(i: int, **over: Any) -> dict[str, Any]:
    at = datetime(2027, 3, 1, 12, 0) + timedelta(seconds=i, microseconds=(i * 7919) % 3 * 250_000)
    row: dict[str, Any] = {
        "run_id": f"run_{i:04d}",
        "schedule_id": f"sch_{i % 7}",
        "schedule_name": f"name é {i % 7}",
        "intended_run_at": at,
        "occurrence_key": f"{at.isoformat()}Z",
        "status": "pending",
        "attempt": 1,
        "origin": "schedule",
        "params": {"n": i, "text": "ünï", "nested": [1, None, True]},
        "catch_up": i % 2 == 0,
        "coalesced_from": 1,
        "started_at": None,
        "completed_at": None,
        "outcome": None,
        "error_type": None,
        "error": None,
        "error_traceback": None,
        "reason": None,
        "checkpoint": None if i % 3 else {"cursor": i},
        "owner": None,
        "lease_expires_at": None,
        "heartbeat_at": None,
        "prepared": True,
        "starts": 0,
        "created_at": at - timedelta(seconds=1),
        "updated_at": at - timedelta(seconds=1),
    }
    row.update(over)
    return row


def _both(engines: tuple[sa.Engine, sa.Engine], work: Any) -> tuple[Any, Any]:
    """``work(conn, statements)`` once through the driver and once through ``execute``, each committed."""
    out = []
    for engine, dialect_name in zip(engines, ("sqlite", "postgresql"), strict=True):
        statements = DirectStatements(dialect_name)  # any other dialect's instance goes through execute
        with engine.begin() as conn:
            out.append(work(conn, statements))
    return out[0], out[1]


def test_insert_and_conditional_moves_write_the_same_rows(engines: tuple[sa.Engine, sa.Engine]) -> None:
    insert = sqlite_dialect.insert(R).on_conflict_do_nothing()
    claim = (
        sa.update(R)
        .where(
            sa.and_(
                sa.tuple_(R.c.run_id, R.c.attempt, R.c.starts).in_(sa.bindparam("pairs", expanding=True)),
                R.c.status == sa.bindparam("w_status"),
            )
        )
        .values(
            status=sa.bindparam("v_status"),
            started_at=sa.bindparam("v_started_at", type_=sa.DateTime),
            owner=sa.bindparam("v_owner"),
            prepared=sa.bindparam("v_prepared", type_=sa.Boolean),
        )
        .returning(R.c.run_id)
    )
    fill = (
        sa.update(R)
        .where(R.c.run_id == sa.bindparam("w_key"))
        .values(
            completed_at=sa.bindparam("v_completed_at", type_=sa.DateTime),
            outcome=sa.bindparam("v_outcome"),
            checkpoint=sa.bindparam("v_checkpoint", type_=schema._JSON),
        )
    )
    rows = [_run(i) for i in range(40)]
    duplicates = [_run(i, run_id=f"again_{i}") for i in range(5)]  # same occurrences: nothing inserted
    started = datetime(987, 1, 2, 3, 4, 5)  # a year below 1000 is still four digits in the text

    def work(conn: sa.Connection, statements: DirectStatements) -> tuple[Any, ...]:
        inserted = statements.executemany(conn, insert, rows)
        again = statements.executemany(conn, insert, duplicates)
        pairs = [(r["run_id"], 1, 0) for r in rows[:30]] + [("run_0035", 2, 0), ("nope", 1, 0)]  # two miss
        won = sorted(
            row[0]
            for row in statements.execute(
                conn,
                claim,
                {
                    "pairs": pairs,
                    "w_status": "pending",
                    "v_status": "running",
                    "v_started_at": started,
                    "v_owner": "w1",
                    "v_prepared": False,
                },
            )
        )
        filled = statements.executemany(
            conn,
            fill,
            [
                {
                    "w_key": run_id,
                    "v_completed_at": started + timedelta(microseconds=i),
                    "v_outcome": None if i % 2 else f"done {i}",
                    "v_checkpoint": None if i % 4 else {"at": i},
                }
                for i, run_id in enumerate(won)
            ],
        )
        return inserted, again, won, filled

    via_driver, via_execute = _both(engines, work)
    assert via_driver == via_execute
    inserted, again, won, filled = via_driver
    assert (inserted, again, len(won), filled) == (40, 0, 30, 30)
    assert _table(engines[0], "scheduled_runs") == _table(engines[1], "scheduled_runs")


def test_scalar_and_empty_in_lists_and_reads(engines: tuple[sa.Engine, sa.Engine]) -> None:
    s = schema.schedules
    by_ids = sa.select(R.c.run_id, R.c.attempt).where(R.c.run_id.in_(sa.bindparam("ids", expanding=True)))
    due = sa.select(R.c.run_id).where(  # literals in the statement are bound by it, converted once
        sa.and_(
            R.c.intended_run_at <= sa.bindparam("now", type_=sa.DateTime),
            R.c.status != "running",
            R.c.created_at != datetime(2027, 3, 1, 11, 59, 59),
        )
    )
    versions = sa.update(s).where(s.c.id.in_(sa.bindparam("ids", expanding=True))).values(version=sa.bindparam("v"))
    # As a schedule's advance: each row only from the instant it was read with (a tuple with a DateTime).
    moved = (
        sa.update(R)
        .where(sa.tuple_(R.c.run_id, R.c.intended_run_at).in_(sa.bindparam("keys", expanding=True)))
        .values(reason=sa.bindparam("v_reason"))
        .returning(R.c.run_id)
    )

    def work(conn: sa.Connection, statements: DirectStatements) -> tuple[Any, ...]:
        statements.executemany(conn, sqlite_dialect.insert(R), [_run(i) for i in range(10)])
        found = [sorted(statements.execute(conn, by_ids, {"ids": ids}).all()) for ids in (["run_0003"], [], ["x"])]
        some = sorted(statements.execute(conn, by_ids, {"ids": [f"run_{i:04d}" for i in range(0, 10, 3)]}).all())
        early = sorted(statements.execute(conn, due, {"now": datetime(2027, 3, 1, 12, 0, 4)}).all())
        none = statements.execute(conn, versions, {"ids": [], "v": 7}).rowcount
        rows = [_run(i) for i in range(10)]
        keys = [(r["run_id"], r["intended_run_at"]) for r in rows[:6]] + [("run_0007", datetime(2027, 1, 1))]
        hit = sorted(r[0] for r in statements.execute(conn, moved, {"keys": keys, "v_reason": "moved"}))
        return found, some, early, none, hit

    via_driver, via_execute = _both(engines, work)
    assert via_driver == via_execute
    found, some, early, _, hit = via_driver
    assert hit == [f"run_{i:04d}" for i in range(6)]  # whole seconds among them
    assert found == [[("run_0003", 1)], [], []]
    assert [r[0] for r in some] == ["run_0000", "run_0003", "run_0006", "run_0009"]
    assert [r[0] for r in early] == [f"run_{i:04d}" for i in range(1, 4)]  # run 4 is at 12:00:04.5
    assert _table(engines[0], "scheduled_runs") == _table(engines[1], "scheduled_runs")


def test_datetime_text_is_sqlalchemys_own() -> None:
    dialect = sqlite_dialect.dialect()
    theirs = sa.DateTime().dialect_impl(dialect).bind_processor(dialect)
    ours = direct._processor(sa.DateTime(), dialect)
    assert theirs is not None and ours is not None and ours is not theirs  # the faster one is in use
    rng = random.Random(15)
    low, high = datetime(1, 1, 2, tzinfo=UTC).timestamp(), datetime(9999, 12, 30, tzinfo=UTC).timestamp()
    for _ in range(20_000):
        instant = datetime.fromtimestamp(rng.uniform(low, high), UTC).replace(tzinfo=None)
        if rng.random() < 0.2:
            instant = instant.replace(microsecond=0)
        assert ours(instant) == theirs(instant), instant
    aware = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
    assert ours(aware) == theirs(aware)  # anything but a naive datetime is SQLAlchemy's to convert
    assert ours(None) is None


def test_a_processor_that_differs_is_kept() -> None:
    def other(value: Any) -> Any:
        return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%S")

    assert direct._faster(other) is other


def test_refuses_what_it_cannot_do_the_same(engines: tuple[sa.Engine, sa.Engine]) -> None:
    s = schema.schedules
    statements = DirectStatements("sqlite")
    with engines[0].begin() as conn:
        # The version is drawn per call by SQLAlchemy (onupdate): a direct statement must be given it.
        rename = sa.update(s).where(s.c.id == sa.bindparam("w_id")).values(name=sa.bindparam("v_name"))
        with pytest.raises(ValueError, match="missing: version"):
            statements.execute(conn, rename, {"w_id": "x", "v_name": "y"})
        # Instants come back as text from the driver: only rows of text and integers are read here.
        with pytest.raises(ValueError, match="intended_run_at needs more"):
            statements.execute(conn, sa.select(R.c.intended_run_at), {})
    assert _table(engines[0], "schedules") == []


def test_driver_errors_reach_the_store_as_sqlalchemy_errors(engines: tuple[sa.Engine, sa.Engine]) -> None:
    """The store's fault handling (retry a lock, an outage) reads SQLAlchemy's exceptions."""
    statements = DirectStatements("sqlite")
    plain = sa.insert(R)
    with pytest.raises(IntegrityError), engines[0].begin() as conn:
        statements.executemany(conn, plain, [_run(1), _run(1)])
    assert _table(engines[0], "scheduled_runs") == []  # the transaction rolled back whole


def test_shapes_kept_are_bounded(engines: tuple[sa.Engine, sa.Engine], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(direct, "MAX_SHAPES", 8)
    statements = DirectStatements("sqlite")
    by_ids = sa.select(R.c.run_id).where(R.c.run_id.in_(sa.bindparam("ids", expanding=True)))
    with engines[0].begin() as conn:
        statements.executemany(conn, sqlite_dialect.insert(R), [_run(i) for i in range(30)])
        for n in range(1, 30):
            ids = [f"run_{i:04d}" for i in range(n)]
            assert sorted(r[0] for r in statements.execute(conn, by_ids, {"ids": ids})) == ids
            assert len(statements._shapes) <= 8
