"""Idle: N schedules, none due; the cost of one tick and the CPU the engine uses while idle.

python bench/idle.py [N=10000]
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import time
from datetime import UTC, datetime, timedelta

from common import cpu_seconds, report, size_from_argv, tmp_db

from agent.scheduler import ScheduleDefinition, ScheduleStore
from agent.scheduler.engine import ScheduleEngine
from agent.scheduler.tasks import TaskRegistry


async def main_async(n: int) -> None:
    store = ScheduleStore(tmp_db("idle"))
    later = datetime.now(UTC) + timedelta(days=1)
    store.add_many(
        ScheduleDefinition(
            name=f"s{i}", trigger_type="interval", expression="1d", target="noop", next_run_at=later, anchor_at=later
        )
        for i in range(n)
    )
    tasks = TaskRegistry()
    tasks.add("noop", lambda ctx: None)
    engine = ScheduleEngine(store, tasks, tick_seconds=1, worker_id="bench")
    await engine.start()
    samples = []
    for _ in range(50):
        engine.wake()  # force a full scan: the most a tick does with nothing due
        t = time.perf_counter()
        await engine.tick()
        samples.append(time.perf_counter() - t)
    quiet = []
    for _ in range(200):
        t = time.perf_counter()
        await engine.tick()
        quiet.append(time.perf_counter() - t)
    report("idle.tick_full_scan_median", statistics.median(samples) * 1000, "ms", f"n={n}, goal < 5 ms")
    report("idle.tick_between_scans_median", statistics.median(quiet) * 1000, "ms")
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    runner = asyncio.ensure_future(engine.run_forever())
    await asyncio.sleep(0.5 if os.environ.get("ACTP_BENCH_QUICK") == "1" else 5)
    await engine.stop()
    await runner
    wall = time.perf_counter() - wall0
    report("idle.cpu_share_while_idle", (cpu_seconds() - cpu0) / wall * 100, "%", "tick_seconds=1, 5 s")
    store.close()


def main() -> None:
    logging.disable(logging.WARNING)
    asyncio.run(main_async(size_from_argv(10_000)))


if __name__ == "__main__":
    main()
