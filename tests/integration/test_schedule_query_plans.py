"""What SQLite does with the statements the engine sends: every conditional write of a steady load
looks its rows up by primary key, whatever the size of its tables (no scan, no walk of the status
index), every read a full scan makes of idle schedules is an index search, and no read made while
runs start and are recorded walks a schedule's history of runs."""

from __future__ import annotations

import re
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from agent.scheduler import FakeClock, RunStatus, ScheduleDefinition, ScheduleStore
from agent.scheduler.engine import ScheduleEngine
from agent.scheduler.tasks import RunContext, TaskRegistry
from tests.conftest import run_async

SCHEDULES = 450  # more than a chunk of CLAIM_CHUNK, so chunks of the full size are explained too


async def noop(ctx: RunContext) -> None:
    return None


def noop_tasks() -> TaskRegistry:
    tasks = TaskRegistry()
    tasks.add("noop", noop)
    return tasks


@run_async
async def test_every_batch_write_of_a_steady_load_looks_its_rows_up_by_key(db_path: Path, clock: FakeClock) -> None:
    store = ScheduleStore(f"sqlite:///{db_path}", clock=clock)
    store.add_many(
        ScheduleDefinition(name=f"s{i}", trigger_type="interval", expression="1s", target="noop")
        for i in range(SCHEDULES)
    )
    sent: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith("UPDATE"):
            sent.append((statement, parameters[0] if executemany else parameters))

    assert store.db.engine is not None
    sa.event.listen(store.db.engine, "before_cursor_execute", capture)
    engine = ScheduleEngine(store, noop_tasks(), clock=clock, tick_seconds=3600, worker_id="w1")
    await engine.start()
    await engine.run_until(clock.now() + timedelta(seconds=4))
    await engine.wait_idle()
    await engine.stop()
    sa.event.remove(store.db.engine, "before_cursor_execute", capture)
    assert store.count_runs(status=RunStatus.SUCCEEDED) >= 3 * SCHEDULES

    big = [(sql, params) for sql, params in sent if sql.count("?") >= SCHEDULES // 2]
    assert any("scheduled_runs" in sql for sql, _ in big) and any("schedules" in sql for sql, _ in big)
    db = sqlite3.connect(db_path)
    for sql, params in sent:
        plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
        # The table's own step ("SEARCH [TABLE] scheduled_runs USING ..." or a "SCAN" of it); the
        # others are the constant rows of an IN list.
        table = sql.split()[1]
        steps = [step for step in plan if re.match(rf"(SCAN|SEARCH)( TABLE)? {table}\b", step)]
        assert len(steps) == 1, (plan, sql[:200])
        assert re.search(r"USING (INDEX sqlite_autoindex_\w+_1|PRIMARY KEY) \(\w+=\?\)", steps[0]), (
            steps[0],
            sql[:200],
        )
    db.close()
    store.close()


@run_async
async def test_a_full_scan_of_idle_schedules_reads_them_through_indexes(db_path: Path, clock: FakeClock) -> None:
    # None due, no breaker open: what a full scan reads about schedules is found by index
    # searches, never by reading every row (10,000 schedules: 8-10 ms a scan walking them, 2 ms not).
    store = ScheduleStore(f"sqlite:///{db_path}", clock=clock)
    later = clock.now() + timedelta(days=1)
    store.add_many(
        ScheduleDefinition(
            name=f"s{i}", trigger_type="interval", expression="1d", target="noop", next_run_at=later, anchor_at=later
        )
        for i in range(SCHEDULES)
    )
    engine = ScheduleEngine(store, TaskRegistry(), clock=clock, tick_seconds=3600, worker_id="w1")
    await engine.start()
    sent: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT") and re.search(r"\bFROM schedules\b", statement):
            sent.append((statement, parameters))

    assert store.db.engine is not None
    sa.event.listen(store.db.engine, "before_cursor_execute", capture)
    engine.wake()  # a full scan
    await engine.tick()
    sa.event.remove(store.db.engine, "before_cursor_execute", capture)
    await engine.stop()
    reads = " ".join(sql for sql, _ in sent)
    assert "breaker_state = ?" in reads and "next_run_at <= ?" in reads  # the open breakers, the due ones
    db = sqlite3.connect(db_path)
    for sql, params in sent:
        plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
        steps = [step for step in plan if re.match(r"(SCAN|SEARCH)( TABLE)? schedules\b", step)]
        assert steps, (plan, sql[:200])
        for step in steps:
            # A search of the due index by ``enabled`` alone walks every enabled schedule.
            assert step.startswith("SEARCH") and not step.endswith("(enabled=?)"), (step, sql[:300])
    db.close()
    store.close()


@run_async
async def test_starting_a_run_never_walks_its_schedules_history(db_path: Path, clock: FakeClock) -> None:
    # A poller every 10 s keeps 8,640 runs a day. What the engine reads about runs while it
    # starts and records new ones is found by the runs' status (or key), never by walking every
    # run a schedule ever had: such a walk made each start slower by the day.
    store = ScheduleStore(f"sqlite:///{db_path}", clock=clock)
    store.add(ScheduleDefinition(name="poller", trigger_type="interval", expression="10s", target="noop"))
    store.add(ScheduleDefinition(name="report", trigger_type="calendar", expression="*/5 * * * *", target="noop"))
    engine = ScheduleEngine(store, noop_tasks(), clock=clock, tick_seconds=60, worker_id="w1")
    await engine.start()
    await engine.run_until(clock.now() + timedelta(minutes=10))  # a history behind them
    await engine.wait_idle()
    sent: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if not executemany and re.search(r"\bFROM scheduled_runs\b", statement):
            sent.append((statement, parameters))

    assert store.db.engine is not None
    sa.event.listen(store.db.engine, "before_cursor_execute", capture)
    before = store.count_runs(status=RunStatus.SUCCEEDED)
    engine.wake()  # a full scan among the ticks
    await engine.run_until(clock.now() + timedelta(minutes=10))
    await engine.wait_idle()
    sa.event.remove(store.db.engine, "before_cursor_execute", capture)
    await engine.stop()
    assert store.count_runs(status=RunStatus.SUCCEEDED) >= before + 60
    counts = [sql for sql, _ in sent if sql.startswith("SELECT scheduled_runs.schedule_id") and ".status = ?" in sql]
    assert counts, "the runs running were not counted before a start"
    db = sqlite3.connect(db_path)
    for sql, params in {(sql, tuple(params)) for sql, params in sent}:
        plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
        steps = [step for step in plan if re.match(r"(SCAN|SEARCH)( TABLE)? scheduled_runs\b", step)]
        for step in steps:
            # A search of a schedule's runs by its id alone walks the whole of its history.
            assert step.startswith("SEARCH") and not step.endswith("(schedule_id=?)"), (step, sql[:300])
    db.close()
    store.close()
