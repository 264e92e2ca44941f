"""Runs prepared ahead of their time: on a FakeClock and a real SQLite file.

Right after a tick dispatches, the next occurrences due within PREPARE_AHEAD are stored as
pending runs, so that at their time only a claim stands between them and their start. What
happens to such a run when its schedule is disabled or changed, or its worker stops, first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from pytest_mock import MockerFixture

from agent.scheduler import FakeClock, RunStatus, ScheduleDefinition, ScheduleStore
from agent.scheduler.engine import BATCH_AHEAD, PREPARE_AHEAD, ScheduleEngine, due
from agent.scheduler.engine.execution import Execution
from agent.scheduler.policies.missed_run import PlannedRun, describe_span, plan_due
from agent.scheduler.store import BATCH_MIN, Materialization
from agent.scheduler.tasks import RunContext, TaskRegistry
from tests.conftest import BATCH_THRESHOLDS, T0, run_async

MakeSchedule = Callable[..., ScheduleDefinition]


@pytest.fixture(params=BATCH_THRESHOLDS)
def batch_min(request: pytest.FixtureRequest) -> int:
    """Every test here through the store's batch statements and through one statement per item."""
    value: int = request.param
    return value


SEC = timedelta(seconds=1)


def engine(store: ScheduleStore, clock: FakeClock, calls: list[RunContext]) -> ScheduleEngine:
    tasks = TaskRegistry()

    async def record(ctx: RunContext) -> None:
        calls.append(ctx)
        await asyncio.sleep(0)  # a task that awaits: other callbacks of the loop run before it ends

    tasks.add("record", record)
    return ScheduleEngine(store, tasks, clock=clock, tick_seconds=3600, worker_id="w1")


def by_time(store: ScheduleStore, name: str) -> dict[timedelta, tuple[RunStatus, str | None]]:
    return {r.intended_run_at - T0: (r.status, r.reason) for r in store.runs(schedule=name)}


@run_async
async def test_the_next_occurrence_is_prepared_after_the_tick_and_starts_on_its_time(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    assert PREPARE_AHEAD >= SEC
    store.add(make_schedule("fast", expression="1s", target="record"))
    calls: list[RunContext] = []
    e = engine(store, clock, calls)
    await e.start()
    await e.run_until(T0 + 3 * SEC)
    await e.wait_idle()
    runs = store.runs(schedule="fast")
    done = [r for r in runs if r.status is RunStatus.SUCCEEDED]
    assert [r.intended_run_at for r in done] == [T0 + i * SEC for i in (1, 2, 3)]
    assert all(r.started_at == r.intended_run_at for r in done)
    assert all(r.created_at == r.intended_run_at - SEC for r in done)  # each prepared a tick ahead
    [ahead] = [r for r in runs if r.status is RunStatus.PENDING]
    assert (ahead.intended_run_at, ahead.created_at) == (T0 + 4 * SEC, T0 + 3 * SEC)
    # A schedule due minutes away is not prepared: nothing waits in the database for it.
    store.add(make_schedule("slow", expression="5m", target="record"))
    await e.run_until(T0 + 4 * SEC)
    assert store.runs(schedule="slow") == []
    await e.stop()


@run_async
async def test_an_unchanged_schedule_starts_its_prepared_runs_with_the_copy_and_the_task_made_ahead(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule, mocker: MockerFixture
) -> None:
    # While nobody writes its row, the store's reads give the copy the prepare wrote: the claim
    # knows the schedule unchanged without re-checking its occurrences, and the task armed with
    # that copy is the one that runs (no second context is made at the start).
    store.add(make_schedule("fast", expression="1s", target="record"))
    calls: list[RunContext] = []
    e = engine(store, clock, calls)
    judged = mocker.spy(due, "prepared_blocked")
    contexts = mocker.spy(Execution, "_context")
    await e.start()
    await e.run_until(T0 + 3 * SEC)
    await e.wait_idle()
    assert [c.intended_run_at for c in calls] == [T0 + i * SEC for i in (1, 2, 3)]
    assert [c.kwargs["current"] for c in judged.call_args_list] == [True, True, True]
    made = [c.args[1].intended_run_at for c in contexts.call_args_list]
    assert sorted(made) == [T0 + i * SEC for i in (1, 2, 3, 4)]  # one each, the fourth armed ahead
    await e.stop()


@run_async
async def test_disabling_a_schedule_takes_back_its_prepared_run(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    store.add(make_schedule("fast", expression="1s", target="record"))
    calls: list[RunContext] = []
    e = engine(store, clock, calls)
    await e.start()
    await e.run_until(T0 + SEC)  # ran +1 s, prepared +2 s
    store.disable("fast", "paused by an operator")
    await e.run_until(T0 + 5 * SEC)
    await e.wait_idle()
    assert by_time(store, "fast") == {
        SEC: (RunStatus.SUCCEEDED, None),
        2 * SEC: (RunStatus.SKIPPED, "schedule disabled before this run's time"),
    }
    assert [c.intended_run_at for c in calls] == [T0 + SEC]
    await e.stop()


@run_async
async def test_changing_a_schedule_takes_back_a_prepared_run_that_is_no_longer_an_occurrence(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    store.add(make_schedule("fast", expression="1s", target="record"))
    store.add(make_schedule("steady", expression="1s", target="record"))
    calls: list[RunContext] = []
    e = engine(store, clock, calls)
    await e.start()
    await e.run_until(T0 + SEC)
    store.update("fast", expression="7s")  # +2 s is not a multiple of 7 s from the anchor
    store.update("steady", description="touched, trigger unchanged")  # +2 s still is an occurrence
    await e.run_until(T0 + 8 * SEC)
    await e.wait_idle()
    fast = by_time(store, "fast")
    assert fast[2 * SEC] == (
        RunStatus.SKIPPED,
        "schedule changed before this run's time: no longer one of its occurrences",
    )
    # The next occurrence comes from the new trigger, not from the time the old one had planned.
    assert sorted(t for t, (status, _) in fast.items() if status is RunStatus.SUCCEEDED) == [SEC, 7 * SEC]
    assert by_time(store, "steady")[2 * SEC] == (RunStatus.SUCCEEDED, None)
    # Its task armed with the old copy is cancelled and a new one made: the run starts once, runs once.
    [touched] = [r for r in store.runs(schedule="steady") if r.intended_run_at == T0 + 2 * SEC]
    assert touched.starts == 1
    ran = [c for c in calls if c.schedule.name == "steady" and c.intended_run_at == T0 + 2 * SEC]
    assert [c.schedule.description for c in ran] == ["touched, trigger unchanged"]
    await e.stop()


async def _stop_with_a_prepared_run(store: ScheduleStore, clock: FakeClock) -> None:
    first = engine(store, clock, [])
    await first.start()
    await first.run_until(T0 + SEC)  # ran +1 s, prepared +2 s: then the worker goes away
    await first.wait_idle()
    await first.stop()
    assert by_time(store, "fast")[2 * SEC][0] is RunStatus.PENDING


@run_async
async def test_after_a_quick_restart_a_prepared_run_starts_on_its_time(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    store.add(make_schedule("fast", expression="1s", target="record"))
    await _stop_with_a_prepared_run(store, clock)
    clock.advance(0.5)
    calls: list[RunContext] = []
    second = engine(store, clock, calls)
    await second.start()  # knows nothing of the run prepared by the first life
    await second.run_until(T0 + 2.5 * SEC)
    await second.wait_idle()
    [run] = [r for r in store.runs(schedule="fast") if r.intended_run_at == T0 + 2 * SEC]
    assert (run.status, run.started_at) == (RunStatus.SUCCEEDED, T0 + 2 * SEC)
    await second.stop()


@run_async
async def test_a_prepared_run_its_worker_left_behind_follows_the_missed_run_policy(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    store.add(make_schedule("fast", expression="1s", target="record", missed_run_policy="skip"))
    store.add(make_schedule("once", expression="1s", target="record", missed_run_policy="catch_up_once"))
    store.add(make_schedule("all", expression="1s", target="record", missed_run_policy="catch_up_all"))
    await _stop_with_a_prepared_run(store, clock)
    clock.advance(timedelta(hours=1))  # down for an hour: far past the 60 s grace
    own = [plan_due(s, s.trigger(), clock.now()).missed for s in store.list()]  # what each schedule missed itself
    calls: list[RunContext] = []
    second = engine(store, clock, calls)
    report = await second.start()
    await second.wait_idle()
    # The report counts the three prepared runs as missed occurrences too: one of each outcome.
    assert report.missed_detected == sum(m.detected for m in own if m) + 3
    assert report.missed_skipped == sum(m.skipped for m in own if m) + 1
    assert report.missed_coalesced == sum(m.coalesced for m in own if m) + 1
    assert report.missed_caught_up == sum(m.caught_up for m in own if m) + 1
    left = 2 * SEC
    status, reason = by_time(store, "fast")[left]
    assert status is RunStatus.SKIPPED and reason is not None and "policy skip" in reason
    status, reason = by_time(store, "once")[left]
    assert status is RunStatus.SKIPPED and reason is not None and "stands for it" in reason
    catch_ups = [r for r in store.runs(schedule="once") if r.origin == "catch_up"]
    assert len(catch_ups) == 1 and catch_ups[0].status is RunStatus.SUCCEEDED
    assert by_time(store, "all")[left][0] is RunStatus.SUCCEEDED
    assert T0 + left in [c.intended_run_at for c in calls if c.schedule.name == "all"]
    await second.stop()


@run_async
async def test_a_prepared_run_found_late_is_skipped_by_the_due_guard_saying_how_late(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    store.add(make_schedule("fast", expression="1s", target="record", missed_run_policy="skip"))
    await _stop_with_a_prepared_run(store, clock)
    clock.advance(timedelta(hours=3))
    late = clock.now() - (T0 + 2 * SEC)
    second = engine(store, clock, [])
    await second.start()
    await second.wait_idle()
    [left] = [r for r in store.runs(schedule="fast") if r.intended_run_at == T0 + 2 * SEC]
    grace = describe_span(store.get("fast").grace)
    assert left.status is RunStatus.SKIPPED
    assert left.reason == (
        f"missed by {describe_span(late)}: prepared for {(T0 + 2 * SEC).isoformat()}, not started within the "
        f"grace of {grace} (its worker stopped or stalled); policy skip"
    )
    assert left.completed_at == clock.now() and left.started_at is None  # skipped at its start, never run
    await second.stop()


@run_async
async def test_a_prepared_run_another_worker_starts_first_runs_once(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule, db_path: Path, batch_min: int
) -> None:
    store.add(make_schedule("fast", expression="1s", target="record"))
    mine: list[RunContext] = []
    first = engine(store, clock, mine)
    await first.start()
    await first.run_until(T0 + SEC)  # ran +1 s; prepared +2 s, its task made and waiting
    await first.wait_idle()
    other_store = ScheduleStore(f"sqlite:///{db_path}", clock=clock, batch_min=batch_min)
    theirs: list[RunContext] = []
    other = ScheduleEngine(other_store, engine(other_store, clock, theirs).tasks, clock=clock, worker_id="w2")
    clock.advance(1)
    await other.start()  # its first full scan finds the prepared run due and takes it
    await other.wait_idle()
    await first.run_until(T0 + 2 * SEC)  # loses the claim: its waiting task must not run
    await first.wait_idle()
    [run] = [r for r in store.runs(schedule="fast") if r.intended_run_at == T0 + 2 * SEC]
    assert (run.status, run.owner) == (RunStatus.SUCCEEDED, "w2")
    assert [c.intended_run_at for c in theirs] == [T0 + 2 * SEC]
    assert T0 + 2 * SEC not in [c.intended_run_at for c in mine]
    await other.stop()
    await first.stop()
    other_store.close()


@run_async
async def test_stopping_leaves_prepared_runs_pending_and_no_task_waiting(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    store.add(make_schedule("fast", expression="1s", target="record"))
    e = engine(store, clock, [])
    await e.start()
    await e.run_until(T0 + SEC)
    assert any(t.get_name().startswith("run:") for t in asyncio.all_tasks())  # the prepared run's task
    await e.stop()
    await asyncio.sleep(0)
    assert not any(t.get_name().startswith("run:") and not t.done() for t in asyncio.all_tasks())
    assert by_time(store, "fast")[2 * SEC][0] is RunStatus.PENDING


@run_async
async def test_a_prepared_run_that_started_and_was_cut_is_retried_to_its_end_under_every_policy(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    # kill -9 while a prepared run was running, and the worker came back after the grace: the
    # orphan's retry is a run that started, never an occurrence "not started within the grace".
    for policy in ("skip", "catch_up_once", "catch_up_all"):
        store.add(make_schedule(policy, expression="1m", target="record", missed_run_policy=policy, max_retries=3))
    for schedule in store.list():
        first = schedule.trigger(T0).next_after(T0)
        assert first is not None
        plan = [PlannedRun(first)]
        [done] = store.materialize_many(
            [Materialization(schedule, plan, first + timedelta(minutes=1), anchor_at=T0, prepared=True)], now=T0
        )
        assert done is not None and done.runs[0].prepared
        created = done.runs
        clock.advance(first - clock.now())
        [cut] = store.start_many(created, owner="dead", lease_until=first + 30 * SEC, now=first)
        assert not cut.prepared  # the first start clears the stored fact
    clock.advance(timedelta(hours=1))  # the worker died mid-run; back an hour later
    calls: list[RunContext] = []
    e = engine(store, clock, calls)
    report = await e.start()
    await e.wait_idle()
    assert report.orphans_found == 3 and report.orphans_requeued == 3
    for policy in ("skip", "catch_up_once", "catch_up_all"):
        [retried] = [r for r in store.runs(schedule=policy) if r.attempt == 2]
        assert (retried.status, retried.reason) == (RunStatus.SUCCEEDED, None), retried
        assert retried.intended_run_at in [c.intended_run_at for c in calls if c.schedule.name == policy]
    await e.stop()


@pytest.mark.parametrize(
    ("down", "latest", "stands_for"),
    [
        # Down 9 minutes: 120 s (prepared) and 180..540 s are past the grace, 600 s is within it.
        (timedelta(minutes=9), 600, 8),
        # Down 90 s: the prepared 120 s is past the grace, 180 s is not (30 s late).
        (timedelta(seconds=90), 180, 1),
    ],
)
@run_async
async def test_catch_up_once_runs_only_the_latest_overdue_occurrence_in_grace_or_past_it(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule, down: timedelta, latest: int, stands_for: int
) -> None:
    store.add(make_schedule("minutely", expression="1m", target="record", missed_run_policy="catch_up_once"))
    first = engine(store, clock, [])
    await first.start()
    await first.run_until(T0 + timedelta(seconds=119.5))  # ran 60 s, prepared 120 s
    await first.stop()
    assert by_time(store, "minutely")[timedelta(seconds=120)][0] is RunStatus.PENDING
    clock.advance(down)
    calls: list[RunContext] = []
    second = engine(store, clock, calls)
    await second.start()
    await second.wait_idle()
    assert [c.intended_run_at - T0 for c in calls] == [timedelta(seconds=latest)]
    runs = {r.intended_run_at - T0: r for r in store.runs(schedule="minutely")}
    ran = runs[timedelta(seconds=latest)]
    assert (ran.status, ran.coalesced_from) == (RunStatus.SUCCEEDED, stands_for)
    left = runs[timedelta(seconds=120)]
    assert left.status is RunStatus.SKIPPED and left.reason is not None and "stands for it" in left.reason
    assert not [r for r in runs.values() if r.reason and "overlap" in r.reason]
    await second.stop()


@run_async
async def test_a_delay_is_disabled_as_its_run_is_prepared_and_the_run_starts_on_its_time(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    at = T0 + 5 * SEC
    store.add(make_schedule("beat", expression="1s", target="record"))  # ticks every second
    for name in ("once", "held"):
        store.add(make_schedule(name, trigger_type="delay", expression=at.isoformat(), target="record"))
    calls: list[RunContext] = []
    first = engine(store, clock, calls)
    await first.start()
    await first.run_until(at - SEC)  # the tick at +4 s prepares the delays due at +5 s
    for name in ("once", "held"):
        fired = store.get(name)
        assert (fired.enabled, fired.disabled_reason) == (False, f"delay fired at {at.isoformat()}")
        [run] = store.runs(schedule=name)
        assert (run.status, run.prepared, run.created_at) == (RunStatus.PENDING, True, at - SEC)
    store.disable("held", "not today")  # after its run was prepared: takes it back
    await first.run_until(at)
    await first.wait_idle()
    [once] = store.runs(schedule="once")
    assert (once.status, once.started_at) == (RunStatus.SUCCEEDED, at)
    assert by_time(store, "held") == {5 * SEC: (RunStatus.SKIPPED, "schedule disabled before this run's time")}
    assert [c.schedule.name for c in calls if c.intended_run_at == at and c.schedule.name != "beat"] == ["once"]
    await first.stop()


@run_async
async def test_a_delay_re_timed_after_its_run_was_prepared_fires_at_its_new_time(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    at, later, sooner = T0 + 5 * SEC, T0 + 15 * SEC, T0 + 4.5 * SEC
    store.add(make_schedule("beat", expression="1s", target="record"))
    for name in ("moved", "early"):
        store.add(
            make_schedule(
                name, trigger_type="delay", expression=at.isoformat(), target="record", missed_run_policy="skip"
            )
        )
    calls: list[RunContext] = []
    e = engine(store, clock, calls)
    await e.start()
    await e.run_until(at - SEC)  # prepared, and the delays disabled as they fired
    assert not store.get("moved").enabled and not store.get("early").enabled
    assert store.update("moved", expression=later.isoformat()).enabled  # postponed before it ran
    store.update("early", expression=sooner.isoformat())  # brought forward, still ahead
    await e.run_until(later)
    await e.wait_idle()
    taken_back = (RunStatus.SKIPPED, "schedule changed before this run's time: no longer one of its occurrences")
    assert by_time(store, "moved") == {5 * SEC: taken_back, 15 * SEC: (RunStatus.SUCCEEDED, None)}
    assert by_time(store, "early") == {5 * SEC: taken_back, 4.5 * SEC: (RunStatus.SUCCEEDED, None)}
    assert [c.intended_run_at for c in calls if c.schedule.name != "beat"] == [sooner, later]
    for name, when in (("moved", later), ("early", sooner)):
        fired = store.get(name)
        assert (fired.enabled, fired.disabled_reason) == (False, f"delay fired at {when.isoformat()}")
    # A delay that really fired stays disabled when re-timed: it is not re-armed.
    assert not store.update("early", expression=later.isoformat()).enabled
    await e.stop()


@run_async
async def test_re_timing_a_delay_takes_its_prepared_run_back_at_once_and_an_operator_s_disable_stays(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule, mocker: MockerFixture
) -> None:
    at, later = T0 + 5 * SEC, T0 + 15 * SEC
    store.add(make_schedule("beat", expression="1s", target="record"))
    for name in ("moved", "stale", "paused"):
        store.add(make_schedule(name, trigger_type="delay", expression=at.isoformat(), target="record"))
    before = store.get("stale")  # as read before its run was prepared: still enabled
    calls: list[RunContext] = []
    e = engine(store, clock, calls)
    await e.start()
    await e.run_until(at - SEC)
    taken_back = (RunStatus.SKIPPED, "schedule changed before this run's time: no longer one of its occurrences")
    # The update itself takes the prepared run back, in its transaction: no claim can start it later.
    store.update("moved", expression=later.isoformat())
    assert by_time(store, "moved") == {5 * SEC: taken_back}
    # The update decides from the row as it is in its transaction, not from the copy it read first.
    real_get = store.get
    mocker.patch.object(store, "get", side_effect=lambda key: before if key == "stale" else real_get(key))
    store.update("stale", expression=later.isoformat())
    mocker.stopall()
    assert by_time(store, "stale") == {5 * SEC: taken_back} and store.get("stale").enabled
    # An operator's disable is theirs (it gets a reason of its own): re-timing does not undo it.
    store.update("paused", enabled=False)
    assert store.get("paused").disabled_reason == "disabled"
    assert not store.update("paused", expression=later.isoformat()).enabled
    await e.run_until(later)
    await e.wait_idle()
    assert (
        by_time(store, "moved")
        == by_time(store, "stale")
        == {5 * SEC: taken_back, 15 * SEC: (RunStatus.SUCCEEDED, None)}
    )
    assert by_time(store, "paused") == {5 * SEC: (RunStatus.SKIPPED, "schedule disabled before this run's time")}
    assert sorted(c.schedule.name for c in calls if c.schedule.name != "beat") == ["moved", "stale"]
    await e.stop()


@run_async
async def test_re_timing_a_disabled_schedule_that_is_not_a_fired_delay_leaves_it_disabled(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    store.add(make_schedule("fast", expression="1s", target="record"))
    e = engine(store, clock, [])
    await e.start()
    await e.run_until(T0 + SEC)  # ran +1 s, prepared +2 s
    store.update("fast", enabled=False, disabled_reason=None)  # disabled without a reason (as older rows are)
    assert not store.update("fast", expression="2s").enabled
    assert by_time(store, "fast")[2 * SEC][0] is RunStatus.PENDING  # left to the tick, which skips it
    await e.stop()


@run_async
async def test_a_delay_prepared_by_a_worker_that_stopped_starts_on_its_time_in_the_next(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    at = T0 + 2 * SEC
    store.add(make_schedule("beat", expression="1s", target="record"))
    store.add(make_schedule("once", trigger_type="delay", expression=at.isoformat(), target="record"))
    first = engine(store, clock, [])
    await first.start()
    await first.run_until(T0 + SEC)  # prepared the delay at +1 s, disabled as it fired
    await first.stop()
    assert not store.get("once").enabled
    clock.advance(0.5)
    calls: list[RunContext] = []
    second = engine(store, clock, calls)
    await second.start()  # reads the run and its disabled schedule: nobody wrote it since
    await second.run_until(at)
    await second.wait_idle()
    assert by_time(store, "once") == {2 * SEC: (RunStatus.SUCCEEDED, None)}
    assert at in [c.intended_run_at for c in calls if c.schedule.name == "once"]
    await second.stop()


@run_async
async def test_a_batch_due_together_is_prepared_further_ahead_and_a_smaller_group_is_not(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    minute = timedelta(minutes=1)
    store.add_many(make_schedule(f"lot{i}", expression="1m", target="record") for i in range(BATCH_MIN))
    store.add_many(
        make_schedule(f"few{i}", expression="1m", target="record", anchor_at=T0 + 30 * SEC)
        for i in range(BATCH_MIN - 1)
    )
    e = engine(store, clock, [])
    await e.start()
    await e.run_until(T0 + 2 * minute)
    await e.wait_idle()
    runs = [r for r in store.runs() if r.status is RunStatus.SUCCEEDED]
    lot = {(r.intended_run_at, r.created_at) for r in runs if r.schedule_name.startswith("lot")}
    few = {(r.intended_run_at, r.created_at) for r in runs if r.schedule_name.startswith("few")}
    assert lot == {(T0 + minute, T0 + minute - BATCH_AHEAD), (T0 + 2 * minute, T0 + 2 * minute - BATCH_AHEAD)}
    assert few == {(T0 + 90 * SEC, T0 + 90 * SEC)}  # the first occurrence after the anchor, made at its time
    assert all(r.started_at == r.intended_run_at for r in runs)
    await e.stop()


@run_async
async def test_a_batch_due_every_second_has_one_occurrence_prepared_at_a_time_across_workers(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule, db_path: Path, batch_min: int
) -> None:
    names = sorted(f"s{i:02d}" for i in range(BATCH_MIN))
    store.add_many(make_schedule(name, expression="1s", target="record") for name in names)
    first = engine(store, clock, [])
    await first.start()
    for k in range(1, 4):
        await first.run_until(T0 + k * SEC)
        await first.wait_idle()
        pending = [r for r in store.runs() if r.status is RunStatus.PENDING]
        assert sorted(r.schedule_name for r in pending) == names  # one each, not two seconds' worth
        assert {r.intended_run_at for r in pending} == {T0 + (k + 1) * SEC}
    # A second worker, with nothing prepared of its own, leaves alone the schedules whose next
    # occurrence the first prepared.
    other_store = ScheduleStore(f"sqlite:///{db_path}", clock=clock, batch_min=batch_min)
    other = ScheduleEngine(other_store, engine(other_store, clock, []).tasks, clock=clock, worker_id="w2")
    await other.start()
    await other.wait_idle()
    pending = [r for r in store.runs() if r.status is RunStatus.PENDING]
    assert sorted(r.schedule_name for r in pending) == names
    await other.stop()
    await first.stop()
    other_store.close()
