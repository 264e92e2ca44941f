"""Simulation on a FakeClock: the production loop, with nothing changing from outside, sleeps
straight to the next due instant. Real time and loop wake-ups per simulated span.

python bench/simulate.py [DAYS=7]    (DAYS: the span of the legacy-table figures)
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from common import report, tmp_db

import cron_definitions
from agent.scheduler import FakeClock, ScheduleDefinition, ScheduleStore
from agent.scheduler.adapters.legacy_cron import JobKind, migrate
from agent.scheduler.engine import ScheduleEngine
from agent.scheduler.tasks import TaskRegistry

START = datetime(2027, 3, 15, 0, 30, tzinfo=UTC)


class CountingClock(FakeClock):
    """A FakeClock that counts the engine's sleeps (each one a wake-up of the loop)."""

    def __init__(self, start: datetime) -> None:
        super().__init__(start)
        self.sleeps = 0

    async def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        await super().sleep(seconds)


def noop_registry(targets: set[str]) -> TaskRegistry:
    """Every target as a task that returns at once: the figures are the scheduler's, not the jobs'."""
    tasks = TaskRegistry()
    for target in sorted(targets):
        tasks.add(target, noop)
    return tasks


async def noop(ctx: object) -> None:
    return None


async def simulate(
    name: str, days: float, setup: object, *, disabled: tuple[str, ...] = ()
) -> tuple[float, int, int, int]:
    """(real seconds, runs, loop sleeps, schedules) for ``days`` simulated from START."""
    clock = CountingClock(START)
    store = ScheduleStore(tmp_db(name), clock=clock)
    if callable(setup):
        setup(store)
    for schedule in disabled:
        store.disable(schedule, reason="simulated separately")
    tasks = noop_registry({s.target for s in store.list()})
    engine = ScheduleEngine(store, tasks, clock=clock, worker_id="sim")
    began = time.perf_counter()
    await engine.start()
    await engine.run_until(START + timedelta(days=days))
    await engine.wait_idle()
    elapsed = time.perf_counter() - began
    await engine.stop()
    runs, schedules = store.count_runs(), len(store.list())
    store.close()
    return elapsed, runs, clock.sleeps, schedules


def one_daily(store: ScheduleStore) -> None:
    store.add(ScheduleDefinition(name="daily", trigger_type="calendar", expression="0 6 * * *", target="noop"))


def legacy(store: ScheduleStore) -> None:
    migrate(store, cron_definitions.CRON_JOBS, timezone="America/New_York")


async def main_async(days: float) -> None:
    elapsed, runs, sleeps, _ = await simulate("daily", 4, one_daily)
    report("simulate.one_daily_job_4_days", elapsed, "s", f"{runs} runs, {sleeps} loop sleeps; goal <= 0.5 s")
    pollers = tuple(e.name for e in cron_definitions.CRON_JOBS if e.kind is JobKind.POLLER)
    elapsed, runs, sleeps, n = await simulate("legacy-quiet", days, legacy, disabled=pollers)
    report(
        "simulate.legacy_jobs_without_pollers",
        elapsed,
        "s",
        f"{days:g} days, {n - len(pollers)} of {n} jobs, {runs} runs, {sleeps} loop sleeps",
    )
    if os.environ.get("ACTP_BENCH_QUICK") == "1":
        return
    elapsed, runs, sleeps, n = await simulate("legacy-all", days, legacy)
    report(
        "simulate.legacy_jobs_all",
        elapsed,
        "s",
        f"{days:g} days, {n} jobs, {runs} runs ({runs / elapsed:.0f}/s real), {sleeps} loop sleeps",
    )


def main() -> None:
    logging.disable(logging.WARNING)
    os.environ.setdefault("ACTP_TIMEZONE", "America/New_York")
    days = float(sys.argv[1]) if len(sys.argv) > 1 else 7.0
    asyncio.run(main_async(days))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
