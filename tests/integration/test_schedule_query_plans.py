"""What SQLite does with the statements a steady load sends: every conditional write looks its
rows up by primary key, whatever the size of its tables (no scan, no walk of the status index)."""

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
    tasks = TaskRegistry()

    async def noop(ctx: RunContext) -> None:
        return None

    tasks.add("noop", noop)
    engine = ScheduleEngine(store, tasks, clock=clock, tick_seconds=3600, worker_id="w1")
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
