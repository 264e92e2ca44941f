"""Steady: N interval schedules every second for S seconds; our engine beside APScheduler 3.11.

    python bench/steady.py [N=1000] [SECONDS=20]

Figures: runs executed (and recorded, for us), lateness p50/p99 (task start minus intended
time), and CPU seconds per run.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sqlite3
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import ClassVar

from common import cpu_seconds, percentile, report, size_from_argv, tmp_db

from agent.scheduler import RunStatus, ScheduleDefinition, ScheduleStore
from agent.scheduler.engine import ScheduleEngine
from agent.scheduler.tasks import RunContext, TaskRegistry


async def ours(n: int, seconds: float) -> tuple[int, int, list[float], float]:
    store = ScheduleStore(tmp_db("steady"))
    lateness: list[float] = []

    async def noop(ctx: RunContext) -> None:
        lateness.append(time.time() - ctx.intended_run_at.timestamp())

    tasks = TaskRegistry()
    tasks.add("noop", noop)
    anchor = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    store.add_many(
        ScheduleDefinition(
            name=f"s{i}",
            trigger_type="interval",
            expression="1s",
            target="noop",
            concurrency_policy="allow",
            anchor_at=anchor,
            next_run_at=anchor,
        )
        for i in range(n)
    )
    engine = ScheduleEngine(store, tasks, tick_seconds=10, worker_id="bench")
    await engine.start()
    gc.freeze()  # as worker.py does after its start; undone below, so APScheduler's turn runs without it
    cpu0 = cpu_seconds()
    runner = asyncio.ensure_future(engine.run_forever())
    await asyncio.sleep((anchor - datetime.now(UTC)).total_seconds() + seconds - 0.5)
    await engine.stop()
    await runner
    gc.unfreeze()
    cpu = cpu_seconds() - cpu0
    recorded = store.count_runs(status=RunStatus.SUCCEEDED)
    store.close()
    return len(lateness), recorded, lateness, cpu


class _Aps:
    lateness: ClassVar[list[float]] = []


def aps_job(interval_start: float) -> None:
    now = time.time()
    # the intended instant is the latest whole second of the grid at or before now
    _Aps.lateness.append((now - interval_start) % 1.0)


def apscheduler(n: int, seconds: float) -> tuple[int, list[float], float]:
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    path = tmp_db("aps")
    sqlite3.connect(path).execute("PRAGMA journal_mode=WAL").close()
    _Aps.lateness = []

    async def main() -> float:
        scheduler = AsyncIOScheduler(
            jobstores={"default": SQLAlchemyJobStore(url=f"sqlite:///{path}")},
            job_defaults={"misfire_grace_time": None, "coalesce": False, "max_instances": 10},
        )
        start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
        for i in range(n):
            scheduler.add_job(aps_job, "interval", seconds=1, start_date=start, args=[start.timestamp()], id=f"j{i}")
        scheduler.start()
        cpu0 = cpu_seconds()
        await asyncio.sleep((start - datetime.now(UTC)).total_seconds() + seconds - 0.5)
        cpu = cpu_seconds() - cpu0
        scheduler.shutdown(wait=False)
        return cpu

    cpu = asyncio.run(main())
    return len(_Aps.lateness), _Aps.lateness, cpu


def main() -> None:
    logging.disable(logging.WARNING)
    n = size_from_argv(1000)
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 20.0
    done, recorded, late, cpu = asyncio.run(ours(n, seconds))
    report("steady.ours.executed", done, "runs", f"n={n} for {seconds:g}s, expected ~{int(n * seconds)}")
    report("steady.ours.recorded", recorded, "runs")
    report("steady.ours.lateness_p50", percentile(late, 50) * 1000, "ms")
    report("steady.ours.lateness_p99", percentile(late, 99) * 1000, "ms", "goal <= 50 ms")
    report("steady.ours.cpu_per_run", cpu / max(done, 1) * 1e6, "us")
    a_done, a_late, a_cpu = apscheduler(n, seconds)
    report("steady.aps_tuned.executed", a_done, "runs")
    report("steady.aps_tuned.lateness_p50", percentile(a_late, 50) * 1000, "ms")
    report("steady.aps_tuned.lateness_p99", percentile(a_late, 99) * 1000, "ms")
    report("steady.aps_tuned.cpu_per_run", a_cpu / max(a_done, 1) * 1e6, "us")
    report("steady.ratio_cpu_per_run", (cpu / max(done, 1)) / (a_cpu / max(a_done, 1)), "x", "goal <= 0.35")


if __name__ == "__main__":
    main()
