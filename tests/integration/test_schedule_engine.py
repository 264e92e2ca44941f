"""ScheduleEngine on a FakeClock and a real SQLite file: what runs, when, and with which outcome."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.scheduler import (
    ConcurrencyPolicy,
    FakeClock,
    RunStatus,
    ScheduleDefinition,
    ScheduleStore,
    SystemClock,
)
from agent.scheduler.engine import ScheduleEngine, execution
from agent.scheduler.engine.tick import TickWork
from agent.scheduler.errors import TaskNotConfigured
from agent.scheduler.settings import load_settings
from agent.scheduler.tasks import RunContext, TaskRegistry
from tests.conftest import BATCH_THRESHOLDS, run_async

MakeSchedule = Callable[..., ScheduleDefinition]


@pytest.fixture(params=BATCH_THRESHOLDS)
def batch_min(request: pytest.FixtureRequest) -> int:
    """Every test here through the store's batch statements and through one statement per item."""
    value: int = request.param
    return value


#: Longest a test waits in real seconds for something that must not hang.
PATIENCE = 10.0
WEEK_START = datetime(2027, 3, 25, 0, 0, tzinfo=UTC)  # Europe/Berlin springs forward on 2027-03-28


class Probe:
    """Tasks for tests: a no-op recorder, a gate-held slow task, a failing task."""

    def __init__(self) -> None:
        self.calls: list[RunContext] = []
        self.gate = asyncio.Event()
        self.stopped: list[str] = []

    async def record(self, ctx: RunContext) -> str:
        self.calls.append(ctx)
        return f"done {ctx.intended_run_at.isoformat()}"

    async def slow(self, ctx: RunContext) -> str:
        self.calls.append(ctx)
        gate = asyncio.ensure_future(self.gate.wait())
        stop = asyncio.ensure_future(ctx.stop_requested.wait())
        await asyncio.wait({gate, stop}, return_when=asyncio.FIRST_COMPLETED)
        gate.cancel()
        stop.cancel()
        if ctx.stop_requested.is_set():
            self.stopped.append(ctx.run_id)
        return "finished"

    async def boom(self, ctx: RunContext) -> None:
        self.calls.append(ctx)
        raise ValueError(f"boom on attempt {ctx.attempt}")


def registry(probe: Probe) -> TaskRegistry:
    tasks = TaskRegistry()
    tasks.add("record", probe.record)
    tasks.add("slow", probe.slow)
    tasks.add("boom", probe.boom)
    return tasks


def engine_for(store: ScheduleStore, probe: Probe, clock: FakeClock, **kw: Any) -> ScheduleEngine:
    kw.setdefault("tick_seconds", 3600)
    return ScheduleEngine(store, registry(probe), clock=clock, worker_id="test-worker", **kw)


def live_engine(
    tmp_path: Path, make_schedule: MakeSchedule, *, due_in: timedelta, tick_seconds: float
) -> tuple[ScheduleStore, ScheduleEngine, datetime]:
    """A SystemClock engine over a new file, with one schedule "soon" due once in ``due_in``."""
    clock = SystemClock()
    store = ScheduleStore(tmp_path / "live.db", clock=clock)
    due = clock.now() + due_in
    store.add(make_schedule("soon", trigger_type="delay", expression=due.isoformat(), target="record"))
    engine = ScheduleEngine(store, registry(Probe()), clock=clock, tick_seconds=tick_seconds, worker_id="live")
    return store, engine, due


def statuses(store: ScheduleStore, name: str) -> Counter[RunStatus]:
    return Counter(r.status for r in store.runs(schedule=name))


@run_async
async def test_a_simulated_week_of_mixed_schedules_runs_exactly_the_expected_occurrences(tmp_path: Path) -> None:
    # At the production batch threshold only: the other tests of this module drive both paths,
    # and a week is long enough to run once. The densest schedule fires every 15 minutes: what a
    # week proves does not grow with the count of runs, and every-minute calendar schedules run
    # for a whole simulated day in the legacy jobs' test.
    clock = FakeClock(WEEK_START)
    store = ScheduleStore(tmp_path / "week.db", clock=clock)
    probe = Probe()

    def add(name: str, trigger: str, expression: str, **kw: Any) -> None:
        store.add(ScheduleDefinition(name=name, trigger_type=trigger, expression=expression, target="record", **kw))

    add("every_15_minutes", "calendar", "*/15 * * * *")
    add("every_5_berlin", "calendar", "*/5 * * * *", timezone="Europe/Berlin")
    add("daily_0600_berlin", "calendar", "0 6 * * *", timezone="Europe/Berlin")
    add("weekly_monday_0900", "calendar", "0 9 * * mon")
    add("on_upload", "event", "file.uploaded")
    add("in_90_minutes", "delay", "+90m")
    # The settings read once and passed down, as the worker does (not read again at every run).
    engine = engine_for(store, probe, clock, settings=load_settings())
    await engine.start()
    end = WEEK_START + timedelta(days=7)
    began = time.perf_counter()
    for day in range(7):
        await engine.run_until(WEEK_START + timedelta(days=day, hours=12))
        engine.emit("file.uploaded", {"day": day})
    await engine.run_until(end)
    await engine.wait_idle()
    elapsed = time.perf_counter() - began
    await engine.stop()

    def intended(name: str) -> list[datetime]:
        return [r.intended_run_at for r in store.runs(schedule=name)]

    minute = timedelta(minutes=1)
    assert intended("every_15_minutes") == [WEEK_START + 15 * minute * i for i in range(1, 7 * 96 + 1)]
    # Every 5 minutes of real time, straight through the spring-forward night.
    assert intended("every_5_berlin") == [WEEK_START + 5 * minute * i for i in range(1, 7 * 288 + 1)]
    # 06:00 Berlin is 05:00 UTC before 2027-03-28 and 04:00 UTC from then on.
    assert intended("daily_0600_berlin") == [
        datetime(2027, 3, d, 5 if d < 28 else 4, 0, tzinfo=UTC) for d in range(25, 32)
    ]
    assert intended("weekly_monday_0900") == [datetime(2027, 3, 29, 9, 0, tzinfo=UTC)]
    assert intended("in_90_minutes") == [WEEK_START + timedelta(minutes=90)]
    assert store.get("in_90_minutes").enabled is False
    events = store.runs(schedule="on_upload")
    assert [r.params["payload"] for r in events] == [{"day": d} for d in range(7)]
    assert all(r.origin == "event" for r in events)
    everything = store.runs()
    assert Counter(r.status for r in everything) == {RunStatus.SUCCEEDED: len(everything)}
    assert len(probe.calls) == len(everything) == 672 + 2016 + 7 + 1 + 1 + 7
    assert all(r.started_at == r.intended_run_at for r in everything if r.origin == "schedule")
    print(f"simulated week: {len(everything)} runs in {elapsed:.2f} s real, {elapsed / 7:.2f} s per simulated day")
    store.close()


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (ConcurrencyPolicy.FORBID, {RunStatus.RUNNING: 1, RunStatus.SKIPPED: 2}),
        (ConcurrencyPolicy.ALLOW, {RunStatus.RUNNING: 3}),
        (ConcurrencyPolicy.ENQUEUE_ONE, {RunStatus.RUNNING: 1, RunStatus.PENDING: 1, RunStatus.SKIPPED: 1}),
    ],
)
@run_async
async def test_concurrency_policy_with_a_slow_task(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule, policy: ConcurrencyPolicy, expected: Any
) -> None:
    store.add(make_schedule("slowpoke", expression="1m", target="slow", concurrency_policy=policy))
    probe = Probe()
    engine = engine_for(store, probe, clock)
    await engine.start()
    await engine.run_until(clock.now() + timedelta(minutes=3, seconds=30))
    assert statuses(store, "slowpoke") == expected
    reasons = {r.reason for r in store.runs(schedule="slowpoke", status=RunStatus.SKIPPED)}
    if policy is ConcurrencyPolicy.FORBID:
        assert reasons == {"overlap: a run of this schedule is in flight (forbid)"}
    if policy is ConcurrencyPolicy.ENQUEUE_ONE:
        assert reasons == {"enqueue_one: a run is already waiting (queue full)"}
        probe.gate.set()
        await engine.run_until(clock.now() + timedelta(seconds=1))
        await engine.wait_idle()
        assert statuses(store, "slowpoke") == {RunStatus.SUCCEEDED: 2, RunStatus.SKIPPED: 1}
    probe.gate.set()
    await engine.wait_idle()
    await engine.stop()


@run_async
async def test_replace_stops_the_running_run_then_starts_the_new_one(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    store.add(make_schedule("latest_only", expression="1m", target="slow", concurrency_policy="replace"))
    probe = Probe()
    engine = engine_for(store, probe, clock)
    await engine.start()
    await engine.run_until(clock.now() + timedelta(minutes=2, seconds=30))
    first, second = store.runs(schedule="latest_only")
    # The task stopped when asked and returned: it ended on its own, and that is its outcome.
    assert (first.status, first.outcome) == (RunStatus.SUCCEEDED, "finished")
    assert first.reason == "asked to stop (replaced by a newer occurrence); ended on its own"
    assert second.status is RunStatus.RUNNING
    assert probe.stopped == [first.run_id]
    probe.gate.set()
    await engine.wait_idle()
    assert store.get_run(second.run_id).status is RunStatus.SUCCEEDED
    await engine.stop()


@run_async
async def test_replace_cancels_an_async_run_that_ignores_the_stop_request_past_the_grace(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    gate = asyncio.Event()
    ended: list[str] = []

    async def stubborn(ctx: RunContext) -> str:
        await gate.wait()
        ended.append(ctx.run_id)
        return "all done"

    store.add(make_schedule("latest_only", expression="1m", target="stubborn", concurrency_policy="replace"))
    tasks = TaskRegistry()
    tasks.add("stubborn", stubborn)
    engine = ScheduleEngine(store, tasks, clock=clock, tick_seconds=3600, worker_id="test-worker")
    await engine.start()
    await engine.run_until(clock.now() + timedelta(minutes=2, seconds=30))
    first, second = store.runs(schedule="latest_only")
    assert (first.status, first.reason) == (RunStatus.CANCELLED, "replaced by a newer occurrence")
    assert second.status is RunStatus.RUNNING
    assert second.started_at == first.completed_at
    assert ended == []
    gate.set()
    await engine.wait_idle()
    assert store.get_run(second.run_id).status is RunStatus.SUCCEEDED
    await engine.stop()


@run_async
async def test_replace_waits_for_a_thread_that_ignores_the_stop_request_and_records_what_it_did(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    release = threading.Event()
    ended: list[str] = []

    def stubborn(ctx: RunContext) -> str:
        release.wait(30)
        ended.append(ctx.run_id)
        return "all done"

    store.add(make_schedule("latest_only", expression="1m", target="stubborn", concurrency_policy="replace"))
    tasks = TaskRegistry()
    tasks.add("stubborn", stubborn)
    engine = ScheduleEngine(store, tasks, clock=clock, tick_seconds=3600, worker_id="test-worker")
    await engine.start()
    await engine.run_until(clock.now() + timedelta(minutes=3, seconds=30))
    # A thread cannot be cut: its run stays running, and the newest occurrence waits for it
    # instead of running beside it (the one before was superseded meanwhile).
    first, superseded, newest = store.runs(schedule="latest_only")
    assert first.status is RunStatus.RUNNING
    assert (superseded.status, superseded.reason) == (RunStatus.SKIPPED, "replace: superseded by a newer occurrence")
    assert newest.status is RunStatus.PENDING
    assert [r.run_id for r in engine.in_flight] == [first.run_id]
    release.set()
    await engine.wait_idle()
    done = store.get_run(first.run_id)
    assert (done.status, done.outcome) == (RunStatus.SUCCEEDED, "all done")
    assert done.reason == "asked to stop (replaced by a newer occurrence); ended on its own"
    assert store.get_run(newest.run_id).status is RunStatus.SUCCEEDED
    assert ended == [first.run_id, newest.run_id]
    await engine.stop()


@run_async
async def test_failures_retry_with_backoff_then_dead_letter_with_the_error(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    store.add(
        make_schedule("flaky", trigger_type="delay", expression="+1m", target="boom", max_retries=2, retry_backoff=10)
    )
    probe = Probe()
    engine = engine_for(store, probe, clock)
    await engine.start()
    await engine.run_until(clock.now() + timedelta(minutes=1))
    await engine.wait_idle()
    [run] = store.runs(schedule="flaky")
    assert (run.status, run.attempt, run.error_type) == (RunStatus.FAILED, 1, "ValueError")
    assert run.error == "ValueError: boom on attempt 1"
    assert run.error_traceback is not None and "raise ValueError" in run.error_traceback
    await engine.run_until(clock.now() + timedelta(minutes=5))
    await engine.wait_idle()
    [run] = store.runs(schedule="flaky")
    assert (run.status, run.attempt) == (RunStatus.DEAD_LETTERED, 3)
    assert [c.attempt for c in probe.calls] == [1, 2, 3]
    gaps = [(b.intended_run_at, a.attempt) for a, b in zip(probe.calls, probe.calls[1:], strict=False)]
    assert all(c.intended_run_at == run.intended_run_at for c in probe.calls) and gaps
    [letter] = store.dead_letters()
    assert (letter.run_id, letter.attempts, letter.error) == (run.run_id, 3, "ValueError: boom on attempt 3")
    assert store.get("flaky").consecutive_failures == 1
    await engine.stop()


@run_async
async def test_a_run_past_its_timeout_fails_with_reason_timeout(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    store.add(make_schedule("stuck", trigger_type="delay", expression="+1m", target="slow", timeout=30, max_retries=0))
    probe = Probe()
    engine = engine_for(store, probe, clock)
    await engine.start()
    await engine.run_until(clock.now() + timedelta(minutes=1, seconds=29))
    assert statuses(store, "stuck") == {RunStatus.RUNNING: 1}
    await engine.run_until(clock.now() + timedelta(seconds=2))
    await engine.wait_idle()
    [run] = store.runs(schedule="stuck")
    assert (run.status, run.reason, run.error_type) == (
        RunStatus.DEAD_LETTERED,
        "retries exhausted: 1 of 1 attempts failed",
        "TimeoutError",
    )
    assert run.error == "TimeoutError: run exceeded its timeout of 30s"
    await engine.stop()


@run_async
async def test_a_task_that_is_not_configured_ends_skipped_naming_what_is_missing(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ACTP_TEST_SERVICE_URL", raising=False)
    tasks = TaskRegistry()

    async def needs_url(ctx: RunContext) -> None:
        raise TaskNotConfigured("ACTP_TEST_SERVICE_URL", "the service's base URL")

    async def declared(ctx: RunContext) -> None:
        raise AssertionError("must not run without its configuration")

    tasks.add("needs_url", needs_url)
    tasks.add("declared", declared, requires=["ACTP_TEST_SERVICE_URL"])
    store.add(make_schedule("raises", trigger_type="delay", expression="+1m", target="needs_url"))
    store.add(make_schedule("requires", trigger_type="delay", expression="+1m", target="declared"))
    engine = ScheduleEngine(store, tasks, clock=clock, tick_seconds=3600, worker_id="w")
    await engine.start()
    await engine.run_until(clock.now() + timedelta(minutes=2))
    await engine.wait_idle()
    for name in ("raises", "requires"):
        [run] = store.runs(schedule=name)
        assert run.status is RunStatus.SKIPPED
        assert run.reason is not None and run.reason.startswith("not configured: set ACTP_TEST_SERVICE_URL")
    assert store.dead_letters() == []
    await engine.stop()


@run_async
async def test_an_engine_given_settings_judges_a_tasks_requirements_by_them(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACTP_TEST_SERVICE_URL", "https://only-in-the-process.example.com")
    tasks = TaskRegistry()
    ran: list[str] = []

    async def declared(ctx: RunContext) -> None:
        ran.append(ctx.run_id)

    tasks.add("declared", declared, requires=["ACTP_TEST_SERVICE_URL"])
    store.add(make_schedule("requires", trigger_type="delay", expression="+1m", target="declared"))
    settings = load_settings({"ACTP_WORKER_ID": "from-settings"})
    engine = ScheduleEngine(store, tasks, clock=clock, tick_seconds=3600, settings=settings)
    assert engine.worker_id == "from-settings"
    await engine.start()
    await engine.run_until(clock.now() + timedelta(minutes=2))
    await engine.wait_idle()
    [run] = store.runs(schedule="requires")
    assert run.status is RunStatus.SKIPPED and ran == []
    assert run.reason is not None and run.reason.startswith("not configured: set ACTP_TEST_SERVICE_URL")
    await engine.stop()


@run_async
async def test_lifecycle_schedules_run_at_start_and_at_stop(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    store.add(make_schedule("hello", trigger_type="lifecycle", expression="startup", target="record"))
    store.add(make_schedule("goodbye", trigger_type="lifecycle", expression="shutdown", target="record"))
    probe = Probe()
    engine = engine_for(store, probe, clock)
    await engine.start()
    await engine.wait_idle()
    assert statuses(store, "hello") == {RunStatus.SUCCEEDED: 1}
    assert statuses(store, "goodbye") == {}
    await engine.stop()
    assert statuses(store, "goodbye") == {RunStatus.SUCCEEDED: 1}
    assert store.get_state("worker:test-worker") is not None


@run_async
async def test_stop_ends_within_the_longest_shutdown_timeout_while_shutdown_schedules_run(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    never = asyncio.Event()
    cut_at: dict[str, datetime] = {}

    async def stubborn(ctx: RunContext) -> None:
        try:
            await never.wait()
        finally:
            cut_at[ctx.schedule.name] = clock.now()

    tasks = TaskRegistry()
    tasks.add("stubborn", stubborn)
    for name, policy in [("finisher", "graceful_finish"), ("requeuer", "requeue")]:
        store.add(make_schedule(name, expression="1h", target="stubborn", shutdown_policy=policy, shutdown_timeout=30))
    store.add(
        make_schedule(
            "goodbye", trigger_type="lifecycle", expression="shutdown", target="stubborn", shutdown_timeout=20
        )
    )
    engine = ScheduleEngine(store, tasks, clock=clock, tick_seconds=3600, worker_id="w")
    await engine.start()
    for name in ("finisher", "requeuer"):
        await engine.run_now(name)
    await engine.tick()
    await asyncio.sleep(0)
    began = clock.now()
    await engine.stop()
    # Each run has its shutdown timeout from the stop on, the shutdown schedule's run included:
    # the stop takes the longest of them, not their sum, and requeue cuts its run at once.
    assert clock.now() - began <= timedelta(seconds=31)
    assert cut_at["requeuer"] == began
    assert cut_at["goodbye"] - began == timedelta(seconds=20)
    assert cut_at["finisher"] - began == timedelta(seconds=30)
    reasons = {r.schedule_name: (r.status, r.reason) for r in store.runs()}
    assert reasons == {
        "finisher": (RunStatus.PENDING, "shutdown: still running at the shutdown timeout"),
        "requeuer": (RunStatus.PENDING, "shutdown: requeued (policy requeue)"),
        "goodbye": (RunStatus.PENDING, "shutdown: still running at the shutdown timeout"),
    }


@run_async
async def test_stop_leaves_behind_a_task_that_swallows_its_cancel(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    released = False
    swallowed = 0

    async def deaf(ctx: RunContext) -> str:
        nonlocal swallowed
        while not released:
            try:
                await asyncio.sleep(0.001)
            except asyncio.CancelledError:
                swallowed += 1
        return "ended at last"

    tasks = TaskRegistry()
    tasks.add("deaf", deaf)
    store.add(make_schedule("deaf", expression="1h", target="deaf", shutdown_timeout=30))
    engine = ScheduleEngine(store, tasks, clock=clock, tick_seconds=3600, worker_id="w")
    await engine.start()
    run = await engine.run_now("deaf")
    await engine.tick()
    began = clock.now()
    await asyncio.wait_for(engine.stop(), timeout=PATIENCE)
    assert swallowed >= 1
    assert clock.now() - began <= timedelta(seconds=32)
    left = store.get_run(run.run_id)
    assert left.status is RunStatus.PENDING
    assert left.reason == (
        "shutdown: still running at the shutdown timeout; it did not end when cancelled and is left to end "
        "with the process"
    )
    released = True
    await asyncio.sleep(0.05)  # it ends now; nothing more is written
    assert store.get_run(run.run_id) == left


@run_async
async def test_lifecycle_schedules_whose_task_is_missing_are_skipped_and_stop_completes(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    store.add(make_schedule("hello", trigger_type="lifecycle", expression="startup", target="gone"))
    store.add(make_schedule("goodbye", trigger_type="lifecycle", expression="shutdown", target="gone"))
    for life in range(2):  # the next start finds nothing left running, and stops cleanly again
        engine = engine_for(store, Probe(), clock)
        await engine.start()
        await engine.wait_idle()
        await engine.stop()
        assert store.get_state("worker:test-worker")["clean"] is True  # type: ignore[index]
        for name in ("hello", "goodbye"):
            runs = store.runs(schedule=name)
            assert [r.status for r in runs] == [RunStatus.SKIPPED] * (life + 1)
            assert all("'gone' is not registered" in (r.reason or "") for r in runs)


@run_async
async def test_run_now_and_disabled_schedules(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    store.add(make_schedule("manual", expression="1h", target="record"))
    probe = Probe()
    engine = engine_for(store, probe, clock)
    await engine.start()
    store.disable("manual", reason="maintenance")
    run = await engine.run_now("manual")
    await engine.tick()
    await engine.wait_idle()
    assert store.get_run(run.run_id).status is RunStatus.SUCCEEDED
    assert run.origin == "manual"
    await engine.run_until(clock.now() + timedelta(hours=3))
    assert len(store.runs(schedule="manual")) == 1  # disabled: nothing materialized
    store.enable("manual")
    await engine.run_until(clock.now() + timedelta(hours=1, seconds=1))
    await engine.wait_idle()
    assert len(store.runs(schedule="manual")) == 2
    await engine.stop()


@run_async
async def test_with_the_system_clock_a_due_run_starts_on_time_not_on_the_next_tick(
    tmp_path: Path, make_schedule: MakeSchedule
) -> None:
    store, engine, due = live_engine(tmp_path, make_schedule, due_in=timedelta(milliseconds=200), tick_seconds=10)
    await engine.start()
    await engine.run_until(due + timedelta(milliseconds=300))
    await engine.wait_idle()
    [run] = store.runs(schedule="soon")
    assert run.started_at is not None
    lateness = (run.started_at - run.intended_run_at).total_seconds()
    print(f"lateness of a run due in 200 ms: {lateness * 1000:.1f} ms")
    # A loop that waited for its 10 s tick would be 9.8 s late; half of that tells the two apart on
    # any machine, however loaded (how late exactly is a figure for bench/, not a test).
    assert 0 <= lateness < 5
    await engine.stop()
    store.close()


@run_async
async def test_with_the_system_clock_a_prepared_run_is_claimed_as_of_its_time_and_never_starts_before_it(
    tmp_path: Path, make_schedule: MakeSchedule
) -> None:
    clock = SystemClock()
    store = ScheduleStore(tmp_path / "live.db", clock=clock)
    began: list[tuple[datetime, datetime]] = []
    collecting: list[bool] = []

    async def mark(ctx: RunContext) -> None:
        began.append((clock.now(), ctx.intended_run_at))
        collecting.append(gc.isenabled())

    tasks = TaskRegistry()
    tasks.add("mark", mark)
    start = clock.now()
    for i in range(3):  # each prepared ahead, its claim begun ahead of its time (CLAIM_LEAD)
        due = start + timedelta(milliseconds=600 + 300 * i)
        store.add(make_schedule(f"soon{i}", trigger_type="delay", expression=due.isoformat(), target="mark"))
    engine = ScheduleEngine(store, tasks, clock=clock, tick_seconds=10, worker_id="live")
    await engine.start()
    await engine.run_until(start + timedelta(milliseconds=1600))
    await engine.wait_idle()
    runs = [r for r in store.runs() if r.status is RunStatus.SUCCEEDED]
    assert len(runs) == len(began) == 3
    # A task never begins before its time: the claim written ahead is committed at it, not before.
    assert all(at >= intended for at, intended in began)
    # The tick that woke ahead planned the claim as of the run's time: recorded as started at it
    # (a loop woken late on a loaded machine plans as of when it woke; one of three is enough).
    assert any(r.started_at == r.intended_run_at for r in runs)
    # From a claim begun ahead to its tasks' first step the garbage collector waits; then it is back.
    assert False in collecting
    assert gc.isenabled()
    await engine.stop()
    store.close()


@run_async
async def test_with_the_system_clock_claims_begun_ahead_leave_the_write_lock_to_other_writers(
    tmp_path: Path, make_schedule: MakeSchedule
) -> None:
    # Thirty every-second schedules at spread moments: thirty ticks a second, each begun ahead of
    # its runs' time and holding SQLite's write lock until it. The lead is what the work needs, so
    # another writer (the command line, another worker) still gets the lock at once, every time.
    clock = SystemClock()
    path = tmp_path / "live.db"
    store = ScheduleStore(path, clock=clock)
    start = clock.now()
    store.add_many(
        make_schedule(f"s{i}", expression="1s", target="record", anchor_at=start + timedelta(milliseconds=33 * i))
        for i in range(30)
    )
    engine = ScheduleEngine(store, registry(Probe()), clock=clock, tick_seconds=10, worker_id="live")
    waits: list[float] = []
    errors: list[str] = []
    done = threading.Event()

    def writer() -> None:
        conn = sqlite3.connect(path, isolation_level=None, timeout=1.0)
        while not done.is_set():
            began = time.monotonic()
            try:
                conn.execute("BEGIN IMMEDIATE")
                waits.append(time.monotonic() - began)
                conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                errors.append(str(exc))
            time.sleep(0.005)
        conn.close()

    await engine.start()
    await engine.run_until(start + timedelta(seconds=1.2))  # every schedule prepared, the leads measured
    thread = threading.Thread(target=writer)
    thread.start()
    await engine.run_until(clock.now() + timedelta(seconds=2))
    done.set()
    thread.join()
    await engine.stop()
    assert errors == [] and waits
    assert sorted(waits)[len(waits) // 2] < 0.1  # a lock held from one lead tick into the next starved it
    assert len([r for r in store.runs() if r.status is RunStatus.SUCCEEDED]) >= 30
    store.close()


@run_async
async def test_a_finished_run_is_recorded_with_the_moment_its_task_ended_not_the_tick_that_records_it(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    store.add(make_schedule("held", expression="1h", target="slow"))
    probe = Probe()
    engine = engine_for(store, probe, clock)
    await engine.start()
    await engine.run_until(clock.now() + timedelta(hours=1))
    [run] = engine.in_flight
    clock.advance(20)
    probe.gate.set()
    while engine.in_flight:  # the task ends here, 20 s after it started ...
        await asyncio.sleep(0)
    clock.advance(40)  # ... and the next tick comes 40 s later
    await engine.wait_idle()
    done = store.get_run(run.run_id)
    assert done.status is RunStatus.SUCCEEDED
    assert done.completed_at == run.started_at + timedelta(seconds=20)
    assert done.updated_at == run.started_at + timedelta(seconds=60)
    await engine.stop()


@run_async
async def test_with_the_system_clock_a_success_is_recorded_moments_after_it_ends_not_at_the_next_tick(
    tmp_path: Path, make_schedule: MakeSchedule
) -> None:
    store, engine, _ = live_engine(tmp_path, make_schedule, due_in=timedelta(milliseconds=100), tick_seconds=3600)
    await engine.start()
    loop = asyncio.ensure_future(engine.run_forever())
    try:
        for _ in range(50):  # real time: nothing else wakes the loop for an hour
            await asyncio.sleep(0.05)
            runs = store.runs(schedule="soon")
            if runs and runs[0].status is RunStatus.SUCCEEDED:
                break
        [run] = store.runs(schedule="soon")
        assert run.status is RunStatus.SUCCEEDED
    finally:
        await engine.stop()
        await loop
        store.close()


@run_async
async def test_wait_idle_waits_for_a_tick_that_is_still_recording(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule, mocker: Any
) -> None:
    store.add(make_schedule("once", trigger_type="delay", expression="+1m", target="record"))
    engine = engine_for(store, Probe(), clock)
    await engine.start()
    await engine.run_until(clock.now() + timedelta(minutes=1))
    while engine.in_flight:  # the task ends; its success waits for the next tick
        await asyncio.sleep(0)
    release = threading.Event()
    finish_many = store.finish_many

    def slow_finish(*args: Any, **kwargs: Any) -> Any:
        release.wait(5)
        return finish_many(*args, **kwargs)

    mocker.patch.object(store, "finish_many", side_effect=slow_finish)
    recording = asyncio.ensure_future(engine.tick())  # the loop's tick, stuck writing the completion
    for _ in range(5):
        await asyncio.sleep(0)
    idle = asyncio.ensure_future(engine.wait_idle())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not idle.done()  # nothing in flight, nothing left to record here: but not yet committed
    release.set()
    await asyncio.wait_for(idle, 5)
    assert [r.status for r in store.runs(schedule="once")] == [RunStatus.SUCCEEDED]
    await recording
    await engine.stop()


@run_async
async def test_successes_and_skips_are_recorded_by_the_next_instants_tick_failures_at_once(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule, monkeypatch: pytest.MonkeyPatch, mocker: Any
) -> None:
    # A success or a skip changes nothing anyone waits for: it is written with the next tick's
    # work, one transaction per instant. A failure's retry and breaker count cannot wait.
    monkeypatch.delenv("ACTP_TEST_NEVER_SET", raising=False)
    # The window is real time: a slow moment of the machine (a checkpoint, a pause) could let it
    # wake a tick of its own within an instant. Here only the next instant's tick may record.
    monkeypatch.setattr(execution, "RECORD_WINDOW_SECONDS", 3600.0)
    tasks = TaskRegistry()

    async def fine(ctx: RunContext) -> None:
        return None

    async def broken(ctx: RunContext) -> None:
        raise RuntimeError("down")

    tasks.add("fine", fine)
    tasks.add("unset", fine, requires=("ACTP_TEST_NEVER_SET",))
    tasks.add("broken", broken)
    store.add(make_schedule("ok", expression="10s", target="fine"))
    store.add(make_schedule("skipped", expression="10s", target="unset"))
    engine = ScheduleEngine(store, tasks, clock=clock, tick_seconds=3600, worker_id="w1")
    await engine.start()
    ticks = mocker.spy(TickWork, "tick")
    await engine.run_until(clock.now() + timedelta(minutes=10))
    await engine.wait_idle()
    statuses = Counter(r.status for r in store.runs(limit=1000))
    assert statuses == {RunStatus.SUCCEEDED: 60, RunStatus.SKIPPED: 60}
    assert ticks.call_count <= 60 + 2  # one per instant (and the last records waiting for wait_idle)
    store.add(make_schedule("failing", expression="10s", target="broken", max_retries=0))
    ticks.reset_mock()
    await engine.run_until(clock.now() + timedelta(seconds=30))  # three failures: the breaker's threshold
    await engine.wait_idle()
    assert store.count_runs(status=RunStatus.DEAD_LETTERED) == 3
    assert ticks.call_count >= 2 * 3  # each instant's tick, and one more for its failure, at once
    await engine.stop()
