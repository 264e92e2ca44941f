"""Queued from outside: ``python -m agent.scheduler run-now`` in another process, the engine idle on its
real clock with an hour between its own scans. From the command's commit to the run's start.

python bench/queued.py [N=20] [POSTGRES_URL]    (the second figure set only with a PostgreSQL URL)
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from pathlib import Path

from common import median, percentile, report, size_from_argv, tmp_db

from agent.scheduler import ScheduleDefinition, ScheduleStore, SystemClock
from agent.scheduler.engine import ScheduleEngine
from agent.scheduler.tasks import RunContext, TaskRegistry

ROOT = Path(__file__).resolve().parents[1]


async def work(ctx: RunContext) -> str:
    return "ok"


async def measure(url: str, n: int) -> tuple[list[float], list[float]]:
    """(commit-to-start delays, command wall times), in seconds."""
    store = ScheduleStore(url, clock=SystemClock())
    store.add(ScheduleDefinition(name="manual", trigger_type="interval", expression="365d", target="work"))
    tasks = TaskRegistry()
    tasks.add("work", work)
    engine = ScheduleEngine(store, tasks, tick_seconds=3600, worker_id="bench")
    await engine.start()
    runner = asyncio.ensure_future(engine.run_forever())
    walls = []
    for _ in range(n):
        began = time.perf_counter()
        command = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent.scheduler", "--db", url, "run-now", "manual",
            cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        await command.wait()
        walls.append(time.perf_counter() - began)
        await asyncio.sleep(0.3)  # the run starts and ends before the next command
    await engine.stop()
    await runner
    runs = [r for r in store.runs(schedule="manual") if r.origin == "manual" and r.started_at and r.created_at]
    store.close()
    delays = [(r.started_at - r.created_at).total_seconds() for r in runs if r.started_at and r.created_at]
    return delays, walls


def figures(backend: str, delays: list[float], walls: list[float]) -> None:
    report(f"queued.{backend}.commit_to_start_median", median(delays) * 1000, "ms", f"n={len(delays)}, goal <= 300 ms")
    report(f"queued.{backend}.commit_to_start_p95", percentile(delays, 95) * 1000, "ms")
    report(f"queued.{backend}.run_now_command_wall_median", median(walls) * 1000, "ms", "process start included")


def main() -> None:
    logging.disable(logging.WARNING)
    n = size_from_argv(20)
    delays, walls = asyncio.run(measure(f"sqlite:///{tmp_db('queued')}", n))
    figures("sqlite", delays, walls)
    if len(sys.argv) > 2:
        delays, walls = asyncio.run(measure(sys.argv[2], n))
        figures("postgresql", delays, walls)


if __name__ == "__main__":
    main()
