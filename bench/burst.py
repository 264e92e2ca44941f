"""Burst: N one-shot runs due at the same instant, a no-op task; our engine beside APScheduler 3.11.

    python bench/burst.py [N=10000] [REPEATS=3]

Figures: seconds from the due instant until every run is done (and, for us, recorded), and the
lateness of starts (p50, p99). APScheduler runs configured as its users would (SQLite in WAL,
misfire grace disabled) and out of the box (default journal, grace 1 s), interleaved with ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import ClassVar

from common import median, percentile, report, size_from_argv, tmp_db

from agent.scheduler import RunStatus, ScheduleDefinition, ScheduleStore
from agent.scheduler.engine import ScheduleEngine
from agent.scheduler.tasks import RunContext, TaskRegistry

#: Seconds between setting up and the due instant; ACTP_BENCH_QUICK=1 (the smoke test) shortens the waits.
QUICK = os.environ.get("ACTP_BENCH_QUICK") == "1"
LEAD = 1.0 if QUICK else 3.0
#: How long the out-of-the-box APScheduler is waited for beyond the due instant (it misses runs).
GIVE_UP = 2.0 if QUICK else 15.0


async def ours(n: int) -> tuple[float, list[float], int]:
    store = ScheduleStore(tmp_db("ours"))
    done = 0
    finished = asyncio.Event()
    lateness: ClassVar[list[float]] = []

    async def noop(ctx: RunContext) -> None:
        nonlocal done
        lateness.append(time.time() - ctx.intended_run_at.timestamp())  # when the task really began
        done += 1
        if done == n:
            finished.set()

    tasks = TaskRegistry()
    tasks.add("noop", noop)
    due = datetime.now(UTC) + timedelta(seconds=LEAD + n / 4000)
    store.add_many(
        ScheduleDefinition(name=f"burst_{i}", trigger_type="delay", expression=due.isoformat(), target="noop")
        for i in range(n)
    )
    engine = ScheduleEngine(store, tasks, tick_seconds=10, worker_id="bench")
    await engine.start()
    runner = asyncio.ensure_future(engine.run_forever())
    await finished.wait()
    await engine.wait_idle()
    elapsed = (datetime.now(UTC) - due).total_seconds()
    await engine.stop()
    await runner
    recorded = store.count_runs(status=RunStatus.SUCCEEDED)
    store.close()
    return elapsed, lateness, recorded


class _Aps:
    """State of APScheduler's job, which must be a module-level function (its job store pickles it)."""

    n = 0
    count = 0
    lateness: ClassVar[list[float]] = []
    finished: asyncio.Event | None = None


async def aps_job(intended: float) -> None:
    _Aps.lateness.append(time.time() - intended)
    _Aps.count += 1
    if _Aps.count == _Aps.n and _Aps.finished is not None:
        _Aps.finished.set()


def apscheduler(n: int, *, wal: bool, grace: float | None) -> tuple[float, list[float], int]:
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    path = tmp_db("aps")
    if wal:
        sqlite3.connect(path).execute("PRAGMA journal_mode=WAL").close()
    _Aps.n, _Aps.count, _Aps.lateness = n, 0, []

    async def main() -> float:
        finished = _Aps.finished = asyncio.Event()
        scheduler = AsyncIOScheduler(
            jobstores={"default": SQLAlchemyJobStore(url=f"sqlite:///{path}")},
            job_defaults={"misfire_grace_time": grace, "coalesce": False},
        )
        due = datetime.now(UTC) + timedelta(seconds=LEAD + n / 2000)

        scheduler.start()
        for i in range(n):
            scheduler.add_job(aps_job, "date", run_date=due, args=[due.timestamp()], id=f"j{i}")
        with contextlib.suppress(TimeoutError):  # out of the box it misses runs: stop waiting
            await asyncio.wait_for(finished.wait(), timeout=LEAD + n / 2000 + GIVE_UP)
        elapsed = (datetime.now(UTC) - due).total_seconds()
        scheduler.shutdown(wait=False)
        return elapsed

    elapsed = asyncio.run(main())
    return elapsed, _Aps.lateness, _Aps.count


def main() -> None:
    logging.disable(logging.WARNING)
    n = size_from_argv(10_000)
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    results: dict[str, list[tuple[float, list[float], int]]] = {"ours": [], "aps_tuned": [], "aps_default": []}
    for _ in range(repeats):
        results["ours"].append(asyncio.run(ours(n)))
        results["aps_tuned"].append(apscheduler(n, wal=True, grace=None))
        results["aps_default"].append(apscheduler(n, wal=False, grace=1))
    for name, rows in results.items():
        report(f"burst.{name}.due_to_all_done", median(r[0] for r in rows), "s", f"n={n}")
        report(f"burst.{name}.executed", median(r[2] for r in rows), "runs")
        report(f"burst.{name}.lateness_p50", median(percentile(r[1], 50) for r in rows), "s")
        report(f"burst.{name}.lateness_p99", median(percentile(r[1], 99) for r in rows), "s")
    ratio = median(r[0] for r in results["ours"]) / median(r[0] for r in results["aps_tuned"])
    report("burst.ratio_ours_to_aps_tuned", ratio, "x", "goal <= 0.7")


if __name__ == "__main__":
    main()
