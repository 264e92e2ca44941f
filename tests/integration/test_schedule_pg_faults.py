"""PostgreSQL under several workers and under a server that drops their connections.

Three engines (each with its own store, connections and database thread) tick the same schedules
at once: none may deadlock or fail. An engine whose backends are terminated mid-run must resume
on fresh connections and lose no run.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, text

from agent.scheduler import FakeClock, ScheduleDefinition, ScheduleStore, SystemClock, TriggerType
from agent.scheduler.engine import ScheduleEngine
from agent.scheduler.enums import RunStatus
from agent.scheduler.tasks import RunContext, TaskRegistry

pytestmark = pytest.mark.postgres

T0 = datetime(2027, 3, 13, 12, tzinfo=UTC)
#: Longest a test waits in real seconds for the engine to run again (a guard against a hang, not a bound).
PATIENCE = 30.0


def test_three_workers_ticking_the_same_schedules_never_deadlock(pg_url: str) -> None:
    with ScheduleStore(pg_url, clock=FakeClock(T0)) as setup:
        for i in range(40):
            setup.add(
                ScheduleDefinition(name=f"s{i:02}", trigger_type=TriggerType.INTERVAL, expression="1s", target="work")
            )
    errors: list[BaseException] = []
    executed: list[tuple[str, datetime]] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        clock = FakeClock(T0)
        tasks = TaskRegistry()

        def work(ctx: RunContext) -> str:
            with lock:
                executed.append((ctx.schedule.name, ctx.intended_run_at))
            return "ok"

        tasks.add("work", work)

        async def main() -> None:
            with ScheduleStore(pg_url, clock=clock) as store:
                # Each worker's FakeClock runs on its own, up to a minute apart: a lease of an hour
                # keeps one worker from taking another's runs for orphans because of that drift.
                engine = ScheduleEngine(
                    store, tasks, clock=clock, tick_seconds=1, worker_id=f"hammer-{n}", lease_seconds=3600
                )
                await engine.start()
                for _ in range(60):
                    clock.advance(timedelta(seconds=1))
                    await engine.tick()
                await engine.wait_idle()
                await engine.stop()

        try:
            asyncio.run(main())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, [repr(e) for e in errors]
    assert len(executed) == len(set(executed)) > 40  # every occurrence ran once at most, and there were many
    with ScheduleStore(pg_url, clock=FakeClock(T0)) as check:
        assert check.count_runs(status=RunStatus.RUNNING) == check.count_runs(status=RunStatus.FAILED) == 0


def terminate(url: str, application_name: str) -> int:
    """pg_terminate_backend on every backend of one application: the server drops its connections."""
    admin = create_engine(url.split("?", maxsplit=1)[0])
    try:
        with admin.begin() as conn:
            return len(
                conn.execute(
                    text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :name"),
                    {"name": application_name},
                ).all()
            )
    finally:
        admin.dispose()


def test_an_engine_whose_connections_are_killed_resumes_and_loses_no_run(pg_url: str) -> None:
    name = f"actp-fault-{uuid.uuid4().hex[:8]}"
    url = f"{pg_url}?application_name={name}"
    done: list[tuple[str, datetime]] = []
    tasks = TaskRegistry()

    async def work(ctx: RunContext) -> str:
        await asyncio.sleep(0.05)
        done.append((ctx.run_id, ctx.intended_run_at))
        return "ok"

    tasks.add("work", work)
    killed: list[int] = []
    kills_at: list[datetime] = []
    clock = SystemClock()

    async def ran_after(instant: datetime) -> None:
        """Until an occurrence intended after ``instant`` has run (the engine works, or works again)."""
        deadline = time.monotonic() + PATIENCE
        while not any(at > instant for _, at in done):
            assert time.monotonic() < deadline, f"no run intended after {instant.isoformat()}: {done}"
            await asyncio.sleep(0.05)

    async def main() -> ScheduleStore:
        store = ScheduleStore(url, clock=clock)
        store.add(ScheduleDefinition(name="fast", trigger_type=TriggerType.INTERVAL, expression="1s", target="work"))
        engine = ScheduleEngine(store, tasks, tick_seconds=0.2, worker_id="pg-fault")
        await engine.start()
        runner = asyncio.create_task(engine.run_forever())
        began = clock.now()
        for _ in range(3):  # three times, each once the worker runs again: the server drops all its connections
            await ran_after(kills_at[-1] if kills_at else began)
            kills_at.append(clock.now())
            killed.append(await asyncio.to_thread(terminate, pg_url, name))
        await ran_after(kills_at[-1])
        await engine.stop()
        await runner  # the loop ended because of stop(), not an error
        return store

    store = asyncio.run(main())
    try:
        assert all(k >= 1 for k in killed), killed
        runs = store.runs(schedule="fast")
        assert not [r for r in runs if r.status in (RunStatus.RUNNING, RunStatus.FAILED)]
        ran = [r for r in runs if r.status is RunStatus.SUCCEEDED]
        assert sorted(r.run_id for r in ran) == sorted(run_id for run_id, _ in done)  # each outcome recorded
        assert all(r.attempt == 1 for r in runs)
        # The schedule went on after every outage: a run intended after each kill succeeded.
        assert all(any(r.intended_run_at > k for r in ran) for k in kills_at), (kills_at, ran)
    finally:
        store.close()
