"""The store's hot statements on SQLite, compiled once per shape and run through the driver: each
writes, counts and returns exactly what ``Connection.execute`` does with the same statement."""

from __future__ import annotations

import asyncio
import itertools
import random
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import IntegrityError, OperationalError, StatementError

from agent.scheduler import FakeClock, ScheduleDefinition, ScheduleStore, schema
from agent.scheduler.db_faults import is_transient
from agent.scheduler.engine import ScheduleEngine
from agent.scheduler.store import direct
from agent.scheduler.store.direct import DirectStatements
from agent.scheduler.tasks import RunContext, TaskRegistry
from tests.conftest import T0

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
        return sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr)


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
    by_ids = sa.select(R.c.run_id).where(R.c.run_id.in_(sa.bindparam("ids", expanding=True)))
    refusals: list[tuple[Any, Any, str]] = [
        # The version is drawn per call by SQLAlchemy (onupdate): a direct statement must be given it.
        (
            sa.update(s).where(s.c.id == sa.bindparam("w_id")).values(name=sa.bindparam("v_name")),
            {"w_id": "x", "v_name": "y"},
            "missing: version",
        ),
        # Instants come back as text from the driver: only rows of text and integers are read here.
        (sa.select(R.c.intended_run_at), {}, "intended_run_at needs converting"),
        (sa.select(R.c.run_id).where(R.c.run_id.in_(["a", "b"])), {}, "IN list of literals"),
        (
            sa.select(R.c.run_id).where(R.c.attempt == sa.bindparam("n", literal_execute=True)),
            {"n": 1},
            "literal_execute",
        ),
    ]
    with engines[0].begin() as conn:
        for stmt, params, why in refusals:
            with pytest.raises(ValueError, match=why):
                statements.execute(conn, stmt, params)
        with pytest.raises(ValueError, match="executemany takes none"):
            statements.executemany(conn, by_ids, [{"ids": ["a"]}])
        assert statements.executemany(conn, sa.insert(R), []) == 0  # no rows: nothing runs
    assert _table(engines[0], "schedules") == [] and _table(engines[0], "scheduled_runs") == []


def test_an_update_sets_the_columns_its_parameters_name_as_execute_does(engines: tuple[sa.Engine, sa.Engine]) -> None:
    bare = sa.update(R).where(R.c.run_id == sa.bindparam("w_key"))

    def work(conn: sa.Connection, statements: DirectStatements) -> None:
        statements.executemany(conn, sa.insert(R), [_run(i) for i in range(3)])
        statements.execute(conn, bare, {"w_key": "run_0001", "owner": "w9"})

    _both(engines, work)
    assert _table(engines[0], "scheduled_runs") == _table(engines[1], "scheduled_runs")
    assert any("w9" in row for row in _table(engines[0], "scheduled_runs"))


def test_in_lists_share_a_shape_per_bucket_and_keep_their_meaning(engines: tuple[sa.Engine, sa.Engine]) -> None:
    statements = DirectStatements("sqlite")
    moved = (
        sa.update(R)
        .where(sa.tuple_(R.c.run_id, R.c.attempt).in_(sa.bindparam("keys", expanding=True)))
        .values(reason=sa.bindparam("v_reason"))
        .returning(R.c.run_id)
    )
    by_ids = sa.select(R.c.run_id).where(R.c.run_id.in_(sa.bindparam("ids", expanding=True)))
    with engines[0].begin() as conn:
        statements.executemany(conn, sa.insert(R), [_run(i) for i in range(50)])
        for n in range(1, 49):
            ids = [f"run_{i:04d}" for i in range(n)]
            assert sorted(r[0] for r in statements.execute(conn, by_ids, {"ids": ids})) == ids
            as_tuple = tuple(ids)  # a tuple is as good as a list
            assert sorted(r[0] for r in statements.execute(conn, by_ids, {"ids": as_tuple})) == ids
            won = statements.execute(conn, moved, {"keys": [(i, 1) for i in ids], "v_reason": f"n={n}"})
            assert sorted(r[0] for r in won) == ids  # each row once, padding or not
    shapes = [key for key in statements._shapes if key[0] is by_ids]
    assert len(shapes) == 48 // direct.BUCKET  # 1-16, 17-32, 33-48


def test_parameters_that_do_not_fit_are_a_statement_error(engines: tuple[sa.Engine, sa.Engine]) -> None:
    """The store turns SQLAlchemy's errors into StoreError; a bare TypeError would escape it."""
    statements = DirectStatements("sqlite")
    with pytest.raises(StatementError), engines[0].begin() as conn:
        statements.executemany(conn, sa.insert(R), [_run(1), _run(2, intended_run_at="yesterday")])
    with pytest.raises(StatementError), engines[0].begin() as conn:
        statements.executemany(conn, sa.insert(R), [_run(1), {k: v for k, v in _run(2).items() if k != "status"}])
    assert _table(engines[0], "scheduled_runs") == []


def test_driver_errors_reach_the_store_as_sqlalchemy_errors(engines: tuple[sa.Engine, sa.Engine]) -> None:
    """The store's fault handling (retry a lock, an outage) reads SQLAlchemy's exceptions."""
    statements = DirectStatements("sqlite")
    with pytest.raises(IntegrityError), engines[0].begin() as conn:
        statements.executemany(conn, sa.insert(R), [_run(1), _run(1)])
    assert _table(engines[0], "scheduled_runs") == []  # the transaction rolled back whole
    path = engines[0].url.database
    assert path is not None
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    quick = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.05})
    try:
        with pytest.raises(OperationalError) as caught, quick.begin() as conn:
            statements.executemany(conn, sa.insert(R), [_run(1)])
        assert is_transient(caught.value)  # retried by the store, as a lock through execute is
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        quick.dispose()


def test_threads_sharing_a_cache_that_turns_over_each_get_their_own_rows(
    engines: tuple[sa.Engine, sa.Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(direct, "MAX_SHAPES", 4)
    monkeypatch.setattr(direct, "BUCKET", 1)  # every length its own shape: the cache turns over all the time
    statements = DirectStatements("sqlite")
    by_ids = sa.select(R.c.run_id).where(R.c.run_id.in_(sa.bindparam("ids", expanding=True)))
    with engines[0].begin() as conn:
        statements.executemany(conn, sa.insert(R), [_run(i) for i in range(40)])
    failures: list[BaseException] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        try:
            with engines[0].connect() as conn:
                for _ in range(60):
                    ids = [f"run_{i:04d}" for i in range(rng.randint(1, 40))]
                    assert sorted(r[0] for r in statements.execute(conn, by_ids, {"ids": ids})) == ids
                    assert len(statements._shapes) <= 4
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_the_store_writes_the_same_rows_through_the_driver_and_through_execute(tmp_path: Path) -> None:
    """The store's own statements (materialize and advance, claim, finish with outcomes, failures
    counted and reset, the breaker): an engine's simulated seconds on two stores, one with its
    direct statements turned off, compared as SQLite stores them."""
    worlds = [_engine_world(tmp_path / "direct.db", direct=True), _engine_world(tmp_path / "execute.db", direct=False)]
    for table in ("scheduled_runs", "dead_letters"):
        assert _text(worlds[0], table) == _text(worlds[1], table)
    assert _text(worlds[0], "schedules", drop="version") == _text(worlds[1], "schedules", drop="version")
    assert len(_text(worlds[0], "scheduled_runs")) > 100


def _engine_world(path: Path, *, direct: bool) -> Path:
    clock = FakeClock(T0)
    store = ScheduleStore(f"sqlite:///{path}", clock=clock, batch_min=1)
    store._direct.enabled = direct
    tasks = TaskRegistry()

    async def task(ctx: RunContext) -> str:
        n = int(ctx.schedule.name[1:])
        if n % 5 == 0:
            raise RuntimeError(f"boom {n}")  # three in a row trip the breaker
        return f"done {n} at {ctx.intended_run_at:%S}" if n % 2 else ""

    tasks.add("task", task)
    count = itertools.count()
    with patch("agent.scheduler.store.runs.new_id", side_effect=lambda prefix: f"{prefix}_{next(count):06d}"):
        store.add_many(
            ScheduleDefinition(
                id=f"sch_{i:03d}",
                name=f"s{i}",
                trigger_type="interval",
                expression="1s",
                target="task",
                breaker_threshold=3,
            )
            for i in range(30)
        )

        async def go() -> None:
            engine = ScheduleEngine(store, tasks, clock=clock, tick_seconds=3600, worker_id="w1")
            await engine.start()
            await engine.run_until(clock.now() + timedelta(seconds=6))
            await engine.wait_idle()
            await engine.stop()

        asyncio.run(go())
    store.close()
    return path


def _text(path: Path, table: str, *, drop: str = "") -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})") if row[1] != drop]
        return sorted(conn.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall(), key=repr)
