"""Migrating the legacy cron table into a real SQLite store, its fire times, its local jobs, and a simulated day."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

import jobs
from agent.scheduler import FakeClock, RunStatus, ScheduleDefinition, ScheduleStore, TriggerType, inbox
from agent.scheduler.adapters.legacy_cron import (
    META_MIGRATED,
    META_VERSION,
    MIGRATION_VERSION,
    CronJob,
    JobKind,
    LegacyCronError,
    MigrationResult,
    legacy_id,
    migrate,
)
from agent.scheduler.engine import ScheduleEngine
from agent.scheduler.enums import ScheduleSource
from agent.scheduler.identity import Caller
from agent.scheduler.settings import Settings, load_settings
from agent.scheduler.tasks import RunContext, TaskRegistry
from cron_definitions import CALL_SERVICE, CRON_JOBS, HEALTH_CHECKED_SERVICES
from jobs.config import ConfigError
from jobs.http import ServiceCall, key_variable, url_variable
from jobs.local import DISK_STATE, HEARTBEAT_STATE_PREFIX, LocalJobs
from jobs.reports import Reports
from jobs.supabase import SupabaseHeartbeatError
from tests.conftest import T0, postgres_url, run_async

NEW_YORK = "America/New_York"
HOUR = timedelta(hours=1)
#: Variables a simulation must not inherit from the machine running the tests.
SERVICE_VARIABLES = [
    v for s in HEALTH_CHECKED_SERVICES for v in (url_variable(s), key_variable(s), f"ACTP_{s.upper()}_HEALTH_PATH")
] + ["SUPABASE_DB_URL", "ACTP_HTTP_TIMEOUT_SECONDS"]


class SettlingClock(FakeClock):
    """A FakeClock on which tasks take no simulated time: before time moves on, runs in flight finish.

    Tasks that run in threads (or wait on sockets) would otherwise still be running when the
    FakeClock jumps to the next due instant, and their schedules' next occurrences would meet
    them as overlaps. The engine names each run's asyncio task ``run:<run id>``.
    """

    async def sleep(self, seconds: float) -> None:
        running = [t for t in asyncio.all_tasks() if t.get_name().startswith("run:") and not t.done()]
        if running:
            await asyncio.wait(running)
            await asyncio.sleep(0)  # the engine's wake-up goes first: time stays where the work ended
        await super().sleep(seconds)


@pytest.fixture
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No service configured; the worker's directories in tmp_path; New York time."""
    for name in SERVICE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ACTP_TIMEZONE", NEW_YORK)
    for variable, sub in (("ACTP_DOWNLOAD_DIR", "downloads"), ("ACTP_LOG_DIR", "logs"), ("ACTP_DATA_DIR", "data")):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(variable, str(tmp_path / sub))
    return tmp_path


@pytest.fixture
def legacy_store(db_path: Path, clock: FakeClock) -> Iterator[ScheduleStore]:
    store = ScheduleStore(db_path, clock=clock)
    yield store
    store.close()


def registry(store: ScheduleStore, settings: Settings | None = None) -> TaskRegistry:
    tasks = TaskRegistry()
    jobs.register(tasks, store, worker_id="test-worker", settings=settings)
    return tasks


def legacy(store: ScheduleStore) -> dict[str, ScheduleDefinition]:
    return {d.name: d for d in store.list(source=ScheduleSource.LEGACY_CRON)}


def cadence(d: ScheduleDefinition) -> str | int:
    return d.expression if d.trigger_type is TriggerType.CALENDAR else int(d.expression.removesuffix("s"))


# ---------------------------------------------------------------------- migration


def test_the_first_migration_stores_all_33_in_one_go_and_records_its_version(legacy_store: ScheduleStore) -> None:
    result = migrate(legacy_store, CRON_JOBS, timezone=NEW_YORK, tasks=registry(legacy_store))
    assert (len(result.added), result.present, result.retired, result.conflicts) == (33, (), (), ())
    stored = legacy(legacy_store)
    assert sorted(stored) == sorted(j.name for j in CRON_JOBS)
    for entry in CRON_JOBS:
        d = stored[entry.name]
        assert (d.id, d.source, d.target, d.enabled) == (
            legacy_id(entry.name),
            ScheduleSource.LEGACY_CRON,
            entry.task,
            True,
        )
        assert cadence(d) == (entry.cron if entry.cron is not None else entry.interval_seconds)
        assert d.timezone == (NEW_YORK if entry.cron is not None else "UTC")
        assert d.created_at == T0
    assert legacy_store.meta_get(META_VERSION) == str(MIGRATION_VERSION)
    assert json.loads(legacy_store.meta_get(META_MIGRATED) or "[]") == sorted(stored)
    assert result.summary() == "added 33, already present 0"


def test_later_migrations_change_nothing_and_keep_what_an_operator_changed(
    legacy_store: ScheduleStore, clock: FakeClock
) -> None:
    migrate(legacy_store, CRON_JOBS, timezone=NEW_YORK)
    legacy_store.disable("crm_sync", reason="CRM migration in progress")
    legacy_store.update("upwork_scan", expression="0 */3 * * *", max_retries=0)
    legacy_store.update("memory_compaction", name="memory_compaction_nightly")
    before = legacy_store.list()
    for _ in range(2):
        clock.advance(timedelta(hours=1))
        result = migrate(legacy_store, CRON_JOBS, timezone="Europe/Berlin")
        assert (result.added, len(result.present)) == ((), 33)
        assert result.summary() == "added 0, already present 33"
        assert legacy_store.list() == before  # not one field of one schedule changed, updated_at included
    crm = legacy_store.get("crm_sync")
    assert (crm.enabled, crm.disabled_reason) == (False, "CRM migration in progress")
    assert (legacy_store.get("upwork_scan").expression, legacy_store.get("upwork_scan").max_retries) == (
        "0 */3 * * *",
        0,
    )
    assert legacy_store.get(legacy_id("memory_compaction")).name == "memory_compaction_nightly"


def test_a_new_entry_is_added_later_and_a_removed_one_stays_removed(legacy_store: ScheduleStore) -> None:
    migrate(legacy_store, CRON_JOBS, timezone=NEW_YORK)
    legacy_store.remove("twitter_research")
    newcomer = CronJob(
        name="bluesky_research",
        kind=JobKind.PERIODIC,
        cron="45 */6 * * *",
        task=CALL_SERVICE,
        params={"service": "research", "method": "POST", "path": "/api/cron/bluesky-research"},
        description="Collect Bluesky research",
    )
    result = migrate(legacy_store, (*CRON_JOBS, newcomer), timezone=NEW_YORK)
    assert result.added == ("bluesky_research",)
    assert result.retired == ("twitter_research",)
    assert len(result.present) == 32
    stored = legacy(legacy_store)
    assert "twitter_research" not in stored
    assert (stored["bluesky_research"].id, stored["bluesky_research"].expression) == (
        "legacy_bluesky_research",
        "45 */6 * * *",
    )
    assert "bluesky_research" in json.loads(legacy_store.meta_get(META_MIGRATED) or "[]")


def test_two_workers_migrating_at_once_store_each_job_once(db_path: Path, clock: FakeClock) -> None:
    stores = [ScheduleStore(db_path, clock=clock) for _ in range(2)]
    barrier = threading.Barrier(2)
    results: list[MigrationResult] = []

    def worker(store: ScheduleStore) -> None:
        barrier.wait()
        results.append(migrate(store, CRON_JOBS, timezone=NEW_YORK))

    threads = [threading.Thread(target=worker, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert len(results) == 2
        assert sorted(len(r.added) for r in results) == [0, 33]
        assert all(len(r.added) + len(r.present) == 33 for r in results)
        assert len(stores[0].list()) == 33
        assert len(json.loads(stores[0].meta_get(META_MIGRATED) or "[]")) == 33
    finally:
        for s in stores:
            s.close()


def test_a_name_taken_by_an_operator_s_own_schedule_is_reported_not_overwritten(legacy_store: ScheduleStore) -> None:
    legacy_store.add(ScheduleDefinition(name="crm_sync", trigger_type="interval", expression="1h", target="mine"))
    result = migrate(legacy_store, CRON_JOBS, timezone=NEW_YORK)
    assert (len(result.added), result.conflicts) == (32, ("crm_sync",))
    assert legacy_store.get("crm_sync").source is ScheduleSource.USER


def test_a_schedule_named_as_an_entry_s_id_is_reported_and_the_other_entries_migrate(
    legacy_store: ScheduleStore,
) -> None:
    # An operator's schedule named "legacy_crm_sync" would answer to the entry's id: not added,
    # reported, and the worker still starts with the other 32 (on every start).
    mine = legacy_store.add(
        ScheduleDefinition(name="legacy_crm_sync", trigger_type="interval", expression="1h", target="mine")
    )
    for _ in range(2):
        result = migrate(legacy_store, CRON_JOBS, timezone=NEW_YORK)
        assert result.conflicts == ("crm_sync",) and len(result.added) + len(result.present) == 32
    assert legacy_store.get("legacy_crm_sync") == mine and "crm_sync" not in {s.name for s in legacy_store.list()}


def test_a_bad_entry_fails_the_migration_naming_it_and_nothing_is_migrated(legacy_store: ScheduleStore) -> None:
    bad = CronJob(name="broken_report", kind=JobKind.DAILY, cron="0 25 * * *", task=CALL_SERVICE, description="x")
    with pytest.raises(LegacyCronError) as caught:
        migrate(legacy_store, (*CRON_JOBS, bad), timezone=NEW_YORK)
    assert caught.value.job == "broken_report" and caught.value.field == "expression"
    assert "legacy cron entry 'broken_report'" in str(caught.value)
    assert legacy_store.list() == []
    assert (legacy_store.meta_get(META_VERSION), legacy_store.meta_get(META_MIGRATED)) == (None, None)


def test_a_failure_inside_the_transaction_rolls_back_every_write(
    legacy_store: ScheduleStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = legacy_store.meta_set

    def failing(key: str, value: str) -> None:
        real(key, value)
        if key == META_VERSION:
            raise RuntimeError("disk full while recording the version")

    monkeypatch.setattr(legacy_store, "meta_set", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        migrate(legacy_store, CRON_JOBS, timezone=NEW_YORK)
    monkeypatch.undo()
    assert legacy_store.list() == []
    assert (legacy_store.meta_get(META_VERSION), legacy_store.meta_get(META_MIGRATED)) == (None, None)
    assert len(migrate(legacy_store, CRON_JOBS, timezone=NEW_YORK).added) == 33


def test_the_timezone_comes_from_the_environment(legacy_store: ScheduleStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACTP_TIMEZONE", "Asia/Tokyo")
    migrate(legacy_store, CRON_JOBS)
    assert {d.timezone for d in legacy(legacy_store).values() if d.trigger_type is TriggerType.CALENDAR} == {
        "Asia/Tokyo"
    }


# ---------------------------------------------------------------------- equivalence of fire times


def croniter_fires(expression: str, zone: str, after: datetime, n: int) -> list[datetime]:
    """The next ``n`` fires of a cron read in ``zone``, from croniter alone (not our triggers module).

    The documented DST rule on top: a fixed-hour cron's wall time repeated by a fall-back fires once.
    """
    every_hour = croniter(expression).expanded[1] == ["*"]
    walker = croniter(expression, after.astimezone(ZoneInfo(zone)))
    fires: list[datetime] = []
    while len(fires) < n:
        fire = walker.get_next(datetime)
        if fire.fold == 1 and not every_hour:
            continue
        fires.append(fire.astimezone(UTC))
    return fires


def trigger_fires(d: ScheduleDefinition, after: datetime, n: int) -> list[datetime]:
    trigger = d.trigger(after)
    fires: list[datetime] = []
    cursor = after
    while len(fires) < n:
        nxt = trigger.next_after(cursor)
        assert nxt is not None
        fires.append(nxt)
        cursor = nxt
    return fires


def test_the_next_50_fire_times_of_every_job_equal_the_legacy_entry_s_across_dst(
    legacy_store: ScheduleStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACTP_TIMEZONE", NEW_YORK)
    migrate(legacy_store, CRON_JOBS)
    stored = legacy(legacy_store)
    zone = ZoneInfo(NEW_YORK)
    starts = [
        datetime(2027, 3, 12, 0, 0, tzinfo=zone),
        datetime(2027, 3, 14, 0, 0, tzinfo=zone),
        datetime(2027, 11, 5, 0, 0, tzinfo=zone),
        datetime(2027, 11, 7, 0, 0, tzinfo=zone),
        # Minutes before each change, for the 10 s pollers (fold=0: the first, EDT, 01:55 of the fall).
        datetime(2027, 3, 14, 1, 55, tzinfo=zone),
        datetime(2027, 11, 7, 1, 55, tzinfo=zone),
    ]
    for entry in CRON_JOBS:
        d = stored[entry.name]
        crossed: set[tuple[int, int]] = set()
        for start in starts:
            if entry.cron is not None:
                expected = croniter_fires(entry.cron, NEW_YORK, start, 50)
            else:
                assert entry.interval_seconds is not None
                # Real elapsed time: aware arithmetic in a named zone would be wall-clock arithmetic.
                expected = [start.astimezone(UTC) + timedelta(seconds=k * entry.interval_seconds) for k in range(1, 51)]
            assert trigger_fires(d, start, 50) == expected, (entry.name, start)
            first, last = (expected[i].astimezone(zone).utcoffset() for i in (0, -1))
            assert first is not None and last is not None
            crossed.add((first // HOUR, last // HOUR))
        # Every job's windows go across a spring-forward and a fall-back (UTC offset -5 h is EST, -4 h EDT).
        assert {(-5, -4), (-4, -5)} <= crossed, (entry.name, crossed)
    # The DST cases that matter, spelled out: every-2-hours skips nothing on the spring-forward
    # night (02:00 does not exist: fires at 03:00 EDT), and hourly jobs fire on both 01:00s in the fall.
    spring = trigger_fires(stored["upwork_scan"], datetime(2027, 3, 14, 0, 30, tzinfo=zone), 2)
    assert [f.astimezone(zone).strftime("%H:%M %Z") for f in spring] == ["03:00 EDT", "04:00 EDT"]
    fall = trigger_fires(stored["temp_cleanup"], datetime(2027, 11, 7, 0, 30, tzinfo=zone), 3)
    assert [f.astimezone(zone).strftime("%H:%M %Z") for f in fall] == ["01:00 EDT", "01:00 EST", "02:00 EST"]


# ---------------------------------------------------------------------- local jobs


def context(store: ScheduleStore, name: str, *, at: datetime | None = None) -> RunContext:
    schedule = store.get(name)
    intended = at or store.clock.now()
    return RunContext(
        run_id="run_test",
        schedule=schedule,
        intended_run_at=intended,
        attempt=1,
        params=dict(schedule.params),
        checkpoint=None,
        idempotency_key=f"{schedule.id}:{intended.isoformat()}",
    )


@pytest.fixture
def migrated(legacy_store: ScheduleStore, isolated_env: Path) -> ScheduleStore:
    migrate(legacy_store, CRON_JOBS)
    return legacy_store


def touch(path: Path, *, at: datetime, size: int = 10) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (at.timestamp(), at.timestamp()))
    return path


def test_heartbeat_writes_its_row_and_reaches_supabase_only_when_configured(
    migrated: ScheduleStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = LocalJobs(migrated, "test-worker")
    outcome = local.heartbeat(context(migrated, "worker_heartbeat"))
    assert "SUPABASE_DB_URL not set" in outcome
    row = migrated.get_state(HEARTBEAT_STATE_PREFIX + "test-worker")
    assert row is not None
    assert (row["worker_id"], row["status"], row["last_heartbeat"]) == ("test-worker", "online", T0.isoformat())
    assert row["hostname"] and row["python_version"] and row["system_info"]["pid"] == os.getpid()
    # Configured but unreachable: the run fails (and is retried); the local row is still written.
    monkeypatch.setenv("SUPABASE_DB_URL", "postgresql://worker:secret@127.0.0.1:9/postgres")
    with pytest.raises(SupabaseHeartbeatError, match="Supabase heartbeat failed") as caught:
        local.heartbeat(context(migrated, "worker_heartbeat"))
    assert "secret" not in str(caught.value)


@pytest.mark.postgres
def test_heartbeat_upserts_the_supabase_row_on_a_real_postgres(migrated: ScheduleStore, clock: FakeClock) -> None:
    url = postgres_url()  # ACTP_TEST_POSTGRES_URL: a skip without it, a failure in CI
    from sqlalchemy import create_engine, text

    from jobs.supabase import postgres_url as sqlalchemy_url

    engine = create_engine(sqlalchemy_url(url))
    ddl = """CREATE TABLE actp_worker_heartbeats (
        id UUID PRIMARY KEY DEFAULT gen_random_uuid(), worker_id TEXT NOT NULL UNIQUE, hostname TEXT,
        os_version TEXT, python_version TEXT, status TEXT NOT NULL DEFAULT 'online', current_job JSONB,
        capabilities JSONB DEFAULT '[]', jobs_completed INT DEFAULT 0, jobs_failed INT DEFAULT 0,
        last_heartbeat TIMESTAMPTZ DEFAULT NOW(), started_at TIMESTAMPTZ DEFAULT NOW(), system_info JSONB)"""
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS actp_worker_heartbeats"))
            conn.execute(text(ddl))
        local = LocalJobs(migrated, "pg-worker", load_settings({"SUPABASE_DB_URL": url}))
        for _ in range(2):
            assert "Supabase" in local.heartbeat(context(migrated, "worker_heartbeat"))
            clock.advance(60)
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT worker_id, status, last_heartbeat, system_info FROM actp_worker_heartbeats")
            )
            [(worker, status, last, system)] = rows.all()
        assert (worker, status, last) == ("pg-worker", "online", T0 + timedelta(seconds=60))
        assert system["pid"] == os.getpid()
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS actp_worker_heartbeats"))
        engine.dispose()


def test_temp_cleanup_deletes_only_files_older_than_24_hours(migrated: ScheduleStore, isolated_env: Path) -> None:
    now = migrated.clock.now()
    root = isolated_env / "downloads"
    old = [
        touch(root / "a.mp4", at=now - timedelta(hours=25), size=1014),
        touch(root / "x/y/b.tmp", at=now - timedelta(days=3)),
    ]
    fresh = [
        touch(root / "c.mp4", at=now - timedelta(hours=23)),
        touch(root / "x/d.tmp", at=now - timedelta(minutes=1)),
    ]
    empty = root / "stale_empty"
    empty.mkdir()
    os.utime(empty, ((now - timedelta(days=2)).timestamp(),) * 2)
    outcome = LocalJobs(migrated, "w").temp_cleanup(context(migrated, "temp_cleanup"))
    assert outcome.startswith("deleted 2 file(s) (1.0 KB) older than 24 h") and outcome.endswith("kept 2")
    assert [p.exists() for p in old] == [False, False]
    assert [p.exists() for p in fresh] == [True, True]
    assert not empty.exists()


def test_temp_cleanup_refuses_a_directory_that_is_not_its_own(
    migrated: ScheduleStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for broad in ("/", str(Path.home())):
        monkeypatch.setenv("ACTP_DOWNLOAD_DIR", broad)
        with pytest.raises(ConfigError, match="ACTP_DOWNLOAD_DIR"):
            LocalJobs(migrated, "w").temp_cleanup(context(migrated, "temp_cleanup"))
    monkeypatch.setenv("ACTP_DOWNLOAD_DIR", str(Path.home() / "no-such-actp-dir"))
    assert "does not exist" in LocalJobs(migrated, "w").temp_cleanup(context(migrated, "temp_cleanup"))


def test_log_rotation_rotates_by_size_or_daily_and_keeps_n(
    migrated: ScheduleStore, isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACTP_LOG_MAX_BYTES", "100")
    monkeypatch.setenv("ACTP_LOG_KEEP", "2")
    now = migrated.clock.now()
    logs = isolated_env / "logs"
    (logs / "daily.log").write_text("today\n")
    touch(logs / "daily.log.1", at=now - timedelta(days=1))
    (logs / "daily.log.1").write_text("yesterday\n")
    os.utime(logs / "daily.log.1", ((now - timedelta(days=1)).timestamp(),) * 2)
    (logs / "daily.log.2").write_text("two days ago\n")
    (logs / "daily.log.5").write_text("left over from a larger keep\n")
    (logs / "big.log").write_text("y" * 150)
    touch(logs / "big.log.1", at=now - timedelta(hours=1))
    (logs / "recent.log").write_text("small\n")
    touch(logs / "recent.log.1", at=now - timedelta(hours=2))
    (logs / "empty.log").write_text("")
    (logs / "notes.txt").write_text("not a log")
    outcome = LocalJobs(migrated, "w").log_rotation(context(migrated, "log_rotation"))
    assert outcome.startswith("rotated 2 of 4 log file(s)") and "big.log (150 B >= 100 B)" in outcome
    assert "daily.log (daily)" in outcome
    assert (logs / "daily.log").read_text() == ""
    assert (logs / "daily.log.1").read_text() == "today\n"
    assert (logs / "daily.log.2").read_text() == "yesterday\n"
    assert not (logs / "daily.log.3").exists() and not (logs / "daily.log.5").exists()
    assert (logs / "daily.log.1").stat().st_mtime == now.timestamp()
    assert ((logs / "big.log").stat().st_size, (logs / "big.log.1").stat().st_size) == (0, 150)
    assert (logs / "recent.log").read_text() == "small\n"


def test_disk_space_check_alerts_once_when_the_disk_becomes_low(
    migrated: ScheduleStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = LocalJobs(migrated, "w")
    ctx = context(migrated, "disk_space_check")
    monkeypatch.setenv("ACTP_DISK_MIN_FREE_MB", "0")
    assert local.disk_space_check(ctx).startswith("ok: ")
    monkeypatch.setenv("ACTP_DISK_MIN_FREE_MB", str(10**12))
    assert local.disk_space_check(ctx).startswith("LOW, alert queued")
    assert local.disk_space_check(ctx).startswith("still low")
    [alert] = migrated.alerts()
    assert alert.kind == "disk_space" and "Disk space low" in alert.text
    assert alert.payload["minimum_mb"] == 10**12 and alert.payload["free_mb"] < 10**12
    assert (migrated.get_state(DISK_STATE) or {})["low"] is True
    monkeypatch.setenv("ACTP_DISK_MIN_FREE_MB", "0")
    local.disk_space_check(ctx)
    monkeypatch.setenv("ACTP_DISK_MIN_FREE_MB", str(10**12))
    local.disk_space_check(ctx)
    assert len(migrated.alerts()) == 2
    monkeypatch.setenv("ACTP_DISK_MIN_FREE_MB", "lots")
    with pytest.raises(ConfigError, match="ACTP_DISK_MIN_FREE_MB='lots'"):
        local.disk_space_check(ctx)


def finish(store: ScheduleStore, schedule: ScheduleDefinition, at: datetime, status: RunStatus) -> str:
    run = store.create_run(schedule, at)
    assert run is not None
    if status is RunStatus.SKIPPED:
        return store.transition(run, "skip", reason="missed: test").run_id
    if status is RunStatus.PENDING:
        return run.run_id
    run = store.transition(run, "start", owner="w")
    if status is RunStatus.SUCCEEDED:
        return store.transition(run, "succeed", outcome="ok").run_id
    run = store.transition(run, "fail", error="ValueError: boom", error_type="ValueError", reason="task raised")
    return store.transition(run, "dead_letter", schedule=schedule).run_id


def test_db_maintenance_prunes_finished_runs_past_retention_and_optimizes(
    migrated: ScheduleStore, clock: FakeClock
) -> None:
    schedule = migrated.add(
        ScheduleDefinition(name="history", trigger_type="interval", expression="1h", target="t", max_retries=0)
    )
    kinds = [RunStatus.SUCCEEDED, RunStatus.SKIPPED, RunStatus.DEAD_LETTERED, RunStatus.PENDING, RunStatus.SUCCEEDED]
    old = [finish(migrated, schedule, T0 - timedelta(hours=5 - i), status) for i, status in enumerate(kinds)]
    consumed = inbox.emit_event(migrated, "job.done", {}, by=Caller.operator("tester"))
    assert migrated.consume_event(consumed.id, worker_id="w", now=clock.now())
    clock.advance(timedelta(days=31))
    waiting = inbox.emit_event(migrated, "job.done", {}, by=Caller.operator("tester"))
    recent = finish(migrated, schedule, clock.now(), RunStatus.SKIPPED)
    outcome = LocalJobs(migrated, "w").db_maintenance(context(migrated, "scheduler_db_maintenance"))
    assert outcome.startswith("pruned 3 finished run(s) and 1 consumed event(s)"), outcome
    assert "(30 days); PRAGMA optimize done" in outcome
    assert [e.id for e in migrated.events()] == [waiting.id]  # pending events stay
    # Dead letters stay replayable, pending runs are not finished, and recent history stays.
    assert {r.run_id for r in migrated.runs(schedule="history")} == {old[2], old[3], recent}
    # The newest run of a schedule stays whatever its age.
    lonely = migrated.add(ScheduleDefinition(name="rare", trigger_type="interval", expression="90d", target="t"))
    last = finish(migrated, lonely, clock.now() - timedelta(days=60), RunStatus.SUCCEEDED)
    clock.advance(timedelta(days=40))
    LocalJobs(migrated, "w").db_maintenance(context(migrated, "scheduler_db_maintenance"))
    assert [r.run_id for r in migrated.runs(schedule="rare")] == [last]


def test_daily_summary_and_dlq_digest_queue_alerts_composed_from_the_store(migrated: ScheduleStore) -> None:
    flaky = migrated.add(
        ScheduleDefinition(name="flaky", trigger_type="interval", expression="1h", target="t", max_retries=0)
    )
    now = migrated.clock.now()
    reports = Reports(migrated)
    assert reports.dlq_digest(context(migrated, "dlq_digest")) == "no dead letters waiting: nothing to send"
    assert migrated.alerts() == []
    dead = finish(migrated, flaky, now - timedelta(hours=3), RunStatus.DEAD_LETTERED)
    finish(migrated, flaky, now - timedelta(hours=2), RunStatus.SUCCEEDED)
    finish(migrated, flaky, now - timedelta(hours=1), RunStatus.SKIPPED)
    finish(migrated, flaky, now - timedelta(hours=30), RunStatus.SUCCEEDED)  # outside the day
    outcome = reports.daily_summary(context(migrated, "daily_summary_telegram"))
    assert outcome.startswith("Daily summary to 2027-03-13 07:00 EST: 3 run(s) in the last 24 h")
    [summary] = migrated.alerts()
    assert summary.kind == "daily_summary"
    assert "(1 dead_lettered, 1 skipped, 1 succeeded)" in summary.text
    assert "flaky: 1 dead_lettered" in summary.text and "ValueError: boom" in summary.text
    assert "1 x missed: test" in summary.text and "Dead letters waiting for replay: 1" in summary.text
    assert summary.payload["by_status"] == {"dead_lettered": 1, "skipped": 1, "succeeded": 1}
    assert reports.dlq_digest(context(migrated, "dlq_digest")).startswith("1 dead letter(s) from 1 schedule(s)")
    [digest] = [a for a in migrated.alerts() if a.kind == "dlq_digest"]
    assert dead in digest.text and "ValueError: boom" in digest.text
    assert digest.payload == {"count": 1, "by_schedule": {"flaky": 1}, "run_ids": [dead]}


# ---------------------------------------------------------------------- a simulated day


def croniter_count(expression: str, zone: str, start: datetime, end: datetime) -> int:
    """Fires in ``(start, end]``, by croniter alone (with the fall-back rule, which this day does not need)."""
    return sum(1 for fire in croniter_fires(expression, zone, start, 2000) if fire <= end)


def expected_runs(entries: list[CronJob], start: datetime, end: datetime) -> dict[str, int]:
    seconds = int((end - start).total_seconds())
    return {
        e.name: croniter_count(e.cron, NEW_YORK, start, end)
        if e.cron is not None
        else seconds // (e.interval_seconds or 1)
        for e in entries
    }


async def simulate(
    db: Path, start: datetime, end: datetime, *, disabled: tuple[str, ...] = ()
) -> tuple[ScheduleStore, float]:
    clock = SettlingClock(start)
    store = ScheduleStore(db, clock=clock)
    # The settings read once and passed down to the engine and the jobs, as the worker does (not
    # read again at every run).
    settings = load_settings()
    tasks = registry(store, settings)
    migrate(store, CRON_JOBS, tasks=tasks)
    for name in disabled:
        store.disable(name, reason="simulated separately")
    engine = ScheduleEngine(store, tasks, clock=clock, tick_seconds=3600, worker_id="sim", settings=settings)
    began = time.perf_counter()
    await engine.start()
    await engine.run_until(end)
    await engine.wait_idle()
    elapsed = time.perf_counter() - began
    await engine.stop()
    return store, elapsed


def check_outcomes(store: ScheduleStore, expected: dict[str, int]) -> Counter[RunStatus]:
    by_name = {e.name: e for e in CRON_JOBS}
    totals: Counter[RunStatus] = Counter()
    for name, count in expected.items():
        runs = store.runs(schedule=name)
        statuses = Counter(r.status for r in runs)
        totals.update(statuses)
        assert len(runs) == count, (name, len(runs), count)
        entry = by_name[name]
        if entry.task == CALL_SERVICE:
            variable = url_variable(ServiceCall.from_params(entry.params).service)
            assert statuses == Counter({RunStatus.SKIPPED: count}), name
            reason = f"not configured: set {variable} (base URL of the {entry.params['service']} service)"
            assert all(r.reason == reason for r in runs), name
        elif name == "service_health_check":
            assert statuses == Counter({RunStatus.SKIPPED: count})
            assert all("ACTP_MPLITE_URL" in (r.reason or "") and "ACTP_STRATEGY_URL" in (r.reason or "") for r in runs)
        else:
            assert statuses == Counter({RunStatus.SUCCEEDED: count}), (
                name,
                statuses,
                {r.reason or r.error for r in runs},
            )
        assert all(r.started_at == r.intended_run_at and not r.catch_up for r in runs), name
    return totals


POLLER_NAMES = tuple(e.name for e in CRON_JOBS if e.kind is JobKind.POLLER)
#: Sunday 2027-03-21 09:30 in New York: the next 24 h hold Sunday 10:00 (weekly review) and Monday 09:00 (report).
DAY_START = datetime(2027, 3, 21, 9, 30, tzinfo=ZoneInfo(NEW_YORK)).astimezone(UTC)


@run_async
async def test_a_simulated_day_of_the_legacy_jobs_runs_each_the_expected_number_of_times(
    isolated_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """All 33 migrated; the five fast pollers disabled here (their ~27,000 runs are the next test's hour)."""
    end = DAY_START + timedelta(days=1)
    store, elapsed = await simulate(isolated_env / "day.db", DAY_START, end, disabled=POLLER_NAMES)
    daily = [e for e in CRON_JOBS if e.kind is not JobKind.POLLER]
    expected = expected_runs(daily, DAY_START, end)
    # Both weekly jobs fall in this window; the weekday-only 14:00 send does not (Sunday 09:30 to Monday 09:30).
    assert (expected["weekly_strategy_review"], expected["acquisition_report"], expected["email_sequence_send"]) == (
        1,
        1,
        0,
    )
    assert expected["worker_heartbeat"] == 1440 and expected["publish_due_posts"] == 288
    totals = check_outcomes(store, expected)
    assert all(store.count_runs(schedule=name) == 0 for name in POLLER_NAMES)
    assert RunStatus.FAILED not in totals and sum(totals.values()) == sum(expected.values())
    kinds = Counter(a.kind for a in store.alerts())
    assert kinds["daily_summary"] == 1
    summary = next(a for a in store.alerts() if a.kind == "daily_summary")
    assert "not configured: set ACTP_" in summary.text
    assert store.get_state(HEARTBEAT_STATE_PREFIX + "test-worker") is not None
    store.close()
    with capsys.disabled():
        print(f"\nsimulated day without the pollers: {sum(totals.values())} runs in {elapsed:.1f} s real")


@run_async
async def test_six_simulated_hours_of_the_pollers_run_each_poll_and_skip_it_as_not_configured(
    isolated_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The five fast pollers alone; all 33 in one day (30,040 runs) take about 60-70 s, too long for every run."""
    end = DAY_START + timedelta(hours=6)
    others = tuple(e.name for e in CRON_JOBS if e.kind is not JobKind.POLLER)
    store, elapsed = await simulate(isolated_env / "hour.db", DAY_START, end, disabled=others)
    expected = expected_runs([e for e in CRON_JOBS if e.kind is JobKind.POLLER], DAY_START, end)
    assert expected == {
        "mplite_queue_poll": 2160,
        "genlite_jobs_poll": 2160,
        "adlite_deployments_poll": 360,
        "workflow_task_poll": 720,
        "cloud_bridge_poll": 1440,
    }
    totals = check_outcomes(store, expected)
    assert totals == {RunStatus.SKIPPED: 6840}
    store.close()
    with capsys.disabled():
        print(f"\nsix simulated hours of the pollers: {sum(totals.values())} runs in {elapsed:.1f} s real")


# ---------------------------------------------------------------------- the worker wires it


@pytest.mark.system
def test_the_worker_migrates_on_its_first_start_and_only_reports_on_the_next(isolated_env: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    db = isolated_env / "worker.db"
    env = {**os.environ, "PYTHONPATH": str(root), "HOME": str(isolated_env), "ACTP_TIMEZONE": "Europe/Berlin"}

    def start_and_stop(log: Path) -> str:
        args = [sys.executable, str(root / "worker.py"), "--db", str(db), "--worker-id", "wired", "--tick", "1"]
        with log.open("wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)
        try:
            deadline = time.monotonic() + 30
            while "starting on" not in log.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        return log.read_text()

    first = start_and_stop(isolated_env / "first.log")
    assert "legacy cron table (Europe/Berlin): added 33, already present 0" in first
    second = start_and_stop(isolated_env / "second.log")
    assert "legacy cron table (Europe/Berlin): added 0, already present 33" in second
    store = ScheduleStore(db)
    try:
        assert len(store.list(source=ScheduleSource.LEGACY_CRON)) == 33
        assert store.meta_get(META_VERSION) == str(MIGRATION_VERSION)
    finally:
        store.close()
