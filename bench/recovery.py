"""Recovery: N schedules after 7 days of downtime, mixed missed-run policies: how long start() takes.

python bench/recovery.py [N=1000]
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta

from common import report, size_from_argv, tmp_db

from agent.scheduler import FakeClock, ScheduleDefinition, ScheduleStore
from agent.scheduler.engine import ScheduleEngine
from agent.scheduler.tasks import TaskRegistry

MIX = [
    ("calendar", "*/5 * * * *", "skip"),
    ("calendar", "0 * * * *", "catch_up_once"),
    ("interval", "15m", "catch_up_all"),
    ("calendar", "0 6 * * *", "catch_up_all"),
    ("interval", "1m", "skip"),
]


async def main_async(n: int) -> None:
    start = datetime(2027, 3, 1, tzinfo=UTC)
    clock = FakeClock(start)
    store = ScheduleStore(tmp_db("recovery"), clock=clock)
    store.add_many(
        ScheduleDefinition(
            name=f"s{i}",
            trigger_type=MIX[i % 5][0],
            expression=MIX[i % 5][1],
            target="noop",
            missed_run_policy=MIX[i % 5][2],
            catch_up_limit=100,
            timezone="Europe/Berlin",
            next_run_at=start + timedelta(minutes=5),
            anchor_at=start,
        )
        for i in range(n)
    )
    tasks = TaskRegistry()
    tasks.add("noop", lambda ctx: None)
    clock.advance(timedelta(days=7))
    engine = ScheduleEngine(store, tasks, clock=clock, tick_seconds=3600, worker_id="bench")
    t = time.perf_counter()
    result = await engine.start()
    elapsed = time.perf_counter() - t
    report("recovery.start_seconds", elapsed, "s", f"n={n}, 7 days down, goal < 2 s")
    report("recovery.missed_detected", result.missed_detected, "occ")
    report("recovery.runs_created", result.missed_caught_up, "runs")
    await engine.stop()
    store.close()


def main() -> None:
    logging.disable(logging.WARNING)
    asyncio.run(main_async(size_from_argv(1000)))


if __name__ == "__main__":
    main()
