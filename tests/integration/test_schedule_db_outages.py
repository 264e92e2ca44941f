"""Database faults on a real SQLite file: the engine pauses, backs off, comes back and loses nothing.

Faults are injected at the driver, on every connection of the store: ``PRAGMA query_only`` (writes
fail with SQLITE_READONLY) and ``PRAGMA max_page_count`` (the file cannot grow: SQLITE_FULL, as on a
full disk), switched on and off by the fake clock, so outages of minutes take milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from psycopg import errors as pg
from sqlalchemy import event
from sqlalchemy import exc as sa

from agent.scheduler import FakeClock, ScheduleDefinition, ScheduleStore, TriggerType
from agent.scheduler.db_health import report_replaced_database
from agent.scheduler.engine import ScheduleEngine
from agent.scheduler.enums import RunStatus
from agent.scheduler.errors import DatabaseReplaced, DatabaseUnavailable
from agent.scheduler.store import connection as store_module
from agent.scheduler.tasks import RunContext, TaskRegistry
from tests.conftest import run_async

T0 = datetime(2027, 3, 13, 12, tzinfo=UTC)
#: No PRAGMA value is larger: the file may grow again.
NO_PAGE_LIMIT = 1073741823


class Fault:
    """A driver-level fault on every transaction of a store, active while the fake clock is in [since, until)."""

    def __init__(self, store: ScheduleStore, clock: FakeClock, pragma: str, on: str, off: str) -> None:
        self.clock, self.pragma, self.on, self.off = clock, pragma, on, off
        self.since: datetime | None = None
        self.until: datetime | None = None
        self.hits = 0
        event.listen(store.db.engine, "begin", self._begin)

    def active(self) -> bool:
        return self.since is not None and self.until is not None and self.since <= self.clock.now() < self.until

    def _begin(self, conn: Any) -> None:
        if self.active():
            self.hits += 1
        conn.exec_driver_sql(f"PRAGMA {self.pragma} = {self.on if self.active() else self.off}")


@pytest.fixture(autouse=True)
def quick_outage_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    # The store's own retry of an outage (a second, real time) would make each failed tick slow here.
    monkeypatch.setattr(store_module, "OUTAGE_RETRY_SECONDS", 0.0)


def engine_for(store: ScheduleStore, clock: FakeClock, tasks: TaskRegistry) -> ScheduleEngine:
    return ScheduleEngine(store, tasks, clock=clock, tick_seconds=5, worker_id="w-outage")


@run_async
async def test_a_database_gone_read_only_while_a_run_is_in_flight_loses_no_outcome(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(T0)
    store = ScheduleStore(tmp_path / "s.db", clock=clock)
    fault = Fault(store, clock, "query_only", "1", "0")
    calls: list[str] = []
    tasks = TaskRegistry()

    async def work(ctx: RunContext) -> str:
        calls.append(ctx.run_id)
        if len(calls) == 3:  # the database goes away while this run is in flight, for 95 s
            fault.since, fault.until = clock.now(), clock.now() + timedelta(seconds=95)
        return "done"

    tasks.add("work", work)
    store.add(ScheduleDefinition(name="every10", trigger_type=TriggerType.INTERVAL, expression="10s", target="work"))
    engine = engine_for(store, clock, tasks)
    await engine.start()
    with caplog.at_level(logging.INFO, logger="agent.scheduler"):
        await engine.run_until(T0 + timedelta(minutes=5))
    await engine.stop()

    assert fault.hits >= 5  # ticks did fail, with backoff, for the whole outage
    runs = store.runs(schedule="every10")
    ran = [r for r in runs if r.status is RunStatus.SUCCEEDED]
    # What is not a success is an occurrence of the outage that the missed-run or overlap policy skipped.
    assert all(r.status is RunStatus.SKIPPED and r.reason for r in runs if r not in ran)
    assert all(r.attempt == 1 and r.error_type is None for r in runs)  # no orphan, no retry
    assert sorted(calls) == sorted(r.run_id for r in ran)  # each ran once; the in-flight one's outcome was kept
    assert ran[-1].intended_run_at >= T0 + timedelta(minutes=4)  # and the schedule went on
    lost = [r for r in caplog.records if r.getMessage().startswith("database unavailable")]
    back = [r for r in caplog.records if r.getMessage().startswith("database back after")]
    assert len(lost) == 1 and len(back) == 1, [r.getMessage() for r in caplog.records if "database" in r.getMessage()]
    (alert,) = [a for a in store.alerts() if a.kind == "database_outage"]
    assert 85 <= alert.payload["seconds"] < 101  # from the first failed tick to the first good one
    assert "readonly" in alert.payload["error"]
    store.close()


@run_async
async def test_a_full_disk_pauses_the_engine_until_space_is_freed(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    store = ScheduleStore(tmp_path / "s.db", clock=clock)
    fault = Fault(store, clock, "max_page_count", "1", str(NO_PAGE_LIMIT))
    tasks = TaskRegistry()
    tasks.add("work", lambda ctx: "done")
    for i in range(40):
        store.add(
            ScheduleDefinition(name=f"s{i:02}", trigger_type=TriggerType.INTERVAL, expression="10s", target="work")
        )
    fault.since, fault.until = T0 + timedelta(seconds=60), T0 + timedelta(seconds=180)
    engine = engine_for(store, clock, tasks)
    await engine.start()
    await engine.run_until(T0 + timedelta(minutes=6))
    await engine.stop()

    assert fault.hits > 0
    errors = [a.payload.get("error", "") for a in store.alerts() if a.kind == "database_outage"]
    assert errors and all("full" in e for e in errors), errors
    runs = store.runs()
    assert not [r for r in runs if r.status in (RunStatus.RUNNING, RunStatus.PENDING)]
    assert all(r.attempt == 1 for r in runs)
    # Every schedule ran again after space was freed.
    late = T0 + timedelta(minutes=5)
    assert {r.schedule_name for r in runs if r.intended_run_at >= late} == {f"s{i:02}" for i in range(40)}
    store.close()


def test_a_failing_wal_checkpoint_is_logged_once_skipped_and_never_raised(
    store: ScheduleStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = store._driver_connection

    class Full:
        def execute(self, sql: str) -> Any:
            error = sqlite3.OperationalError("database or disk is full")
            error.sqlite_errorcode = 13  # type: ignore[attr-defined]
            raise error

    monkeypatch.setattr(store, "_driver_connection", Full)
    with caplog.at_level(logging.INFO):
        assert [store.checkpoint() for _ in range(3)] == [False, False, False]
        monkeypatch.setattr(store, "_driver_connection", real)
        assert store.checkpoint() is True
    said = [r.getMessage() for r in caplog.records if "checkpoint" in r.getMessage()]
    assert said == [
        "WAL checkpoints skipped until they work again: database or disk is full",
        "WAL checkpoints work again",
    ]


def test_a_deadlock_is_retried_around_the_whole_transaction(store: ScheduleStore) -> None:
    attempts: list[int] = []

    def work() -> str:
        attempts.append(1)
        store.meta_set("attempt", str(len(attempts)))
        if len(attempts) == 1:  # what PostgreSQL raises on the victim of a deadlock
            raise sa.OperationalError("SELECT ... FOR UPDATE", {}, pg.DeadlockDetected("deadlock detected"))
        return "committed"

    assert store.atomic(work) == "committed"
    assert len(attempts) == 2 and store.meta_get("attempt") == "2"


def test_an_outage_that_outlasts_the_stores_retry_is_database_unavailable(tmp_path: Path, clock: FakeClock) -> None:
    store = ScheduleStore(tmp_path / "s.db", clock=clock)
    fault = Fault(store, clock, "query_only", "1", "0")
    fault.since, fault.until = T0 - timedelta(days=1), T0 + timedelta(days=1)
    with pytest.raises(DatabaseUnavailable, match="readonly database"):
        store.meta_set("k", "v")
    fault.until = T0
    store.meta_set("k", "v")  # the same store, once the fault is gone
    assert store.meta_get("k") == "v"
    store.close()


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_deleted_or_replaced_file_is_detected(tmp_path: Path, clock: FakeClock, how: str) -> None:
    path = tmp_path / "s.db"
    store = ScheduleStore(path, clock=clock)
    store.check_identity()
    os.unlink(path)
    if how == "replaced":
        ScheduleStore(path, clock=clock).close()
        match = "was replaced by another file"
    else:
        match = "was deleted"
    with pytest.raises(DatabaseReplaced, match=match):
        store.check_identity()
    store.close()


@run_async
async def test_after_an_outage_owners_record_their_runs_before_anyone_takes_them_over(tmp_path: Path) -> None:
    # The database goes away for 90 s with a run in flight: every lease (30 s) lapses, its owner's
    # included. The worker that gets back first must not take the run over as an orphan; its owner
    # records the outcome it kept, and the run ran once.
    clock = FakeClock(T0)
    stores = [ScheduleStore(tmp_path / "shared.db", clock=clock) for _ in range(2)]
    faults = [Fault(s, clock, "query_only", "1", "0") for s in stores]
    gate = asyncio.Event()
    attempts: list[int] = []
    tasks = TaskRegistry()

    async def work(ctx: RunContext) -> str:
        attempts.append(ctx.attempt)
        await gate.wait()
        return "done"

    tasks.add("work", work)
    stores[0].add(ScheduleDefinition(name="job", trigger_type=TriggerType.INTERVAL, expression="1h", target="work"))
    owner, other = (
        ScheduleEngine(s, tasks, clock=clock, tick_seconds=5, worker_id=w, lease_seconds=30)
        for s, w in zip(stores, ("owner", "other"), strict=True)
    )
    await owner.start()
    await other.start()
    run = await owner.run_now("job")
    await owner.tick()
    await asyncio.sleep(0)
    assert attempts == [1]
    for fault in faults:
        fault.since, fault.until = clock.now(), clock.now() + timedelta(seconds=90)
    gate.set()
    await asyncio.sleep(0)  # the run ended; its outcome waits in its owner's memory
    clock.advance(timedelta(seconds=60))  # every lease has lapsed; the database is still away
    assert await other._tick_through_outages()  # back first, after 30 s more of failed ticks
    assert faults[1].hits > 0
    assert stores[1].get_run(run.run_id).status is RunStatus.RUNNING  # not taken over
    assert await owner._tick_through_outages()
    for engine in (other, owner):
        await engine.wait_idle()
    assert [(r.status, r.attempt) for r in stores[0].runs(schedule="job")] == [(RunStatus.SUCCEEDED, 1)]
    assert attempts == [1]
    clock.advance(timedelta(minutes=2))  # past the quiet period: a full scan finds nothing to take over
    await other.tick()
    assert [(r.status, r.attempt) for r in stores[0].runs(schedule="job")] == [(RunStatus.SUCCEEDED, 1)]
    for engine in (other, owner):
        await engine.stop()
    for s in stores:
        s.close()


def test_a_file_put_in_place_that_is_not_a_schedule_store_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = ScheduleStore(path)
    foreign = tmp_path / "foreign.db"
    with contextlib.closing(sqlite3.connect(foreign)) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
        conn.commit()
    for suffix in ("-wal", "-shm"):  # someone restores another file at the path, without the old WAL
        (tmp_path / f"s.db{suffix}").unlink(missing_ok=True)
    os.replace(foreign, path)
    with pytest.raises(DatabaseReplaced) as err:
        store.check_identity()
    assert report_replaced_database(store, "w1", err.value) is False
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["notes"]
    store.close()
