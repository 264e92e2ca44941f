"""The run and breaker machines: every allowed and forbidden transition, guards, effects, stale writes."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.scheduler import BreakerState, RunStatus, ScheduleDefinition, ScheduledRun, TriggerType
from agent.scheduler.errors import GuardRejected, InvalidTransition, StaleRun
from agent.scheduler.machines.binding import Transition
from agent.scheduler.machines.breaker import BREAKER_MACHINE, fire_breaker
from agent.scheduler.machines.run_lifecycle import (
    RUN_EFFECTS,
    RUN_EFFECTS_BY_DESTINATION,
    RUN_MACHINE,
    RunMove,
    fire_run,
    plan_run,
    plan_runs,
    run_effects,
)
from agent.scheduler.policies.missed_run import DueFacts
from agent.scheduler.policies.retry import backoff_delay
from agent.scheduler.policies.shutdown import Stopping

NOW = datetime(2027, 3, 13, 12, 0, tzinfo=UTC)
S = RunStatus

#: The contract, written out by hand: (status, trigger) -> status after.
RUN_EDGES = {
    (S.PENDING, "start"): S.RUNNING,
    (S.PENDING, "skip"): S.SKIPPED,
    (S.PENDING, "cancel"): S.CANCELLED,
    (S.RUNNING, "succeed"): S.SUCCEEDED,
    (S.RUNNING, "fail"): S.FAILED,
    (S.RUNNING, "orphan"): S.FAILED,
    (S.RUNNING, "checkpoint"): S.PAUSED,
    (S.RUNNING, "requeue"): S.PENDING,
    (S.RUNNING, "cancel"): S.CANCELLED,
    (S.RUNNING, "skip"): S.SKIPPED,
    (S.FAILED, "retry"): S.PENDING,
    (S.FAILED, "dead_letter"): S.DEAD_LETTERED,
    (S.DEAD_LETTERED, "replay"): S.PENDING,
    (S.PAUSED, "resume"): S.PENDING,
}
RUN_TRIGGERS = sorted({t for _, t in RUN_EDGES})


def schedule(**kw: Any) -> ScheduleDefinition:
    fields: dict[str, Any] = {"name": "s", "trigger_type": TriggerType.INTERVAL, "expression": "1m", "target": "t"}
    fields.update(kw)
    return ScheduleDefinition(**fields)


def run(status: RunStatus, **kw: Any) -> ScheduledRun:
    fields: dict[str, Any] = {
        "run_id": "run_1",
        "schedule_id": "sch_1",
        "schedule_name": "s",
        "intended_run_at": NOW,
        "occurrence_key": "k",
        "status": status,
    }
    fields.update(kw)
    return ScheduledRun(**fields)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, dict[str, Any]]] = []

    def __call__(self, r: ScheduledRun, t: Transition, fields: dict[str, Any]) -> None:
        self.calls.append((t.trigger, t.source, t.dest, fields))


def ready_for(status: RunStatus, trigger: str) -> tuple[ScheduledRun, ScheduleDefinition, datetime]:
    """A run and a time at which the trigger's guard, if any, passes."""
    sched = schedule(max_retries=2, retry_backoff=timedelta(seconds=10))
    if trigger == "dead_letter":
        return run(status, attempt=3, completed_at=NOW), sched, NOW
    return run(status, attempt=1, completed_at=NOW), sched, NOW + timedelta(hours=2)


@pytest.mark.parametrize("status", list(RunStatus))
@pytest.mark.parametrize("trigger", RUN_TRIGGERS)
def test_run_transition_allowed_exactly_as_the_diagram_says(status: RunStatus, trigger: str) -> None:
    before, sched, now = ready_for(status, trigger)
    persist = Recorder()
    expected = RUN_EDGES.get((status, trigger))
    if expected is None:
        with pytest.raises(InvalidTransition) as err:
            fire_run(before, trigger, now=now, persist=persist, schedule=sched)
        assert (err.value.run_id, err.value.state, err.value.trigger) == ("run_1", status.value, trigger)
        assert persist.calls == []
    else:
        after = fire_run(before, trigger, now=now, persist=persist, schedule=sched)
        assert after.status is expected
        assert [(c[0], c[1], c[2]) for c in persist.calls] == [(trigger, status.value, expected.value)]
    assert before.status is status
    assert RUN_MACHINE.models == []


def test_unknown_trigger_is_an_invalid_transition_naming_the_known_ones() -> None:
    with pytest.raises(InvalidTransition, match="unknown trigger; known: cancel, checkpoint"):
        fire_run(run(S.PENDING), "explode", now=NOW, persist=Recorder())


def test_a_failed_write_leaves_the_run_and_the_machine_unchanged() -> None:
    def lose(r: ScheduledRun, t: Transition, fields: dict[str, Any]) -> None:
        raise StaleRun(r.run_id, t.source, "running", t.trigger, holder="worker-2")

    before = run(S.PENDING)
    with pytest.raises(StaleRun, match="moved by worker-2") as err:
        fire_run(before, "start", now=NOW, persist=lose)
    assert err.value.actual == "running"
    assert before.status is S.PENDING
    assert RUN_MACHINE.models == []


def test_start_stamps_the_start_and_succeed_keeps_who_ran_it_but_drops_the_lease() -> None:
    started = fire_run(run(S.PENDING), "start", now=NOW, persist=Recorder(), changes={"owner": "w1"})
    assert (started.started_at, started.heartbeat_at, started.owner) == (NOW, NOW, "w1")
    done = fire_run(started, "succeed", now=NOW + timedelta(seconds=3), persist=Recorder(), changes={"outcome": "ok"})
    assert (done.completed_at, done.owner, done.outcome) == (NOW + timedelta(seconds=3), "w1", "ok")
    assert done.lease_expires_at is None
    requeued = fire_run(started, "requeue", now=NOW, persist=Recorder())
    assert (requeued.owner, requeued.lease_expires_at) == (None, None)


def test_every_trigger_says_what_it_sets_and_every_status_has_effects_to_fall_back_on() -> None:
    # due and stop carry the policies' guards; each of their edges ends where a plain trigger ends
    # and sets what that trigger sets, by destination.
    assert set(RUN_EFFECTS) | {"due", "stop"} == set(RUN_MACHINE.events)
    assert set(RUN_EFFECTS_BY_DESTINATION) == set(RunStatus)
    plain = {("running", "start"), ("skipped", "skip"), ("paused", "checkpoint"), ("pending", "requeue")}
    for trigger in ("due", "stop"):
        for source, edges in RUN_MACHINE.events[trigger].transitions.items():
            for edge in edges:
                twin = next(t for d, t in plain if d == edge.dest)
                assert RUN_EFFECTS_BY_DESTINATION[RunStatus(edge.dest)] is RUN_EFFECTS[twin], (
                    trigger,
                    source,
                    edge.dest,
                )


def test_a_trigger_without_effects_of_its_own_gets_those_of_the_status_it_leads_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    running = run(S.RUNNING, owner="w1", started_at=NOW, lease_expires_at=NOW)
    requeued = run_effects(running, "requeue", NOW)
    paused = run_effects(running, "checkpoint", NOW)
    started = run_effects(run(S.PENDING, starts=2), "start", NOW)
    # A trigger added later (say a ``stop`` that pauses, a ``due`` that starts) with no entry yet:
    assert run_effects(running, "stop", NOW, dest=S.PAUSED.value) == paused
    assert run_effects(run(S.PENDING, starts=2), "due", NOW, dest=S.RUNNING.value) == started
    assert started["starts"] == 3
    # Without a destination, the machine's own edge from the run's status says where it leads.
    monkeypatch.delitem(RUN_EFFECTS, "requeue")
    assert (
        run_effects(running, "requeue", NOW)
        == requeued
        == {"started_at": None, "owner": None, "lease_expires_at": None}
    )
    with pytest.raises(InvalidTransition):
        run_effects(run(S.PENDING), "stop", NOW)


def test_planning_many_gives_each_item_its_move_or_the_machines_refusal_in_order() -> None:
    sched = schedule(max_retries=0)
    pending, failed = run(S.PENDING, run_id="r1"), run(S.FAILED, run_id="r2", completed_at=NOW)
    planned = plan_runs(
        [
            (pending, "start", {"owner": "w1", "reason": "on time"}),
            (pending, "succeed", {}),
            (failed, "retry", {}),
            (failed, "dead_letter", {}),
        ],
        now=NOW,
        schedules={"sch_1": sched},
    )
    start, refused, rejected, dead = planned
    assert isinstance(start, RunMove) and isinstance(dead, RunMove)
    assert (start.transition.source, start.transition.dest) == ("pending", "running")
    assert start.fields == {
        "status": "running",
        "updated_at": NOW,
        "started_at": NOW,
        "completed_at": None,
        "heartbeat_at": NOW,
        "prepared": False,
        "starts": 1,
        "owner": "w1",
        "reason": "on time",
    }
    assert start.moved == fire_run(
        pending, "start", now=NOW, persist=Recorder(), changes={"owner": "w1", "reason": "on time"}
    )
    assert start.run is pending and pending.status is S.PENDING
    assert isinstance(refused, InvalidTransition) and not isinstance(refused, GuardRejected)
    assert isinstance(rejected, GuardRejected) and "retries exhausted" in rejected.reason
    # The allowing guard's reason is written with the move.
    assert dead.fields["reason"] == dead.moved.reason == "retries exhausted: 1 of 1 attempts failed"


class TestRetryGuard:
    sched = schedule(max_retries=2, retry_backoff=timedelta(seconds=10))

    def failed(self, attempt: int) -> ScheduledRun:
        return run(S.FAILED, attempt=attempt, completed_at=NOW, error="ValueError: boom")

    def test_retry_waits_for_the_backoff_and_says_until_when(self) -> None:
        with pytest.raises(GuardRejected, match="backoff: attempt 2 of 3 not before") as err:
            fire_run(self.failed(1), "retry", now=NOW + timedelta(seconds=9), persist=Recorder(), schedule=self.sched)
        assert err.value.trigger == "retry"

    def test_retry_after_the_backoff_counts_the_attempt_and_records_why(self) -> None:
        delay = backoff_delay(1, timedelta(seconds=10), key="run_1")
        again = fire_run(self.failed(1), "retry", now=NOW + delay, persist=Recorder(), schedule=self.sched)
        assert (again.status, again.attempt, again.reason) == (S.PENDING, 2, "retry: attempt 2 of 3")
        assert again.started_at is None and again.completed_at is None

    def test_no_retry_once_attempts_are_used_up(self) -> None:
        with pytest.raises(GuardRejected, match="retries exhausted: attempt 3 of 3"):
            fire_run(self.failed(3), "retry", now=NOW + timedelta(days=1), persist=Recorder(), schedule=self.sched)

    def test_dead_letter_only_once_attempts_are_used_up(self) -> None:
        with pytest.raises(GuardRejected, match="attempts remain: 2 of 3"):
            fire_run(self.failed(2), "dead_letter", now=NOW, persist=Recorder(), schedule=self.sched)
        dead = fire_run(self.failed(3), "dead_letter", now=NOW, persist=Recorder(), schedule=self.sched)
        assert (dead.status, dead.reason) == (S.DEAD_LETTERED, "retries exhausted: 3 of 3 attempts failed")

    def test_guards_need_the_schedule(self) -> None:
        with pytest.raises(ValueError, match="needs the run's schedule"):
            fire_run(self.failed(1), "retry", now=NOW, persist=Recorder())

    def test_replay_gives_a_fresh_retry_budget(self) -> None:
        replayed = fire_run(run(S.DEAD_LETTERED, attempt=3), "replay", now=NOW, persist=Recorder(), schedule=self.sched)
        assert (replayed.status, replayed.attempt, replayed.origin) == (S.PENDING, 1, "replay")

    def test_replay_into_an_open_breaker_is_refused_unless_forced(self) -> None:
        tripped = replace(self.sched, breaker_state=BreakerState.OPEN)
        dead = run(S.DEAD_LETTERED, attempt=3)
        with pytest.raises(GuardRejected, match="circuit breaker of s is open: reset it first"):
            fire_run(dead, "replay", now=NOW, persist=Recorder(), schedule=tripped)
        forced = fire_run(dead, "replay", now=NOW, persist=Recorder(), schedule=tripped, force=True)
        assert (forced.status, forced.reason) == (S.PENDING, "replay forced by an operator")


@pytest.mark.parametrize(
    ("attempt", "base_s", "low_s", "high_s"),
    [(1, 10, 10, 11), (2, 10, 20, 22), (3, 10, 40, 44), (5, 10, 160, 176), (20, 10, 3600, 3960)],
)
def test_backoff_is_exponential_capped_and_jittered_by_at_most_a_tenth(
    attempt: int, base_s: int, low_s: float, high_s: float
) -> None:
    delays = {backoff_delay(attempt, timedelta(seconds=base_s), key=f"run_{i}") for i in range(50)}
    assert all(timedelta(seconds=low_s) <= d <= timedelta(seconds=high_s) for d in delays)
    assert len(delays) > 1  # jitter spreads runs out
    assert backoff_delay(attempt, timedelta(seconds=base_s), key="x") == backoff_delay(
        attempt, timedelta(seconds=base_s), key="x"
    )


B = BreakerState
BREAKER_EDGES = {
    (B.CLOSED, "trip"): B.OPEN,
    (B.OPEN, "probe"): B.HALF_OPEN,
    (B.OPEN, "reset"): B.CLOSED,
    (B.HALF_OPEN, "close"): B.CLOSED,
    (B.HALF_OPEN, "reopen"): B.OPEN,
    (B.HALF_OPEN, "reset"): B.CLOSED,
}


def breaker_ready(state: BreakerState) -> ScheduleDefinition:
    return schedule(
        breaker_state=state,
        consecutive_failures=3,
        breaker_cooldown=timedelta(minutes=5),
        breaker_opened_at=NOW - timedelta(minutes=10),
    )


@pytest.mark.parametrize("state", list(BreakerState))
@pytest.mark.parametrize("trigger", ["trip", "probe", "close", "reopen", "reset"])
def test_breaker_transition_allowed_exactly_as_the_diagram_says(state: BreakerState, trigger: str) -> None:
    calls: list[str] = []
    expected = BREAKER_EDGES.get((state, trigger))

    def persist(s: ScheduleDefinition, t: Transition, fields: dict[str, Any]) -> None:
        calls.append(t.dest)

    if expected is None:
        with pytest.raises(InvalidTransition):
            fire_breaker(breaker_ready(state), trigger, now=NOW, persist=persist)
        assert calls == []
    else:
        after = fire_breaker(breaker_ready(state), trigger, now=NOW, persist=persist)
        assert after.breaker_state is expected and calls == [expected.value]
    assert BREAKER_MACHINE.models == []


@pytest.mark.parametrize(
    ("failures", "threshold", "trips"), [(2, 3, False), (3, 3, True), (4, 3, True), (1, 1, True), (4, 5, False)]
)
def test_trip_guard_uses_the_schedules_threshold(failures: int, threshold: int, trips: bool) -> None:
    s = schedule(consecutive_failures=failures, breaker_threshold=threshold)
    if trips:
        opened = fire_breaker(s, "trip", now=NOW, persist=lambda *a: None)
        assert (opened.breaker_state, opened.breaker_opened_at) == (B.OPEN, NOW)
    else:
        with pytest.raises(GuardRejected, match=f"{failures} consecutive failures, threshold {threshold}"):
            fire_breaker(s, "trip", now=NOW, persist=lambda *a: None)


def test_probe_waits_for_the_cooldown_and_never_happens_without_one() -> None:
    opened = replace(breaker_ready(B.OPEN), breaker_opened_at=NOW)
    with pytest.raises(GuardRejected, match="cooldown until"):
        fire_breaker(opened, "probe", now=NOW + timedelta(minutes=4), persist=lambda *a: None)
    half = fire_breaker(opened, "probe", now=NOW + timedelta(minutes=5), persist=lambda *a: None)
    assert half.breaker_state is B.HALF_OPEN
    no_cooldown = replace(opened, breaker_cooldown=None)
    with pytest.raises(GuardRejected, match="until an operator resets it"):
        fire_breaker(no_cooldown, "probe", now=NOW + timedelta(days=30), persist=lambda *a: None)


def test_closing_and_resetting_clear_the_failure_count() -> None:
    half = breaker_ready(B.HALF_OPEN)
    for trigger in ("close", "reset"):
        closed = fire_breaker(half, trigger, now=NOW, persist=lambda *a: None)
        assert (closed.consecutive_failures, closed.breaker_opened_at) == (0, None)


# ---------------------------------------------------------------------- many at once, as one at a time

_POLICY_SCHEDULES = {
    f"sch_{i}": replace(schedule(**kw), id=f"sch_{i}")
    for i, kw in enumerate(
        [
            {"max_retries": 2, "retry_backoff": timedelta(seconds=10)},
            {"max_retries": 0, "missed_run_policy": "skip", "shutdown_policy": "requeue"},
            {"missed_run_policy": "catch_up_once", "shutdown_policy": "checkpoint_and_stop", "grace": 30},
            {"missed_run_policy": "catch_up_all", "shutdown_policy": "graceful_finish", "shutdown_timeout": 20},
        ]
    )
}


@st.composite
def _planned_items(draw: st.DrawFn) -> tuple[list[tuple[ScheduledRun, str, dict[str, Any]]], dict[str, Any]]:
    """Runs in every status, of schedules with different policies, at different lateness and
    attempts, each given a trigger: groups whose guards judge their runs alike and differently."""
    items: list[tuple[ScheduledRun, str, dict[str, Any]]] = []
    facts: dict[str, Any] = {}
    # A few (status, trigger) pairs shared by many runs: the groups the machine is fired on.
    statuses = st.sampled_from(list(RunStatus))
    triggers = st.sampled_from([*RUN_TRIGGERS, "due", "stop", "no_such_trigger"])
    guarded = st.sampled_from(
        [
            (S.PENDING, "due"),
            (S.RUNNING, "stop"),
            (S.FAILED, "retry"),
            (S.FAILED, "dead_letter"),
            (S.DEAD_LETTERED, "replay"),
        ]
    )
    pairs = draw(st.lists(st.one_of(guarded, st.tuples(statuses, triggers)), min_size=1, max_size=3))
    for i in range(draw(st.integers(1, 24))):
        status, trigger = draw(st.sampled_from(pairs))
        r = run(
            status,
            run_id=f"run_{i:02d}",
            schedule_id=draw(st.sampled_from(sorted(_POLICY_SCHEDULES))),
            intended_run_at=NOW - timedelta(seconds=draw(st.sampled_from([0, 5, 45, 3600]))),
            attempt=draw(st.integers(1, 4)),
            starts=draw(st.integers(0, 2)),
            prepared=draw(st.booleans()),
            origin=draw(st.sampled_from(["schedule", "manual", "catch_up"])),
            completed_at=NOW - timedelta(seconds=draw(st.sampled_from([1, 15, 120]))),
        )
        if trigger == "due":
            facts[r.run_id] = DueFacts(later_due=draw(st.booleans()))
        elif trigger == "stop":
            facts[r.run_id] = Stopping(
                began=NOW - timedelta(seconds=draw(st.sampled_from([0, 10, 40]))),
                checkpoint_saved=draw(st.booleans()),
                hurried=draw(st.booleans()),
            )
        changes = draw(st.sampled_from([{}, {"reason": "given"}, {"outcome": "ok", "owner": "w2"}]))
        items.append((r, trigger, changes))
    return items, facts


def _as_comparable(result: Any) -> Any:
    if isinstance(result, RunMove):
        return ("move", result.run, result.transition, result.fields, result.moved)
    return (type(result).__name__, str(result), getattr(result, "reason", None))


@given(_planned_items())
def test_planning_many_at_once_gives_what_planning_each_alone_gives(
    case: tuple[list[tuple[ScheduledRun, str, dict[str, Any]]], dict[str, Any]],
) -> None:
    """plan_runs fires the machine once per group of runs in one status given one trigger; every
    move and refusal must be the one plan_run gives that run alone."""
    items, facts = case
    together = plan_runs(items, now=NOW, schedules=_POLICY_SCHEDULES, facts=facts)
    alone = []
    for r, trigger, changes in items:
        try:
            alone.append(
                plan_run(
                    r,
                    trigger,
                    now=NOW,
                    schedule=_POLICY_SCHEDULES[r.schedule_id],
                    changes=changes,
                    facts=facts.get(r.run_id),
                )
            )
        except InvalidTransition as refusal:
            alone.append(refusal)
    assert [_as_comparable(x) for x in together] == [_as_comparable(x) for x in alone]
