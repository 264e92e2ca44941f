"""The change feed: another process's write wakes the engine at once; with nothing changing, the loop
sleeps straight to the next due instant (on a FakeClock, a simulated day is a few steps)."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pytest_mock import MockerFixture
from sqlalchemy import text

from agent.scheduler import FakeClock, ScheduleDefinition, ScheduleStore, SystemClock, TriggerType
from agent.scheduler.engine import ScheduleEngine
from agent.scheduler.engine.feed import POLL_SECONDS, NoFeed, SqliteChangeFeed, open_feed
from agent.scheduler.enums import RunStatus
from agent.scheduler.errors import WorkerIdInUse
from agent.scheduler.tasks import RunContext, TaskRegistry
from tests.conftest import run_async

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2027, 3, 13, 12, tzinfo=UTC)
#: Manual runs the other process queues, one at a time; the median of their delays is checked.
SAMPLES = 5
#: From the other process's commit to the run's start: the bound the feed must keep (median).
WAKE_BOUND = timedelta(milliseconds=200)

#: The other process: queues SAMPLES manual runs of "manual" through its own ScheduleStore (what
#: ``python -m agent.scheduler run-now`` does), each after the previous one started.
WRITER = textwrap.dedent(
    """
    import sys, time, uuid
    from agent.scheduler import ScheduleStore
    from agent.scheduler.enums import RunStatus
    store = ScheduleStore(sys.argv[1])
    schedule = store.get("manual")
    for _ in range(int(sys.argv[2])):
        key = f"manual:{uuid.uuid4().hex}"
        run = store.create_run(schedule, store.clock.now(), occurrence_key=key, origin="manual")
        deadline = time.monotonic() + 10
        while store.get_run(run.run_id).status is RunStatus.PENDING and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)
    store.close()
    """
)


def _manual_schedule() -> ScheduleDefinition:
    # A schedule whose own occurrences are a year away: only the manual runs can start.
    return ScheduleDefinition(name="manual", trigger_type=TriggerType.INTERVAL, expression="365d", target="work")


async def _delays_of_runs_queued_elsewhere(url: str) -> list[timedelta]:
    store = ScheduleStore(url, clock=SystemClock())
    store.add(_manual_schedule())
    tasks = TaskRegistry()

    async def work(ctx: RunContext) -> str:
        return "ok"

    tasks.add("work", work)
    # An hour between scans of its own: only the change feed can bring the other process's runs in time.
    engine = ScheduleEngine(store, tasks, tick_seconds=3600, worker_id="feed")
    await engine.start()
    runner = asyncio.ensure_future(engine.run_forever())
    try:
        writer = await asyncio.create_subprocess_exec(
            sys.executable, "-c", WRITER, url, str(SAMPLES), cwd=str(ROOT), stderr=subprocess.PIPE
        )
        _, err = await asyncio.wait_for(writer.communicate(), timeout=120)
        assert writer.returncode == 0, err.decode()
    finally:
        await engine.stop()
        await runner
    runs = [r for r in store.runs(schedule="manual") if r.origin == "manual"]
    store.close()
    assert len(runs) == SAMPLES and all(r.status is RunStatus.SUCCEEDED for r in runs)
    # created_at: stamped by the other process in its writing transaction; started_at: the claim here.
    return [r.started_at - r.created_at for r in runs if r.started_at and r.created_at]


def test_a_run_queued_by_another_process_starts_at_once_on_sqlite(db_path: Path) -> None:
    delays = asyncio.run(_delays_of_runs_queued_elsewhere(f"sqlite:///{db_path}"))
    assert len(delays) == SAMPLES
    assert statistics.median(delays) <= WAKE_BOUND, delays


@pytest.mark.postgres
def test_a_run_queued_by_another_process_starts_at_once_on_postgresql(pg_url: str) -> None:
    delays = asyncio.run(_delays_of_runs_queued_elsewhere(pg_url))
    assert len(delays) == SAMPLES
    assert statistics.median(delays) <= WAKE_BOUND, delays


def test_the_feed_timer_is_well_below_the_wake_bound() -> None:
    assert WAKE_BOUND.total_seconds() >= POLL_SECONDS * 2


class CountingClock(FakeClock):
    """Counts the loop's sleeps and where each one ended."""

    def __init__(self, start: datetime) -> None:
        super().__init__(start)
        self.woke_at: list[datetime] = []

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds)
        self.woke_at.append(self.now())


@run_async
async def test_with_nothing_due_the_loop_sleeps_to_the_next_due_instant_in_one_step(tmp_path: Path) -> None:
    clock = CountingClock(T0)
    store = ScheduleStore(tmp_path / "skip.db", clock=clock)
    due = T0 + timedelta(days=1)
    store.add(
        ScheduleDefinition(
            name="daily", trigger_type=TriggerType.CALENDAR, expression="0 12 * * *", timezone="UTC", target="work"
        )
    )
    tasks = TaskRegistry()
    started: list[datetime] = []

    async def work(ctx: RunContext) -> None:
        started.append(ctx.intended_run_at)

    tasks.add("work", work)
    engine = ScheduleEngine(store, tasks, clock=clock, tick_seconds=10, worker_id="skip")
    await engine.start()
    clock.woke_at.clear()
    await engine.run_until(due - timedelta(seconds=5))
    # One sleep from now to the edge of the day (not 8,640 ticks of ten seconds).
    assert clock.woke_at == [due - timedelta(seconds=5)]
    await engine.run_until(due + timedelta(seconds=1))
    await engine.wait_idle()
    assert started == [due]
    await engine.stop()
    store.close()


@run_async
async def test_a_write_by_another_store_is_seen_by_the_next_tick_without_a_wait(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    db = tmp_path / "other.db"
    store = ScheduleStore(db, clock=clock)
    store.add(_manual_schedule())
    tasks = TaskRegistry()
    tasks.add("work", lambda ctx: "ok")
    engine = ScheduleEngine(store, tasks, clock=clock, tick_seconds=3600, worker_id="w")
    await engine.start()
    with ScheduleStore(db, clock=clock) as other:
        schedule = other.get("manual")
        run = other.create_run(schedule, clock.now(), occurrence_key="manual:other", origin="manual")
    assert run is not None
    await engine.tick()  # no clock time passed: only the feed can say there is something to look at
    await engine.wait_idle()
    assert store.get_run(run.run_id).status is RunStatus.SUCCEEDED
    await engine.stop()
    store.close()


def test_the_sqlite_feed_reports_other_connections_writes_and_not_its_own_stores(tmp_path: Path) -> None:
    db = tmp_path / "feed.db"
    store = ScheduleStore(db, clock=FakeClock(T0))
    feed = open_feed(store)
    assert isinstance(feed, SqliteChangeFeed)
    woken: list[int] = []
    feed.start(lambda: woken.append(1))
    try:
        assert feed.live and not feed.changed()
        store.add(_manual_schedule())  # this store's own commit
        assert not feed.changed()
        with ScheduleStore(db, clock=FakeClock(T0)) as other:
            other.disable("manual", reason="elsewhere")
        assert feed.changed()
        assert not feed.changed()  # reported once
    finally:
        feed.stop()
        store.close()


def test_the_sqlite_feed_survives_its_file_going_away_and_says_it_is_not_live(tmp_path: Path) -> None:
    db = tmp_path / "gone.db"
    store = ScheduleStore(db, clock=FakeClock(T0))
    feed = SqliteChangeFeed(store, poll_seconds=3600)
    feed.start(lambda: None)
    try:
        store.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        feed._close()  # as after an I/O error: the next look opens it again, and cannot
        assert not feed.changed()
        assert not feed.live
        assert not db.exists()  # the feed never creates a database file
    finally:
        feed.stop()


@run_async
async def test_a_refused_start_leaves_no_feed_watching_and_no_subscription(tmp_path: Path) -> None:
    store = ScheduleStore(tmp_path / "refused.db", clock=FakeClock(T0))
    engine = ScheduleEngine(store, TaskRegistry(), clock=store.clock, worker_id="twin")
    feeds: list[SqliteChangeFeed] = []
    real_open = open_feed

    def opened(s: ScheduleStore) -> SqliteChangeFeed:
        feed = real_open(s)
        assert isinstance(feed, SqliteChangeFeed)
        feeds.append(feed)
        return feed

    def refuse(now: datetime) -> None:
        raise WorkerIdInUse("worker id 'twin' is in use by a running worker")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("agent.scheduler.engine.loop.open_feed", opened)
        mp.setattr(engine._reconciler, "reconcile", refuse)
        with pytest.raises(WorkerIdInUse):
            await engine.start()
    assert len(feeds) == 1 and not feeds[0].live  # stopped: no timer, no connection
    assert store._listeners == [] and store._alert_listeners == []
    store.close()


@run_async
async def test_a_schedule_edited_around_the_store_is_seen_by_the_next_scan_the_feed_cannot_replace(
    tmp_path: Path, mocker: MockerFixture
) -> None:
    # Raw SQL draws no new version of the row, so the store would keep serving the definition it
    # mapped; the scans that stand in for what no feed sees (every tick_seconds here, with no live
    # feed) make it map every row again.
    mocker.patch("agent.scheduler.engine.loop.open_feed", return_value=NoFeed())
    clock = FakeClock(T0)
    store = ScheduleStore(tmp_path / "raw.db", clock=clock)
    schedule = store.add(
        ScheduleDefinition(
            name="minutely", trigger_type=TriggerType.INTERVAL, expression="1m", target="work", params={"n": 1}
        )
    )
    tasks = TaskRegistry()
    seen: list[object] = []
    tasks.add("work", lambda ctx: seen.append(ctx.params["n"]))
    engine = ScheduleEngine(store, tasks, clock=clock, tick_seconds=10, worker_id="w")
    await engine.start()
    await engine.run_until(T0 + timedelta(minutes=1, seconds=5))
    await engine.wait_idle()
    with store.db.engine.begin() as conn:  # type: ignore[union-attr]
        conn.execute(text("UPDATE schedules SET params = '{\"n\": 2}' WHERE id = :id"), {"id": schedule.id})
    await engine.run_until(T0 + timedelta(minutes=3, seconds=5))
    await engine.wait_idle()
    assert seen == [1, 2, 2]
    await engine.stop()
    store.close()
