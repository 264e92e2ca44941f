"""Downtime, crashes and shutdown on a FakeClock and a real SQLite file: every outcome is a row with a reason."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy.exc import OperationalError

from agent.scheduler import FakeClock, RunStatus, ScheduleDefinition, ScheduleStore
from agent.scheduler.engine import ScheduleEngine
from agent.scheduler.engine.reconciliation import Reconciler
from agent.scheduler.tasks import RunContext, TaskRegistry
from tests.conftest import run_async

MakeSchedule = Callable[..., ScheduleDefinition]
HOUR = timedelta(hours=1)


class Work:
    """Tasks whose duration is clock time, so shutdown waits can be exercised on a FakeClock."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.done: list[str] = []
        self.steps: list[int] = []
        self.gate = asyncio.Event()

    def registry(self) -> TaskRegistry:
        tasks = TaskRegistry()
        tasks.add("quick", self.quick)
        tasks.add("five_seconds", self.five_seconds)
        tasks.add("blocked", self.blocked)
        tasks.add("stepper", self.stepper)
        return tasks

    async def quick(self, ctx: RunContext) -> None:
        self.done.append(ctx.idempotency_key)

    async def five_seconds(self, ctx: RunContext) -> str:
        # Busy for five seconds of clock time (FakeClock.sleep would jump the clock itself).
        deadline = self.clock.now() + timedelta(seconds=5)
        while self.clock.now() < deadline:
            await asyncio.sleep(0)
        self.done.append(ctx.idempotency_key)
        return "five seconds of work"

    async def blocked(self, ctx: RunContext) -> None:
        await self.gate.wait()
        self.done.append(ctx.idempotency_key)

    async def stepper(self, ctx: RunContext) -> str:
        """Ten steps of one second each, checkpointing after each and stopping early when asked."""
        step = (ctx.checkpoint or {}).get("next", 0)
        while step < 10:
            if ctx.stop_requested.is_set():
                return f"stopped before step {step}"
            self.steps.append(step)
            step += 1
            await ctx.save_checkpoint({"next": step})
            await self.clock.sleep(1)
        return "all ten steps"


def engine(store: ScheduleStore, work: Work, clock: FakeClock, worker: str = "w1") -> ScheduleEngine:
    return ScheduleEngine(store, work.registry(), clock=clock, tick_seconds=3600, worker_id=worker)


@run_async
async def test_a_week_of_downtime_ends_in_exactly_the_policy_s_runs_and_the_report_counts_them(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    add = store.add
    add(make_schedule("hourly_skip", trigger_type="calendar", expression="0 * * * *", target="quick"))
    add(
        make_schedule(
            "daily_once",
            trigger_type="calendar",
            expression="0 6 * * *",
            target="quick",
            missed_run_policy="catch_up_once",
        )
    )
    add(
        make_schedule(
            "six_hourly_all",
            trigger_type="calendar",
            expression="0 */6 * * *",
            target="quick",
            missed_run_policy="catch_up_all",
            catch_up_limit=10,
        )
    )
    work = Work(clock)
    first = engine(store, work, clock)
    await first.start()
    await first.run_until(clock.now() + 2 * HOUR)  # 12:00 -> 14:00 on 2027-03-13
    await first.wait_idle()
    await first.stop()
    before = len(store.runs())

    clock.advance(timedelta(days=7))  # down until 14:00 on 2027-03-20
    add(
        make_schedule(
            "born_during_downtime",
            trigger_type="calendar",
            expression="0 * * * *",
            target="quick",
            missed_run_policy="catch_up_all",
        )
    )
    second = engine(store, work, clock)
    report = await second.start()
    await second.wait_idle()

    new = [r for r in store.runs() if r.created_at == clock.now()]
    by = Counter((r.schedule_name, r.status, r.catch_up) for r in new)
    # hourly: 15:00 on the 13th .. 13:00 on the 20th = 167 missed, one skipped row standing for all;
    # 14:00 on the 20th is due right now, on time, and runs
    skipped, on_time = [r for r in new if r.schedule_name == "hourly_skip"]
    assert (skipped.status, skipped.coalesced_from) == (RunStatus.SKIPPED, 167)
    assert skipped.reason is not None and "167 occurrence(s) missed" in skipped.reason
    assert (on_time.status, on_time.intended_run_at, on_time.catch_up) == (RunStatus.SUCCEEDED, clock.now(), False)
    # daily at 06:00: the 14th .. the 20th = 7, one catch-up run for the latest
    [daily] = [r for r in new if r.schedule_name == "daily_once"]
    assert (daily.status, daily.catch_up, daily.coalesced_from) == (RunStatus.SUCCEEDED, True, 7)
    assert daily.intended_run_at.isoformat() == "2027-03-20T06:00:00+00:00"
    # every 6 h: 18:00 on the 13th .. 12:00 on the 20th = 28; the latest 10 run, the older 18 are one skipped row
    assert by[("six_hourly_all", RunStatus.SUCCEEDED, True)] == 10
    [rest] = [r for r in new if r.schedule_name == "six_hourly_all" and r.status is RunStatus.SKIPPED]
    assert rest.coalesced_from == 18
    assert not [r for r in new if r.schedule_name == "born_during_downtime"]

    assert (report.previous_shutdown, report.downtime_seconds) == ("clean", 7 * 86400)
    assert (report.missed_detected, report.missed_caught_up) == (167 + 7 + 28, 1 + 10)
    assert (report.missed_skipped, report.missed_coalesced) == (167 + 18, 6)
    assert report.warnings == ["six_hourly_all: 18 missed occurrence(s) beyond the catch-up limit of 10 were skipped"]
    assert store.reports(limit=1)[0].report == report.to_dict()
    assert len(store.runs()) == before + 2 + 1 + 11
    await second.stop()


async def crash(engine_: ScheduleEngine) -> None:
    """What kill -9 leaves: running rows, no completion recorded, no clean-shutdown marker."""
    in_flight = engine_._execution.in_flight
    for flight in list(in_flight.values()):
        flight.task.cancel()
    in_flight.clear()
    engine_._executor.shutdown(wait=True)
    engine_._watch.stop()
    engine_._stopped = True


@run_async
async def test_after_a_crash_the_next_start_requeues_orphans_at_once_or_dead_letters_them(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    store.add(make_schedule("retryable", trigger_type="delay", expression="+1m", target="blocked", retry_backoff=600))
    store.add(make_schedule("one_shot", trigger_type="delay", expression="+1m", target="blocked", max_retries=0))
    work = Work(clock)
    first = engine(store, work, clock)
    await first.start()
    await first.run_until(clock.now() + timedelta(minutes=1))
    assert Counter(r.status for r in store.runs()) == {RunStatus.RUNNING: 2}
    await crash(first)
    clock.advance(5)  # restarted 5 s later: the leases (30 s) have not expired, but the owner is this worker

    work.gate.set()
    second = engine(store, work, clock)
    report = await second.start()
    await second.wait_idle()
    assert (report.previous_shutdown, report.orphans_found) == ("crash", 2)
    assert (report.orphans_requeued, report.orphans_dead_lettered) == (1, 1)
    retried = store.runs(schedule="retryable")[0]
    assert (retried.status, retried.attempt) == (RunStatus.SUCCEEDED, 2)  # no 600 s backoff for an orphan
    dead = store.runs(schedule="one_shot")[0]
    assert dead.status is RunStatus.DEAD_LETTERED
    [letter] = store.dead_letters()
    assert letter.error_type == "Orphaned" and "stopped renewing its lease" in (letter.error or "")
    await second.stop()


def locked_once(store: ScheduleStore, mocker: Any) -> list[OperationalError]:
    """Make the next ``next_due`` (late in a tick's transaction) find the database locked, once.

    Returns the failures still to come: empty once it happened.
    """
    real = store.next_due
    failures = [OperationalError("UPDATE", {}, sqlite3.OperationalError("database is locked"))]

    def next_due(**kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return real(**kwargs)

    mocker.patch.object(store, "next_due", side_effect=next_due)
    return failures


async def _two_orphans(store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule, work: Work) -> None:
    store.add(make_schedule("first", trigger_type="delay", expression="+1m", target="blocked"))
    store.add(make_schedule("second", trigger_type="delay", expression="+1m", target="blocked"))
    first = engine(store, work, clock)
    await first.start()
    await first.run_until(clock.now() + timedelta(minutes=1))
    await crash(first)
    clock.advance(5)


@run_async
async def test_a_start_cut_short_leaves_a_report_that_matches_the_rows(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule, mocker: Any
) -> None:
    work = Work(clock)
    await _two_orphans(store, clock, make_schedule, work)
    second = engine(store, work, clock)
    # Killed after reconciliation found the orphans, before the startup tick failed them over.
    mocker.patch.object(store, "next_due", side_effect=RuntimeError("killed"))
    with pytest.raises(RuntimeError, match="killed"):
        await second.start()
    stored, _first_life = store.reports()
    assert stored.finished_at is None  # never closed: the start did not finish
    # Untouched, and the report says so: failing them over, counting, retrying and telling them is
    # one transaction, which rolled back; the next start finds them again.
    assert stored.report["orphans_found"] == 0 and stored.report["orphans_requeued"] == 0
    assert [(r.status, r.attempt, r.error_type) for r in store.runs()] == [(RunStatus.RUNNING, 1, None)] * 2
    third = engine(store, work, clock, worker="w1")
    mocker.stopall()
    work.gate.set()
    report = await third.start()
    await third.wait_idle()
    assert (report.orphans_found, report.orphans_requeued) == (2, 2)
    assert [(r.status, r.attempt) for r in store.runs()] == [(RunStatus.SUCCEEDED, 2)] * 2
    await third.stop()


@run_async
async def test_a_startup_transaction_that_runs_again_counts_once_in_one_report(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule, mocker: Any
) -> None:
    work = Work(clock)
    await _two_orphans(store, clock, make_schedule, work)
    work.gate.set()
    second = engine(store, work, clock)
    # The startup tick's transaction fails once at its very end and runs again as a whole.
    failures = locked_once(store, mocker)
    report = await second.start()
    await second.wait_idle()
    assert not failures
    stored, _first_life = store.reports()
    assert stored.finished_at is not None and stored.report == report.to_dict()
    assert (report.orphans_found, report.orphans_requeued) == (2, 2)
    assert [(r.status, r.attempt) for r in store.runs()] == [(RunStatus.SUCCEEDED, 2)] * 2
    await second.stop()


@run_async
async def test_a_tick_whose_transaction_runs_again_does_the_same_work(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule, mocker: Any, db_path: Path
) -> None:
    schedule = store.add(make_schedule("manual", expression="1d", target="quick"))
    work = Work(clock)
    e = engine(store, work, clock)
    await e.start()
    with ScheduleStore(db_path, clock=clock) as cli:  # another process queues a run, then wakes the worker
        cli.create_run(schedule, clock.now(), occurrence_key="manual:1", origin="manual")
    failures = locked_once(store, mocker)  # the tick's first attempt rolls back
    e.wake()
    await e.tick()
    await e.wait_idle()
    assert not failures
    [run] = store.runs(schedule="manual")
    assert (run.status, run.attempt) == (RunStatus.SUCCEEDED, 1)
    await e.stop()


@run_async
async def test_another_worker_s_runs_are_orphaned_only_after_its_lease_expires(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    store.add(make_schedule("shared", trigger_type="delay", expression="+1m", target="blocked"))
    work = Work(clock)
    other = engine(store, work, clock, worker="other-host")
    await other.start()
    await other.run_until(clock.now() + timedelta(minutes=1))
    await crash(other)
    work.gate.set()
    survivor = engine(store, work, clock, worker="survivor")
    assert (await survivor.start()).orphans_found == 0
    assert store.runs()[0].owner == "other-host"
    store.add(make_schedule("sweeper", expression="10s", target="scheduler.reconcile"))
    await survivor.run_until(clock.now() + timedelta(seconds=40))
    await survivor.wait_idle()
    [run] = store.runs(schedule="shared")
    assert (run.status, run.attempt, run.owner) == (RunStatus.SUCCEEDED, 2, "survivor")
    assert any(r.status is RunStatus.SUCCEEDED for r in store.runs(schedule="sweeper"))
    await survivor.stop()


@run_async
async def test_graceful_finish_lets_the_run_complete_within_its_shutdown_timeout(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    store.add(
        make_schedule("patient", trigger_type="delay", expression="+1m", target="five_seconds", shutdown_timeout=30)
    )
    store.add(
        make_schedule("impatient", trigger_type="delay", expression="+1m", target="five_seconds", shutdown_timeout=2)
    )
    work = Work(clock)
    e = engine(store, work, clock)
    await e.start()
    await e.run_until(clock.now() + timedelta(minutes=1))
    await e.stop()
    patient, impatient = store.runs(schedule="patient")[0], store.runs(schedule="impatient")[0]
    assert (patient.status, patient.outcome) == (RunStatus.SUCCEEDED, "five seconds of work")
    assert (impatient.status, impatient.attempt) == (RunStatus.PENDING, 1)
    assert impatient.reason == "shutdown: still running at the shutdown timeout"
    state = store.get_state("worker:w1")
    assert state is not None and state["clean"] is True


@run_async
async def test_requeue_cancels_at_once_and_the_run_runs_after_restart_without_counting_a_failure(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    store.add(
        make_schedule("redo", trigger_type="delay", expression="+1m", target="five_seconds", shutdown_policy="requeue")
    )
    work = Work(clock)
    e = engine(store, work, clock)
    await e.start()
    await e.run_until(clock.now() + timedelta(minutes=1))
    await e.stop()
    [run] = store.runs(schedule="redo")
    assert (run.status, run.attempt, run.reason) == (RunStatus.PENDING, 1, "shutdown: requeued (policy requeue)")
    assert work.done == []
    again = engine(store, work, clock)
    await again.start()
    await again.run_until(clock.now() + timedelta(seconds=10))
    await again.wait_idle()
    [run] = store.runs(schedule="redo")
    assert (run.status, run.attempt) == (RunStatus.SUCCEEDED, 1)
    assert work.done == [run.idempotency_key]
    await again.stop()


@run_async
async def test_checkpoint_and_stop_pauses_then_resumes_from_the_checkpoint_doing_each_step_once(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    store.add(
        make_schedule(
            "batch", trigger_type="delay", expression="+1m", target="stepper", shutdown_policy="checkpoint_and_stop"
        )
    )
    work = Work(clock)
    e = engine(store, work, clock)
    await e.start()
    await e.run_until(clock.now() + timedelta(minutes=1, seconds=3, milliseconds=500))
    await e.stop()
    [run] = store.runs(schedule="batch")
    assert run.status is RunStatus.PAUSED
    assert run.checkpoint == {"next": len(work.steps)} and 0 < len(work.steps) < 10
    resumed = engine(store, work, clock)
    report = await resumed.start()
    assert report.paused_resumed == 1
    await resumed.run_until(clock.now() + timedelta(seconds=15))
    await resumed.wait_idle()
    [run] = store.runs(schedule="batch")
    assert (run.status, run.outcome, run.attempt) == (RunStatus.SUCCEEDED, "all ten steps", 1)
    assert work.steps == list(range(10))
    await resumed.stop()


@run_async
async def test_nothing_new_starts_while_draining_and_a_second_signal_requeues_what_is_left(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    store.add(make_schedule("long", trigger_type="delay", expression="+1m", target="blocked", shutdown_timeout=3600))
    store.add(make_schedule("later", trigger_type="delay", expression="+2m", target="quick"))
    work = Work(clock)
    e = engine(store, work, clock)
    began = clock.now()
    await e.start()
    await e.run_until(clock.now() + timedelta(minutes=1, seconds=59))
    stopping = asyncio.ensure_future(e.stop())
    for _ in range(20):
        await asyncio.sleep(0)
    assert clock.now() < began + timedelta(hours=1)
    e.hurry()
    await stopping
    assert [r.status for r in store.runs(schedule="long")] == [RunStatus.PENDING]
    assert store.runs(schedule="long")[0].reason == "shutdown forced: requeued"
    assert store.runs(schedule="later") == [] or store.runs(schedule="later")[0].status is RunStatus.PENDING
    assert work.done == []


@run_async
async def test_a_second_signal_that_comes_before_the_stop_applies_its_policies_still_requeues_at_once(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    # The second signal lands while stop() is still waiting for the loop: the policies applied
    # after it must not give the graceful run back its hour.
    store.add(make_schedule("long", trigger_type="delay", expression="+1m", target="blocked", shutdown_timeout=3600))
    work = Work(clock)
    e = engine(store, work, clock)
    began = clock.now()
    await e.start()
    await e.run_until(clock.now() + timedelta(minutes=1, seconds=30))
    e.hurry()
    await e.stop()
    assert clock.now() < began + timedelta(minutes=5)
    [run] = store.runs(schedule="long")
    assert (run.status, run.reason) == (RunStatus.PENDING, "shutdown forced: requeued")


@run_async
async def test_reconcile_dry_run_reports_without_changing_anything(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    store.add(
        make_schedule(
            "hourly", trigger_type="calendar", expression="0 * * * *", target="quick", missed_run_policy="catch_up_all"
        )
    )
    work = Work(clock)
    e = engine(store, work, clock)
    await e.start()
    await e.run_until(clock.now() + HOUR)
    await e.wait_idle()
    await e.stop()
    clock.advance(timedelta(hours=5))
    rows_before = (store.list(), store.runs())
    report = await engine(store, work, clock, worker="w1").reconcile_dry_run()
    # 14:00 .. 17:00 are missed; 18:00 is due now and on time
    assert (report.dry_run, report.missed_detected, report.missed_caught_up) == (True, 4, 4)
    assert (store.list(), store.runs()) == rows_before


def test_dry_run_from_the_command_line(
    db_path: Path, clock: FakeClock, store: ScheduleStore, make_schedule: MakeSchedule
) -> None:
    import json
    from io import StringIO

    from agent.scheduler.cli import main

    store.add(
        make_schedule(
            "hourly",
            trigger_type="calendar",
            expression="0 * * * *",
            target="quick",
            next_run_at=clock.now() - 3 * HOUR,
        )
    )
    out = StringIO()
    assert main(["--db", str(db_path), "reconcile", "--dry-run", "--json"], out=out, clock=clock) == 0
    data: dict[str, Any] = json.loads(out.getvalue())
    assert (data["dry_run"], data["missed_detected"], data["missed_skipped"]) == (True, 3, 3)
    assert store.runs() == []


@run_async
async def test_a_sync_task_saves_its_checkpoint_from_its_thread(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    store.add(make_schedule("sync_steps", trigger_type="delay", expression="+1m", target="sync_stepper"))
    tasks = TaskRegistry()

    def sync_stepper(ctx: RunContext) -> str:  # runs in a worker thread
        ctx.save_checkpoint_sync({"next": 3})
        return "saved"

    tasks.add("sync_stepper", sync_stepper)
    seen: list[Any] = []
    original = store.save_checkpoint

    def spy(run_id: str, data: Any, *, owner: str | None = None) -> None:
        seen.append(data)
        original(run_id, data, owner=owner)

    store.save_checkpoint = spy  # type: ignore[method-assign]
    e = ScheduleEngine(store, tasks, clock=clock, tick_seconds=3600, worker_id="w1")
    await e.start()
    await e.run_until(clock.now() + timedelta(minutes=1))
    await e.wait_idle()
    [run] = store.runs(schedule="sync_steps")
    assert (run.status, run.outcome, seen) == (RunStatus.SUCCEEDED, "saved", [{"next": 3}])
    await e.stop()


@run_async
async def test_a_run_whose_owner_renews_after_the_reconcile_task_found_it_is_left_to_its_owner(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule, mocker: Any
) -> None:
    """The reconcile task finds runs in one transaction, the next tick fails them over in another:
    an owner that was only stalled and renews in between keeps its run (no takeover, no second run)."""
    store.add(make_schedule("job", trigger_type="delay", expression="+1m", target="blocked"))
    store.add(make_schedule("gone", trigger_type="delay", expression="+1m", target="blocked"))
    work = Work(clock)
    first = engine(store, work, clock)
    await first.start()
    await first.run_until(clock.now() + timedelta(minutes=1))
    await crash(first)
    mocker.patch.object(Reconciler, "sweep_orphans", return_value=())  # only the task's path
    survivor = engine(store, work, clock, worker="survivor")
    await survivor.start()
    clock.advance(40)  # w1's 30 s leases lapsed
    said = await survivor._reconcile_task(cast(RunContext, None))
    assert said == "2 orphaned run(s) found; the next tick fails them over"
    [stalled] = store.runs(schedule="job")
    assert store.renew_leases([stalled.run_id], owner="w1", until=clock.now() + timedelta(seconds=30)) == 1
    await survivor.tick()
    [kept], [taken] = store.runs(schedule="job"), store.runs(schedule="gone")
    assert (kept.status, kept.attempt, kept.owner, kept.error_type) == (RunStatus.RUNNING, 1, "w1", None)
    assert (taken.attempt, taken.owner) == (2, "survivor")  # the one whose owner stayed away was taken over
    work.gate.set()
    await survivor.wait_idle()
    await survivor.stop()


@run_async
async def test_a_dry_run_after_a_crash_counts_the_orphans_a_start_would_fail_over_and_changes_nothing(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    work = Work(clock)
    await _two_orphans(store, clock, make_schedule, work)
    clock.advance(120)  # their leases lapsed (its process, this one, still looks up: only leases count)
    before = [(r.status, r.attempt, r.owner) for r in store.runs()]
    report = await engine(store, work, clock).reconcile_dry_run()
    assert (report.dry_run, report.orphans_found) == (True, 2)
    assert "would orphan 2 run(s)" in " ".join(report.actions)
    assert [(r.status, r.attempt, r.owner) for r in store.runs()] == before == [(RunStatus.RUNNING, 1, "w1")] * 2
