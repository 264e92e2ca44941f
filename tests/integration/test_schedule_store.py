"""ScheduleStore on a real SQLite file: round trips, idempotent materialization, races, reopening."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from agent.scheduler import (
    BreakerState,
    FakeClock,
    InvalidSchedule,
    RunStatus,
    ScheduleDefinition,
    ScheduledRun,
    ScheduleStore,
    TriggerType,
)
from agent.scheduler.errors import DuplicateSchedule, GuardRejected, RunNotFound, ScheduleNotFound, StaleRun, StoreError
from agent.scheduler.policies.missed_run import PlannedRun
from agent.scheduler.policies.retry import backoff_delay
from agent.scheduler.records import ProposalRecord
from agent.scheduler.schema import SCHEMA_VERSION, TABLES
from agent.scheduler.store import Materialization, connection
from tests.conftest import BATCH_THRESHOLDS

MakeSchedule = Callable[..., ScheduleDefinition]
T0 = datetime(2027, 3, 13, 12, 0, tzinfo=UTC)


@pytest.fixture(params=BATCH_THRESHOLDS)
def batch_min(request: pytest.FixtureRequest) -> int:
    """Every store test through the batch statements and through one statement per item."""
    value: int = request.param
    return value


@pytest.fixture
def store(any_url: str, clock: FakeClock, batch_min: int) -> Iterator[ScheduleStore]:
    """The same suite on SQLite and on PostgreSQL."""
    s = ScheduleStore(any_url, clock=clock, batch_min=batch_min)
    yield s
    s.close()


@pytest.fixture
def sqlite_store(db_path: Path, clock: FakeClock, batch_min: int) -> Iterator[ScheduleStore]:
    s = ScheduleStore(f"sqlite:///{db_path}", clock=clock, batch_min=batch_min)
    yield s
    s.close()


def test_schema_has_every_table_and_a_version(store: ScheduleStore) -> None:
    from sqlalchemy import inspect

    with store.db.engine.connect() as conn:  # type: ignore[union-attr]
        inspector = inspect(conn)
        assert set(inspector.get_table_names()) >= set(TABLES)
        unique = [i for i in inspector.get_indexes("scheduled_runs") if i["name"] == "uq_runs_occurrence"]
    assert unique and unique[0]["unique"] and unique[0]["column_names"] == ["schedule_id", "occurrence_key"]
    assert store.schema_version() == SCHEMA_VERSION


def test_a_version_1_database_is_upgraded_in_place_and_keeps_its_runs_and_decisions(
    any_url: str, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    from sqlalchemy import text

    with ScheduleStore(any_url, clock=clock) as store:
        schedule = store.add(make_schedule("old"))
        run = store.create_run(schedule, T0, occurrence_key="manual:1", origin="manual")
        assert run is not None
        store.start_many([run], owner="w", lease_until=T0 + timedelta(minutes=1), now=T0)
        # Version 1 prepared a run ahead of its time by storing it before it (never started).
        ahead = store.create_run(schedule, T0 + timedelta(seconds=1), occurrence_key="ahead")
        assert ahead is not None
        for pid, decided_by in (("prop_auto", "policy"), ("prop_human", "alice"), ("prop_open", None)):
            store.save_proposal(
                ProposalRecord(
                    id=pid, name=pid, status="submitted", proposed_by="agent-7", payload={}, decided_by=decided_by
                )
            )
        with store.db.engine.begin() as conn:  # type: ignore[union-attr]
            # Version 1 had neither ``prepared`` nor ``starts``; nor did it record a decision's door and time.
            conn.execute(text("ALTER TABLE scheduled_runs DROP COLUMN prepared"))
            conn.execute(text("ALTER TABLE scheduled_runs DROP COLUMN starts"))
            conn.execute(text("ALTER TABLE proposals DROP COLUMN decided_via"))
            conn.execute(text("ALTER TABLE proposals DROP COLUMN decided_at"))
            # Nor an event inbox, nor a version of each schedule row.
            conn.execute(text("DROP TABLE event_inbox"))
            conn.execute(text("ALTER TABLE schedules DROP COLUMN version"))
            # Nor the index of breaker states.
            conn.execute(text("DROP INDEX ix_schedules_breaker"))
            conn.execute(text("UPDATE meta SET value = '1' WHERE key = 'schema_version'"))
    with ScheduleStore(any_url, clock=clock) as store:
        assert store.schema_version() == SCHEMA_VERSION == 5
        indexes = {i["name"]: i["column_names"] for i in sa.inspect(store.db.engine).get_indexes("schedules")}
        assert indexes["ix_schedules_breaker"] == ["breaker_state", "name"]
        assert store.count_events() == 0
        before = store.schedule_versions([schedule.id])[schedule.id]
        assert before == 0  # rows of earlier versions start at 0; a write draws a new one
        store.update(schedule.id, description="moved on")
        assert store.schedule_versions([schedule.id])[schedule.id] != before
        run, ahead = store.runs(schedule="old")
        assert (run.occurrence_key, run.prepared, run.starts) == ("manual:1", False, 1)  # it had started
        assert (ahead.occurrence_key, ahead.prepared, ahead.starts) == ("ahead", True, 0)
        decisions = {p.id: (p.decided_via, p.decided_at) for p in store.proposals()}
        assert decisions == {"prop_auto": ("policy", T0), "prop_human": (None, T0), "prop_open": (None, None)}


def test_an_index_added_since_the_schema_version_is_made_by_a_writing_store_without_drawing_a_version(
    any_url: str, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    from sqlalchemy import text

    def breaker_index(store: ScheduleStore) -> list[str] | None:
        found = {i["name"]: i["column_names"] for i in sa.inspect(store.db.engine).get_indexes("schedules")}
        return found.get("ix_schedules_breaker")

    with ScheduleStore(any_url, clock=clock) as store:
        store.add(make_schedule("kept"))
        with store.db.engine.begin() as conn:  # type: ignore[union-attr]
            conn.execute(text("DROP INDEX ix_schedules_breaker"))  # a database of an earlier release
    with ScheduleStore(any_url, clock=clock, read_only=True) as reader:
        assert breaker_index(reader) is None  # a read creates nothing, and reads as before
        assert [s.name for s in reader.open_breakers()] == []
    with ScheduleStore(any_url, clock=clock) as store:
        assert breaker_index(store) == ["breaker_state", "name"]
        assert store.schema_version() == SCHEMA_VERSION == 5  # the same version: older code still opens it
        assert [s.name for s in store.list()] == ["kept"]
    with ScheduleStore(any_url, clock=clock) as store:  # there already: nothing to do
        assert breaker_index(store) == ["breaker_state", "name"]


def test_sqlite_runs_in_wal_mode_with_the_tables_and_unique_index(sqlite_store: ScheduleStore, db_path: Path) -> None:
    store = sqlite_store
    assert set(TABLES) == {
        "meta",
        "schedules",
        "scheduled_runs",
        "dead_letters",
        "proposals",
        "reconciliation_reports",
        "alerts_outbox",
        "engine_state",
        "event_inbox",
    }
    with sqlite3.connect(db_path) as raw:
        tables = {r[0] for r in raw.execute("select name from sqlite_master where type='table'")}
        mode = raw.execute("pragma journal_mode").fetchone()[0]
        unique = raw.execute("select sql from sqlite_master where name='uq_runs_occurrence'").fetchone()[0]
    assert tables == set(TABLES)
    assert mode == "wal"
    assert "UNIQUE INDEX" in unique and "schedule_id, occurrence_key" in unique
    assert store.schema_version() == SCHEMA_VERSION


def test_schedule_round_trip_keeps_every_field(store: ScheduleStore, clock: FakeClock) -> None:
    original = ScheduleDefinition(
        name="report",
        trigger_type=TriggerType.CALENDAR,
        expression="0 6 * * 1-5",
        target="daily_report",
        timezone="Europe/Berlin",
        params={"recipients": ["ops"], "depth": 2, "nested": {"ok": True}},
        description="weekday report",
        missed_run_policy="catch_up_all",
        concurrency_policy="enqueue_one",
        shutdown_policy="checkpoint_and_stop",
        risk_tier="medium",
        max_retries=5,
        retry_backoff=timedelta(seconds=12.5),
        timeout=timedelta(minutes=3),
        grace=timedelta(seconds=45),
        catch_up_limit=7,
        shutdown_timeout=timedelta(seconds=40),
        breaker_threshold=4,
        breaker_cooldown=timedelta(minutes=15),
        source="agent",
        proposal_id="prop_1",
        next_run_at=datetime(2027, 3, 15, 5, 0, tzinfo=UTC),
        last_run_at=datetime(2027, 3, 12, 5, 0, 0, 123456, tzinfo=UTC),
        anchor_at=datetime(2027, 3, 1, 1, 0, tzinfo=timezone(timedelta(hours=1))),
    )
    stored = store.add(original)
    assert stored.created_at == clock.now() == stored.updated_at
    loaded = store.get("report")
    assert loaded == stored
    assert loaded.anchor_at == datetime(2027, 3, 1, 0, 0, tzinfo=UTC)
    assert loaded.anchor_at is not None and loaded.anchor_at.tzinfo is UTC
    assert store.get(stored.id) == stored


def test_a_taken_name_or_a_bad_update_writes_nothing(store: ScheduleStore, make_schedule: MakeSchedule) -> None:
    first = store.add(make_schedule("sweep"))
    with pytest.raises(DuplicateSchedule) as err:
        store.add(make_schedule("sweep", expression="1h"))
    assert err.value.field == "name"
    with pytest.raises(InvalidSchedule) as bad:
        store.update("sweep", expression="every now and then")
    assert bad.value.field == "expression"
    with pytest.raises(InvalidSchedule) as guarded:
        store.update("sweep", breaker_state="open")
    assert guarded.value.field == "breaker_state"
    assert store.list() == [first]


def test_list_filters_disable_enable_and_remove(store: ScheduleStore, make_schedule: MakeSchedule) -> None:
    store.add(make_schedule("b"))
    store.add(make_schedule("a", source="legacy_cron"))
    assert [s.name for s in store.list()] == ["a", "b"]
    off = store.disable("a", reason="maintenance window")
    assert (off.enabled, off.disabled_reason) == (False, "maintenance window")
    assert [s.name for s in store.list(enabled=True)] == ["b"]
    assert [s.name for s in store.list(source="legacy_cron")] == ["a"]
    on = store.enable("a")
    assert (on.enabled, on.disabled_reason) == (True, None)
    store.remove("b")
    with pytest.raises(ScheduleNotFound, match="no schedule named 'b'"):
        store.get("b")


def test_creating_the_same_occurrence_twice_is_a_no_op(store: ScheduleStore, make_schedule: MakeSchedule) -> None:
    s = store.add(make_schedule())
    first = store.create_run(s, T0)
    assert first is not None and first.status is RunStatus.PENDING
    same_instant_other_zone = T0.astimezone(timezone(timedelta(hours=-5)))
    assert store.create_run(s, same_instant_other_zone) is None
    assert store.create_run(s, T0, catch_up=True, coalesced_from=4) is None
    assert [r.run_id for r in store.runs(schedule="sweep")] == [first.run_id]
    other = store.create_run(s, T0 + timedelta(minutes=5))
    assert other is not None
    event_runs = [store.create_run(s, T0, occurrence_key=f"event:{i}", origin="event") for i in range(2)]
    assert all(r is not None for r in event_runs)
    assert store.count_runs(schedule="sweep") == 4


def test_run_round_trip_through_every_field(
    store: ScheduleStore, make_schedule: MakeSchedule, clock: FakeClock
) -> None:
    s = store.add(make_schedule(params={"a": 1}, max_retries=0))
    run = store.create_run(s, T0, params={"payload": {"job": 7}}, catch_up=True, coalesced_from=3, reason="caught up")
    assert run is not None
    assert store.get_run(run.run_id) == run
    started = store.transition(run, "start", owner="w1", lease_expires_at=T0 + timedelta(seconds=30))
    clock.advance(2)
    failed = store.transition(
        started,
        "fail",
        error_type="ValueError",
        error="ValueError: boom",
        error_traceback="Traceback...",
        checkpoint={"done": 3},
        reason="task raised",
    )
    loaded = store.get_run(run.run_id)
    assert loaded == failed
    assert (loaded.status, loaded.params, loaded.catch_up, loaded.coalesced_from) == (
        RunStatus.FAILED,
        {"payload": {"job": 7}},
        True,
        3,
    )
    assert (loaded.started_at, loaded.completed_at, loaded.checkpoint) == (T0, T0 + timedelta(seconds=2), {"done": 3})
    with pytest.raises(RunNotFound):
        store.get_run("run_missing")


def test_a_stale_snapshot_cannot_move_a_run_and_says_who_did(store: ScheduleStore, make_schedule: MakeSchedule) -> None:
    run = store.create_run(store.add(make_schedule()), T0)
    assert run is not None
    store.transition(run, "start", owner="worker-a")
    with pytest.raises(StaleRun) as err:
        store.transition(run, "start", owner="worker-b")
    assert (err.value.expected, err.value.actual, err.value.holder) == ("pending", "running", "worker-a")
    assert "worker-a" in str(err.value)
    assert store.get_run(run.run_id).owner == "worker-a"


def test_running_counts_are_the_running_runs_of_the_schedules_asked_on_any_worker(
    any_url: str, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    with ScheduleStore(any_url, clock=clock) as store:
        a, b, c = (store.add(make_schedule(name)) for name in ("a", "b", "c"))
        runs = {(s.name, i): store.create_run(s, T0 + timedelta(minutes=i)) for s in (a, b, c) for i in range(3)}
        for (name, i), run in runs.items():
            assert run is not None
            if (name, i) in (("a", 0), ("a", 1), ("b", 0), ("c", 0), ("c", 1)):
                started = store.transition(run, "start", owner=f"worker-{i}")
                if (name, i) == ("c", 1):
                    store.transition(started, "succeed")  # ran, and ran out
        assert store.running_counts([a.id, b.id, c.id]) == {a.id: 2, b.id: 1, c.id: 1}
        assert store.running_counts([a.id, a.id]) == {a.id: 2}
        assert store.running_counts([b.id, "sched_none"]) == {b.id: 1}
        assert store.running_counts([]) == {}


def test_a_snapshot_from_before_a_start_and_requeue_elsewhere_cannot_move_the_run(
    store: ScheduleStore, make_schedule: MakeSchedule
) -> None:
    # Back to pending with the same attempt, the run is not the one the old snapshot showed: it
    # started once since (the due guards never judge such work a missed occurrence).
    schedule = store.add(make_schedule())
    runs = [store.create_run(schedule, T0 + timedelta(minutes=i)) for i in range(3)]
    old = [r for r in runs if r is not None]
    for r in old:
        store.transition(store.transition(r, "start", owner="worker-b"), "requeue")
    for_one = store.transition_many([(old[0], "skip", {"reason": "judged on a stale snapshot"})])
    assert isinstance(for_one[0], StaleRun)
    many = store.start_many(old, owner="worker-a", lease_until=T0 + timedelta(minutes=5), now=T0)
    assert many == []
    assert [(r.status, r.starts, r.owner) for r in store.runs(schedule=schedule.name)] == [
        (RunStatus.PENDING, 1, None)
    ] * 3


def test_an_owner_late_with_its_outcome_learns_its_run_was_taken_over(
    store: ScheduleStore, make_schedule: MakeSchedule
) -> None:
    run = store.create_run(store.add(make_schedule()), T0)
    assert run is not None
    mine = store.transition(run, "start", owner="worker-a")
    assert (mine.starts, mine.prepared) == (1, False)
    orphaned = store.transition(mine, "orphan", error_type="Orphaned")
    retried = store.transition(orphaned, "retry", schedule=store.get(run.schedule_id))
    theirs = store.transition(retried, "start", owner="worker-b")
    assert (theirs.attempt, theirs.starts) == (2, 2)
    with pytest.raises(StaleRun) as err:
        store.transition(mine, "succeed")  # worker-a's outcome of attempt 1, written too late
    assert "was taken over: attempt 2 is now 'running' (this was attempt 1)" in str(err.value)
    assert err.value.holder == "worker-b"


def test_retry_with_backoff_then_dead_letter_is_persisted(
    store: ScheduleStore, make_schedule: MakeSchedule, clock: FakeClock
) -> None:
    s = store.add(make_schedule(max_retries=1, retry_backoff=timedelta(seconds=10)))
    run = store.create_run(s, T0, params={"x": 1})
    assert run is not None
    failed = store.transition(store.transition(run, "start"), "fail", error_type="OSError", error="OSError: down")
    with pytest.raises(GuardRejected, match="backoff"):
        store.transition(failed, "retry")
    assert store.get_run(run.run_id).status is RunStatus.FAILED
    clock.advance(backoff_delay(1, timedelta(seconds=10), key=run.run_id))
    again = store.transition(failed, "retry")
    assert (again.status, again.attempt) == (RunStatus.PENDING, 2)
    failed2 = store.transition(
        store.transition(again, "start"),
        "fail",
        error_type="OSError",
        error="OSError: still down",
        error_traceback="Traceback (most recent call last): ...",
    )
    with pytest.raises(GuardRejected, match="retries exhausted"):
        store.transition(failed2, "retry")
    dead = store.transition(failed2, "dead_letter")
    assert dead.status is RunStatus.DEAD_LETTERED
    [letter] = store.dead_letters()
    assert (letter.run_id, letter.attempts, letter.error_type, letter.error, letter.params) == (
        run.run_id,
        2,
        "OSError",
        "OSError: still down",
        {"x": 1},
    )
    assert letter.error_traceback and letter.intended_run_at == T0 and letter.replayed_at is None
    replayed = store.transition(dead, "replay", actor="alice")
    assert (replayed.status, replayed.attempt) == (RunStatus.PENDING, 1)
    [letter] = store.dead_letters()
    assert (letter.replayed_by, letter.replayed_at) == ("alice", clock.now())
    assert store.dead_letters(include_replayed=False) == []


def test_breaker_counts_and_trips_through_the_machine(store: ScheduleStore, make_schedule: MakeSchedule) -> None:
    s = store.add(make_schedule(breaker_threshold=2))
    with pytest.raises(GuardRejected):
        store.transition_breaker("sweep", "trip")
    assert store.record_outcome(s.id, failed=True).consecutive_failures == 1
    assert store.record_outcome(s.id, failed=False).consecutive_failures == 0
    store.record_outcome(s.id, failed=True)
    after = store.record_outcome(s.id, failed=True)
    opened = store.transition_breaker(after, "trip")
    assert store.get("sweep").breaker_state is BreakerState.OPEN == opened.breaker_state
    from agent.scheduler.errors import StaleBreaker

    with pytest.raises(StaleBreaker):
        store.transition_breaker(after, "trip")
    closed = store.transition_breaker("sweep", "reset")
    assert (closed.breaker_state, store.get("sweep").consecutive_failures) == (BreakerState.CLOSED, 0)


@pytest.mark.parametrize("bad", [0, -3, 1.5, "16", True, None])
def test_a_batch_threshold_that_is_not_a_whole_number_of_at_least_one_is_refused_before_opening(
    db_path: Path, bad: Any
) -> None:
    with pytest.raises(ValueError, match=r"batch_min must be an int of at least 1, got"):
        ScheduleStore(f"sqlite:///{db_path}", batch_min=bad)
    assert not db_path.exists()


class _Updates:
    """Counts the statements that UPDATE scheduled_runs (an executemany counts once)."""

    def __init__(self, store: ScheduleStore) -> None:
        self.count = 0
        from sqlalchemy import event

        event.listen(store.db.engine, "before_cursor_execute", self._seen)

    def _seen(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE SCHEDULED_RUNS"):
            self.count += 1


def test_a_batch_moves_each_chunk_with_one_or_two_statements_and_names_the_runs_it_lost(
    any_url: str, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    with ScheduleStore(any_url, clock=clock, batch_min=1) as store:
        s = store.add(make_schedule())
        runs = [store.create_run(s, T0 + timedelta(minutes=i)) for i in range(40)]
        assert all(runs)
        pending = [r for r in runs if r is not None]
        theirs = store.transition(pending[7], "start", owner="worker-b")  # another worker was quicker
        updates = _Updates(store)
        at = T0 + timedelta(hours=1)
        won = store.start_many(pending, owner="worker-a", lease_until=at + timedelta(minutes=5), now=at)
        assert updates.count == 1  # the values all 39 share: one UPDATE ... RETURNING
        assert [r.run_id for r in won] == [r.run_id for r in pending if r.run_id != theirs.run_id]
        assert {(r.status, r.owner, r.started_at, r.starts) for r in won} == {(RunStatus.RUNNING, "worker-a", at, 1)}
        # Worker b records its run's end at the very instant worker a records all of them.
        done = at + timedelta(seconds=5)
        store.transition(theirs, "succeed", now=done, outcome="by b")
        updates.count = 0
        items = [(r, "succeed", {"outcome": f"{i} synced"}) for i, r in enumerate([theirs, *won])]
        finished = store.finish_many(items, now=done)
        assert updates.count == 2  # the shared values with RETURNING, then each run's own outcome
        lost, *succeeded = finished
        assert isinstance(lost, StaleRun) and (lost.expected, lost.actual) == ("running", "succeeded")
        assert store.get_run(theirs.run_id).outcome == "by b"
        for i, (r, moved) in enumerate(zip(won, succeeded, strict=True), start=1):
            assert isinstance(moved, ScheduledRun) and moved == store.get_run(r.run_id)
            assert (moved.status, moved.outcome, moved.completed_at) == (RunStatus.SUCCEEDED, f"{i} synced", done)


def test_failure_counts_reset_in_one_batch_and_the_breakers_not_closed_come_back(
    store: ScheduleStore, make_schedule: MakeSchedule
) -> None:
    ids = [
        store.add(make_schedule(f"s{i}", breaker_threshold=1, breaker_cooldown=timedelta(minutes=5))).id
        for i in range(20)
    ]
    for schedule_id in ids[:12]:
        store.record_outcome(schedule_id, failed=True)
    store.transition_breaker(store.get("s3"), "trip")
    opened = store.transition_breaker(store.get("s5"), "trip")
    store.transition_breaker(opened, "probe", now=T0 + timedelta(days=1))
    before = store.schedule_versions(ids)
    updates = _updates_of(store, "schedules")
    not_closed = store.reset_failures([*ids, ids[0]])
    after = store.schedule_versions(ids)
    # Rows already at zero with a closed breaker are not written (their version stays); the others are.
    assert [before[i] == after[i] for i in ids] == [False] * 12 + [True] * 8
    assert store.batch_min <= len(ids) and len(updates) == 1  # one statement for the batch
    updates.clear()
    again = store.reset_failures(ids)  # every count is zero now; two breakers are still not closed
    assert sorted(s.name for s in again) == ["s3", "s5"]
    assert updates == []  # the batch writes nothing
    assert sorted((s.name, s.breaker_state) for s in not_closed) == [
        ("s3", BreakerState.OPEN),
        ("s5", BreakerState.HALF_OPEN),
    ]
    assert {s.consecutive_failures for s in store.list()} == {0}


def _updates_of(store: ScheduleStore, table: str) -> list[str]:
    """The UPDATE statements the store sends to ``table`` from now on."""
    sent: list[str] = []

    def capture(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith(f"UPDATE {table.upper()} "):
            sent.append(statement)

    assert store.db.engine is not None
    sa.event.listen(store.db.engine, "before_cursor_execute", capture)
    return sent


def test_records_round_trip(store: ScheduleStore, clock: FakeClock) -> None:
    alert = store.add_alert("breaker_opened", "sweep: breaker opened", {"schedule": "sweep", "failures": 3})
    assert store.alerts() == [alert]
    assert store.alerts(status="sent") == []
    report = store.save_report(
        worker_id="w1", started_at=T0, finished_at=T0 + timedelta(seconds=1), report={"orphans": 2}, dry_run=True
    )
    assert store.reports() == [report]
    store.put_state("worker:w1", {"heartbeat": "2027-03-13T12:00:00Z", "clean": False})
    store.put_state("worker:w1", {"heartbeat": "2027-03-13T12:01:00Z", "clean": True})
    assert store.get_state("worker:w1") == {"heartbeat": "2027-03-13T12:01:00Z", "clean": True}
    assert store.get_state("worker:nobody") is None
    proposal = ProposalRecord(
        id="prop_1",
        name="cleanup",
        status="submitted",
        proposed_by="agent-7",
        payload={"expression": "1h"},
        expires_at=T0 + timedelta(days=1),
    )
    saved = store.save_proposal(proposal)
    assert saved.payload == {"expression": "1h"} and saved.expires_at == T0 + timedelta(days=1)
    assert saved.created_at == clock.now()
    store.meta_set("legacy_migration", "1")
    assert store.meta_get("legacy_migration") == "1"


def test_state_survives_reopening_the_store(any_url: str, clock: FakeClock, make_schedule: MakeSchedule) -> None:
    with ScheduleStore(any_url, clock=clock) as first:
        s = first.add(make_schedule())
        run = first.create_run(s, T0)
        assert run is not None
        started = first.transition(run, "start", owner="w1")
    with ScheduleStore(any_url, clock=clock) as second:
        assert second.get("sweep") == s
        assert second.get_run(run.run_id) == started
        assert second.create_run(s, T0) is None


def test_a_locked_database_retries_the_whole_transaction(sqlite_store: ScheduleStore, mocker: Any) -> None:
    store = sqlite_store
    real = store._once
    locked = OperationalError("UPDATE ...", {}, sqlite3.OperationalError("database is locked"))
    calls: list[int] = []

    def flaky(work: Any) -> Any:
        calls.append(1)
        if len(calls) <= 2:
            raise locked
        return real(work)

    mocker.patch.object(store, "_once", side_effect=flaky)
    store.meta_set("k", "v")  # the first two attempts find the database locked; the third commits
    assert len(calls) == 3
    mocker.stopall()
    assert store.meta_get("k") == "v"


def test_other_driver_errors_become_store_errors(
    store: ScheduleStore, mocker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connection, "OUTAGE_RETRY_SECONDS", 0.0)  # retried as an outage: not for a second here
    broken = OperationalError("SELECT ...", {}, sqlite3.OperationalError("disk I/O error"))
    mocker.patch.object(store, "_once", side_effect=broken)
    with pytest.raises(StoreError, match="disk I/O error") as err:
        store.list()
    assert err.value.__cause__ is broken


def test_a_newer_schema_is_refused(any_url: str, clock: FakeClock) -> None:
    with ScheduleStore(any_url, clock=clock) as s:
        s.meta_set("schema_version", str(SCHEMA_VERSION + 1))
    with pytest.raises(StoreError, match="newer than this code"):
        ScheduleStore(any_url, clock=clock)


# ------------------------------------------------------------------ races


def test_threads_racing_to_start_one_run_have_exactly_one_winner(
    store: ScheduleStore, make_schedule: MakeSchedule
) -> None:
    run = store.create_run(store.add(make_schedule()), T0)
    assert run is not None
    contenders = 8
    barrier = threading.Barrier(contenders)
    won: list[str] = []
    lost: list[StaleRun] = []

    def contend(i: int) -> None:
        barrier.wait()
        try:
            store.transition(run, "start", owner=f"thread-{i}")
            won.append(f"thread-{i}")
        except StaleRun as exc:
            lost.append(exc)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(contenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == contenders - 1
    assert all(e.actual == "running" and e.holder == won[0] for e in lost)
    row = store.get_run(run.run_id)
    assert (row.status, row.owner, row.attempt, row.started_at) == (RunStatus.RUNNING, won[0], 1, T0)


def _start_in_process(url: str, run_id: str, name: str, barrier: Any, results: Any) -> None:
    clock = FakeClock(T0)
    with ScheduleStore(url, clock=clock) as s:
        run = s.get_run(run_id)
        barrier.wait()
        try:
            s.transition(run, "start", owner=name)
            results.put((name, "won"))
        except StaleRun as exc:
            results.put((name, f"stale:{exc.actual}:{exc.holder}"))


def test_processes_racing_to_start_one_run_have_exactly_one_winner(
    store: ScheduleStore, make_schedule: MakeSchedule, any_url: str
) -> None:
    run = store.create_run(store.add(make_schedule()), T0)
    assert run is not None
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(3), ctx.Queue()
    procs = [
        ctx.Process(target=_start_in_process, args=(any_url, run.run_id, f"proc-{i}", barrier, results))
        for i in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    outcomes = dict(results.get(timeout=5) for _ in procs)
    winners = [n for n, o in outcomes.items() if o == "won"]
    assert len(winners) == 1
    assert sorted(o for o in outcomes.values() if o != "won") == [f"stale:running:{winners[0]}"] * 2
    assert store.get_run(run.run_id).owner == winners[0]


def test_proposals_move_conditionally_and_activation_creates_the_schedule_atomically(
    store: ScheduleStore, make_schedule: MakeSchedule
) -> None:
    from agent.scheduler.errors import StaleState

    record = store.save_proposal(
        ProposalRecord(id="prop_a", name="cleanup", status="submitted", proposed_by="agent-7", payload={})
    )
    held = store.transition_proposal(record, "hold", decision_reason="risk medium")
    with pytest.raises(StaleState):
        store.transition_proposal(record, "approve")  # stale: it is awaiting approval now
    approved = store.transition_proposal(held, "approve", decided_by="alice")
    assert [p.status for p in store.proposals()] == ["approved"]
    taken = store.add(make_schedule("cleanup"))
    with pytest.raises(DuplicateSchedule):
        store.activate_proposal(approved, make_schedule("cleanup", source="agent"))
    assert store.get_proposal("prop_a").status == "approved"  # nothing half-done
    store.remove(taken.name)
    active = store.activate_proposal(approved, make_schedule("cleanup", source="agent"))
    assert (store.get("cleanup").proposal_id, active.proposal_id) == ("prop_a", "prop_a")
    stored = store.get_proposal("prop_a")
    assert (stored.status, stored.schedule_id, stored.decided_by) == ("active", active.id, "alice")
    assert store.proposals(status="active", proposed_by="agent-7") == [stored]


def test_the_documented_move_from_sqlite_to_postgresql_copies_every_schedule(
    sqlite_store: ScheduleStore, pg_url: str, make_schedule: MakeSchedule, clock: FakeClock
) -> None:
    old = sqlite_store
    old.add(make_schedule("a", next_run_at=T0, anchor_at=T0))
    old.add(make_schedule("b", trigger_type="calendar", expression="0 6 * * *", timezone="Europe/Berlin"))
    old.disable("b", reason="paused by alice")
    with ScheduleStore(pg_url, clock=clock) as new:
        new.add_many(s.with_state(next_run_at=None) for s in old.list())  # the snippet in docs/operations.md
        copied = {s.name: s for s in new.list()}
    assert set(copied) == {"a", "b"}
    assert copied["a"].next_run_at is None and copied["a"].anchor_at == T0
    assert (copied["b"].enabled, copied["b"].disabled_reason, copied["b"].timezone) == (
        False,
        "paused by alice",
        "Europe/Berlin",
    )
    assert copied["a"].id == old.get("a").id


def test_many_schedules_advance_together_and_one_another_worker_advanced_first_gets_nothing(
    store: ScheduleStore, make_schedule: MakeSchedule
) -> None:
    fresh = [store.add(make_schedule(f"fresh{i}")) for i in range(3)]  # never advanced: next_run_at unset
    for i in range(4):
        store.materialize(store.add(make_schedule(f"due{i}")), [], next_run_at=T0 + timedelta(minutes=i))
    due = [store.get(f"due{i}") for i in range(4)]
    at = T0 + timedelta(minutes=10)
    # Another worker advances due1 at the very instant this one plans from what it read before.
    store.materialize(store.get("due1"), [PlannedRun(T0 + timedelta(minutes=1))], next_run_at=at, now=at)
    plans = [
        Materialization(s, [PlannedRun(T0 + timedelta(minutes=i))], T0 + timedelta(hours=i + 1))
        for i, s in enumerate(fresh + due)
    ]
    plans[-1] = Materialization(
        due[3],
        [PlannedRun(T0 + timedelta(minutes=3), skip_reason="missed: skip policy")],
        None,
        disable_reason="its last occurrence",
    )
    done = store.materialize_many(plans, now=at)
    assert done[4] is None  # due1: not this worker's to advance
    assert [len(d.runs) if d else 0 for d in done] == [1, 1, 1, 1, 0, 1, 1]
    for plan, d in zip(plans, done, strict=True):
        if d is None:
            continue
        stored = store.get(plan.schedule.id)
        assert (stored.next_run_at, stored.last_run_at) == (plan.next_run_at, plan.runs[0].intended_at)
        assert d.runs == store.runs(schedule=plan.schedule.id)
        assert d.schedule == stored  # the schedule as written is the row as read back
    assert store.get("due1").next_run_at == at
    assert (store.get("due3").enabled, store.get("due3").disabled_reason) == (False, "its last occurrence")
    last = done[6]
    assert last is not None and [(r.status, r.reason) for r in last.runs] == [
        (RunStatus.SKIPPED, "missed: skip policy")
    ]


def test_pending_due_runs_with_those_just_created_taken_as_they_are_equal_those_read_back(
    store: ScheduleStore, make_schedule: MakeSchedule
) -> None:
    older = store.create_run(store.add(make_schedule("older")), T0 - timedelta(minutes=5))  # another life's
    started = store.create_run(store.get("older"), T0 - timedelta(minutes=4))
    store.start_many([started], owner="w", lease_until=T0 + timedelta(minutes=1), now=T0)  # not pending
    schedules = [store.add(make_schedule(f"s{i}")) for i in range(40)]
    at = T0 + timedelta(minutes=1)

    def work() -> tuple[list[ScheduledRun], list[ScheduledRun]]:
        plans = [
            Materialization(s, [PlannedRun(T0 - timedelta(seconds=i + 1)), PlannedRun(T0 + timedelta(seconds=i))], at)
            for i, s in enumerate(schedules)
        ]
        created = [run for done in store.materialize_many(plans, now=at) if done for run in done.runs]
        return store.pending_due(at, fresh=created), store.pending_due(at)

    taken, read = store.atomic(work)
    assert taken == read and len(read) == 81 and read[0] == older  # oldest first, the older run included
    assert [r.intended_run_at for r in read] == sorted(r.intended_run_at for r in read)


def test_an_operator_s_update_does_not_undo_what_the_engine_wrote_meanwhile(
    store: ScheduleStore, make_schedule: MakeSchedule, mocker: Any
) -> None:
    s = store.add(make_schedule("busy", breaker_threshold=1))
    stale = store.get("busy")
    store.transition_breaker(store.record_outcome(s.id, failed=True) or s, "trip")  # the engine, meanwhile
    store.materialize(stale, [], next_run_at=T0 + timedelta(hours=1))
    real_get = store.get
    reads = iter([stale])  # the operator's command read the row before the engine's writes
    mocker.patch.object(store, "get", side_effect=lambda key: next(reads, None) or real_get(key))
    after = store.update("busy", description="looked at by alice")
    assert after.description == "looked at by alice"
    assert (after.breaker_state, after.consecutive_failures) == (BreakerState.OPEN, 1)
    assert after.next_run_at == T0 + timedelta(hours=1)


def test_what_the_loop_reads_to_plan_its_waits(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    soon, later = clock.now() + timedelta(seconds=5), clock.now() + timedelta(minutes=5)
    assert store.next_due() == (None, 0)
    for name, at in (("a", soon), ("b", soon), ("c", later)):
        store.add(make_schedule(name, next_run_at=at, anchor_at=clock.now()))
    store.add(make_schedule("off", next_run_at=clock.now(), anchor_at=clock.now(), enabled=False))
    assert store.next_due() == (soon, 2)  # when, and how many schedules share that moment
    assert store.next_due(count_up_to=1) == (soon, 1)  # counted only as far as asked
    a, c = store.get("a").id, store.get("c").id
    versions = store.schedule_versions([a, c, "gone"])
    assert set(versions) == {a, c} and versions[a] != versions[c]  # each write draws its own
    store.update(a, description="changed")
    assert store.schedule_versions([a, c]) == {a: store.schedule_versions([a])[a], c: versions[c]} != versions
    # A run stored ahead of its time (prepared) is what next_pending_at finds; a due one is not.
    c = store.get("c")
    store.create_run(c, later)
    store.create_run(c, clock.now() - timedelta(seconds=1))
    assert store.next_pending_at(clock.now()) == later
    assert store.next_pending_at(later) is None


def test_the_engine_thread_can_hold_wal_checkpoints_for_later(sqlite_store: ScheduleStore, db_path: Path) -> None:
    sqlite_store.defer_checkpoints()
    base = db_path.stat().st_size

    def write(i: int) -> None:
        sqlite_store.meta_set(f"k{i}", "x" * 100_000)

    # ~4 MB, past the 1,000 pages at which a commit would checkpoint by itself, from two other
    # threads (other connections) as well as this one.
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(write, range(30)))
    for i in range(30, 40):
        write(i)
    assert db_path.stat().st_size < base + 1_000_000  # all of it still in the WAL
    sqlite_store.checkpoint()
    assert db_path.stat().st_size > base + 3_000_000  # copied back into the database file


def test_a_new_trigger_drops_the_next_run_time_the_old_one_planned(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    planned = clock.now() + timedelta(minutes=5)
    store.add(make_schedule("edited", next_run_at=planned, anchor_at=clock.now()))
    assert store.update("edited", description="same trigger").next_run_at == planned
    assert store.update("edited", expression="5m").next_run_at == planned  # unchanged value: kept
    assert store.update("edited", expression="1h").next_run_at is None  # the engine plans it afresh


# ------------------------------------------------------------------ rows mapped once per version


def _trip(store: ScheduleStore, sid: str) -> None:
    # The failures counted around the store, keeping the version: only the trip itself may draw one.
    version = store.schedule_versions([sid])[sid]
    with store.db.engine.begin() as conn:  # type: ignore[union-attr]
        conn.execute(
            sa.text("UPDATE schedules SET consecutive_failures = breaker_threshold, version = :v WHERE id = :id"),
            {"v": version, "id": sid},
        )
    store.forget_mapped()
    store.schedules_by_id([sid])
    store.transition_breaker(sid, "trip")


WRITES: dict[str, Callable[[ScheduleStore, str], Any]] = {
    "update": lambda s, sid: s.update(sid, description="edited"),
    "disable": lambda s, sid: s.disable(sid, "paused by alice"),
    "a failure counted (nothing else changes)": lambda s, sid: s.record_outcome(sid, failed=True),
    "the breaker tripped": _trip,
    "materialized": lambda s, sid: s.materialize(s.get(sid), [PlannedRun(T0)], next_run_at=T0 + timedelta(hours=1)),
}


@pytest.mark.parametrize("write", WRITES)
def test_every_write_draws_a_new_version_and_the_next_read_maps_the_row_again(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule, write: str
) -> None:
    sid = store.add(make_schedule("watched", next_run_at=T0)).id
    [before] = store.schedules_by_id([sid]).values()
    assert store.schedules_by_id([sid])[sid] is before  # unchanged: not mapped again
    version = store.schedule_versions([sid])[sid]
    WRITES[write](store, sid)  # at the same instant: updated_at alone could not tell
    assert store.schedule_versions([sid])[sid] != version
    [after] = store.schedules_by_id([sid]).values()
    assert after is not before and after == store.get(sid) != before
    assert store.due_schedules(T0 + timedelta(days=1)) in ([], [after])  # the due read maps the same row alike


def test_a_write_by_another_store_is_seen_and_a_rolled_back_one_is_not(
    any_url: str, store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    sid = store.add(make_schedule("shared", next_run_at=T0)).id
    [mine] = store.due_schedules(T0).copy()
    with ScheduleStore(any_url, clock=clock) as other:  # another process
        other.update(sid, params={"from": "elsewhere"})
    [seen] = store.due_schedules(T0)
    assert seen is not mine and seen.params == {"from": "elsewhere"}

    def advance_then_fail() -> None:
        store.materialize(seen, [PlannedRun(T0)], next_run_at=T0 + timedelta(hours=1))
        raise RuntimeError("the transaction rolls back")

    with pytest.raises(RuntimeError):
        store.atomic(advance_then_fail)
    [still] = store.due_schedules(T0)  # the copy that write made is never taken for the row
    assert still.next_run_at == T0 and still == seen


def test_a_write_around_the_store_is_seen_once_the_mapped_rows_are_forgotten(
    sqlite_store: ScheduleStore, db_path: Path, make_schedule: MakeSchedule
) -> None:
    store = sqlite_store
    sid = store.add(make_schedule("edited_by_hand", next_run_at=T0)).id
    store.schedules_by_id([sid])
    with sqlite3.connect(db_path) as raw:  # raw SQL draws no new version
        raw.execute("UPDATE schedules SET description = 'by hand' WHERE id = ?", (sid,))
    assert store.schedules_by_id([sid])[sid].description != "by hand"
    store.forget_mapped()  # what the engine's safety-net scan does
    assert store.schedules_by_id([sid])[sid].description == "by hand"


def test_a_mapped_definition_is_kept_as_written_and_one_from_a_stale_read_never_is(
    store: ScheduleStore, make_schedule: MakeSchedule
) -> None:
    sid = store.add(make_schedule("kept", next_run_at=T0)).id
    [mapped] = store.due_schedules(T0)
    done = store.materialize(mapped, [PlannedRun(T0)], next_run_at=T0 + timedelta(hours=1))
    assert done is not None
    [written] = store.schedules_by_id([sid]).values()
    assert written == store.get(sid) and written.next_run_at == T0 + timedelta(hours=1)
    assert store.schedules_by_id([sid])[sid] is written  # the copy the write made: not mapped again
    # A copy mapped before another write is not moved: it was planned from a row that is gone.
    store.update(sid, params={"n": 2})
    assert (
        store.materialize(written, [PlannedRun(T0 + timedelta(hours=1))], next_run_at=T0 + timedelta(hours=2)) is None
    )
    # A definition the store did not map (get) moves on next_run_at alone, as before, and its row
    # is mapped again on the next read: the stale params are never served as the row's.
    stale = store.get(sid)
    store.disable(sid, "paused by alice")
    moved = store.materialize(stale, [PlannedRun(T0 + timedelta(hours=1))], next_run_at=T0 + timedelta(hours=2))
    assert moved is not None
    [read] = store.schedules_by_id([sid]).values()
    assert (read.enabled, read.params, read.next_run_at) == (False, {"n": 2}, T0 + timedelta(hours=2))
