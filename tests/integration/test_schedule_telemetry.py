"""Run telemetry to actp_scheduled_runs on a real PostgreSQL server: rows arrive, an outage waits, no duplicates."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from agent.scheduler import FakeClock, RunStatus, ScheduleDefinition, ScheduleStore
from agent.scheduler.adapters.telemetry import CURSOR_KEY, TelemetryExporter
from agent.scheduler.engine import ScheduleEngine
from agent.scheduler.tasks import RunContext, TaskRegistry
from tests.conftest import postgres_url, run_async

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "test-postgres.sh"
MakeSchedule = Callable[..., ScheduleDefinition]
ENV = {"ACTP_TEST_PG_PORT": "55433", "ACTP_TEST_PG_DATA": "/tmp/actp-test-pg-telemetry"}


class Target:
    """A second PostgreSQL server playing Supabase, which the test can stop and start."""

    def __init__(self) -> None:
        out = self._script("start")
        self.url = out.split("ACTP_TEST_POSTGRES_URL=")[1].split()[0]

    def _script(self, action: str) -> str:
        import os

        done = subprocess.run(
            ["bash", str(SCRIPT), action],
            env={**os.environ, **ENV},
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return done.stdout

    def stop(self) -> None:
        self._script("stop")

    def start(self) -> None:
        self._script("start")

    def rows(self) -> list[tuple[str, str, str | None]]:
        engine = create_engine(self.url)
        try:
            with engine.connect() as conn:
                found = conn.execute(text("SELECT run_id, status, worker_id FROM actp_scheduled_runs ORDER BY run_id"))
                return [(r[0], r[1], r[2]) for r in found]
        finally:
            engine.dispose()


@pytest.fixture
def target() -> Iterator[Target]:
    postgres_url()  # the same rule as every PostgreSQL test: required in CI, a reasoned skip elsewhere
    t = Target()
    engine = create_engine(t.url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS actp_scheduled_runs"))
    engine.dispose()
    yield t
    t.stop()


async def record(ctx: RunContext) -> str:
    return "ok"


@run_async
async def test_finished_runs_reach_the_table_an_outage_keeps_the_backlog_and_nothing_is_sent_twice(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule, target: Target
) -> None:
    tasks = TaskRegistry()
    tasks.add("record", record)
    store.add(make_schedule("minutely", expression="1m", target="record"))
    engine = ScheduleEngine(store, tasks, clock=clock, tick_seconds=3600, worker_id="w1")
    await engine.start()
    await engine.run_until(clock.now() + timedelta(minutes=10))
    await engine.wait_idle()

    exporter = TelemetryExporter(store, target.url, batch_size=4)
    assert exporter.export_backlog() == 10  # three batches of at most four
    rows = target.rows()
    assert len(rows) == 10 and {(s, w) for _, s, w in rows} == {("succeeded", "w1")}

    target.stop()
    await engine.run_until(clock.now() + timedelta(minutes=5))
    await engine.wait_idle()
    assert len(store.runs(status=RunStatus.SUCCEEDED)) == 15  # the engine did not notice the outage
    cursor = store.meta_get(CURSOR_KEY)
    with pytest.raises(Exception, match=r"connect|Connection|refused"):
        exporter.export_batch()
    assert store.meta_get(CURSOR_KEY) == cursor
    stopping = asyncio.Event()
    loop_pass = asyncio.ensure_future(exporter.run(stopping, interval=0.01))
    await asyncio.sleep(0.3)
    stopping.set()
    await loop_pass  # failed passes are logged and retried, never raised
    exporter.close()

    target.start()
    after_restart = TelemetryExporter(store, target.url)
    assert after_restart.export_backlog() == 5
    assert after_restart.export_backlog() == 0
    store.meta_set(CURSOR_KEY, "")  # even a lost cursor sends nothing twice: rows are upserted by run id
    assert after_restart.export_backlog() == 15
    run_ids = [r[0] for r in target.rows()]
    assert len(run_ids) == len(set(run_ids)) == 15
    assert set(run_ids) == {r.run_id for r in store.runs()}
    after_restart.close()
    await engine.stop()


def test_export_is_off_without_configuration(store: ScheduleStore) -> None:
    assert TelemetryExporter.from_env(store, {}) is None
