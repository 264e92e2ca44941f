"""Memory: resident size across N completed runs (FakeClock, every-second schedules, no-op task).

python bench/memory.py [N=100000]
"""

from __future__ import annotations

import asyncio
import gc
import logging
from datetime import UTC, datetime, timedelta

from common import report, rss_mb, size_from_argv, tmp_db

from agent.scheduler import FakeClock, ScheduleDefinition, ScheduleStore
from agent.scheduler.engine import ScheduleEngine
from agent.scheduler.tasks import RunContext, TaskRegistry

SCHEDULES = 100


async def main_async(n: int) -> None:
    clock = FakeClock(datetime(2027, 3, 1, tzinfo=UTC))
    store = ScheduleStore(tmp_db("memory"), clock=clock)
    store.add_many(
        ScheduleDefinition(
            name=f"s{i}", trigger_type="interval", expression="1s", target="noop", concurrency_policy="allow"
        )
        for i in range(SCHEDULES)
    )
    done = 0

    async def noop(ctx: RunContext) -> None:
        nonlocal done
        done += 1

    tasks = TaskRegistry()
    tasks.add("noop", noop)
    engine = ScheduleEngine(store, tasks, clock=clock, tick_seconds=3600, worker_id="bench")
    await engine.start()
    seconds = max(1, n // SCHEDULES)
    await engine.run_until(clock.now() + timedelta(seconds=min(10, seconds)))
    await engine.wait_idle()
    gc.collect()
    before = rss_mb()
    await engine.run_until(clock.now() + timedelta(seconds=seconds))
    await engine.wait_idle()
    gc.collect()
    after = rss_mb()
    report("memory.runs_completed", done, "runs", f"target n={n}")
    report("memory.rss_before", before, "MiB")
    report("memory.rss_after", after, "MiB")
    report("memory.rss_growth", after - before, "MiB", "goal < 20 MiB")
    await engine.stop()
    store.close()


def main() -> None:
    logging.disable(logging.WARNING)
    asyncio.run(main_async(size_from_argv(100_000)))


if __name__ == "__main__":
    main()
