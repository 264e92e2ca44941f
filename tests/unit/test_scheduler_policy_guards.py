"""The missed-run and shutdown policies as guards of the run machine's ``due`` and ``stop`` edges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent.scheduler import RunStatus, ScheduleDefinition, ScheduledRun, TriggerType
from agent.scheduler.errors import GuardRejected, InvalidTransition
from agent.scheduler.machines.binding import Transition
from agent.scheduler.machines.run_lifecycle import RUN_MACHINE, fire_run
from agent.scheduler.policies.missed_run import DueFacts
from agent.scheduler.policies.shutdown import Stopping

T0 = datetime(2027, 3, 13, 12, 0, tzinfo=UTC)
S = RunStatus
GRACE = timedelta(minutes=5)


def schedule(**kw: Any) -> ScheduleDefinition:
    fields: dict[str, Any] = {
        "name": "s",
        "trigger_type": TriggerType.INTERVAL,
        "expression": "1h",
        "target": "t",
        "grace": GRACE,
        "shutdown_timeout": timedelta(seconds=30),
    }
    fields.update(kw)
    return ScheduleDefinition(**fields)


def run(status: RunStatus = S.PENDING, **kw: Any) -> ScheduledRun:
    fields: dict[str, Any] = {
        "run_id": "run_1",
        "schedule_id": "sch_1",
        "schedule_name": "s",
        "intended_run_at": T0,
        "occurrence_key": "k",
        "status": status,
        "prepared": status is S.PENDING,
    }
    fields.update(kw)
    return ScheduledRun(**fields)


class Recorder:
    def __init__(self) -> None:
        self.edges: list[tuple[str, str, str]] = []
        self.fields: dict[str, Any] = {}

    def __call__(self, r: ScheduledRun, t: Transition, fields: dict[str, Any]) -> None:
        self.edges.append((t.trigger, t.source, t.dest))
        self.fields = fields


def due(policy: str, late: timedelta, *, later_due: bool = False, **kw: Any) -> tuple[ScheduledRun, Recorder]:
    persist = Recorder()
    moved = fire_run(
        run(**kw),
        "due",
        now=T0 + late,
        persist=persist,
        schedule=schedule(missed_run_policy=policy),
        facts=DueFacts(later_due=later_due),
    )
    return moved, persist


# ---------------------------------------------------------------------------------------- missed runs

IN_GRACE = timedelta(minutes=4)
OUT_OF_GRACE = timedelta(hours=3)


@pytest.mark.parametrize("policy", ["skip", "catch_up_once", "catch_up_all"])
@pytest.mark.parametrize("later_due", [False, True])
def test_due_in_grace_starts_under_every_policy(policy: str, later_due: bool) -> None:
    moved, persist = due(policy, IN_GRACE, later_due=later_due)
    assert moved.status is S.RUNNING
    assert moved.reason == "on time: 4m late, within the grace of 5m"
    assert persist.edges == [("due", "pending", "running")]
    # The edge has the effects of start: the claim's times, the first start counted, no longer prepared.
    assert (moved.started_at, moved.heartbeat_at, moved.starts, moved.prepared) == (T0 + IN_GRACE,) * 2 + (1, False)


def test_due_out_of_grace_under_skip_is_skipped_saying_how_late() -> None:
    moved, persist = due("skip", OUT_OF_GRACE)
    assert moved.status is S.SKIPPED
    assert moved.reason is not None
    assert moved.reason.startswith(f"missed by 3h: prepared for {T0.isoformat()}, not started within the grace of 5m")
    assert moved.reason.endswith("; policy skip")
    assert persist.edges == [("due", "pending", "skipped")]
    assert moved.completed_at == T0 + OUT_OF_GRACE  # the effects of skip


def test_due_out_of_grace_under_catch_up_once_is_coalesced_into_a_later_due_occurrence() -> None:
    moved, _ = due("catch_up_once", OUT_OF_GRACE, later_due=True)
    assert moved.status is S.SKIPPED
    assert moved.reason is not None and moved.reason.startswith("missed by 3h")
    assert moved.reason.endswith("policy catch_up_once: the run of a later due occurrence stands for it")


def test_due_out_of_grace_under_catch_up_once_alone_is_the_one_catch_up_run() -> None:
    moved, _ = due("catch_up_once", OUT_OF_GRACE, later_due=False)
    assert moved.status is S.RUNNING
    assert moved.reason is not None and moved.reason.endswith("policy catch_up_once: it is the one catch-up run")


@pytest.mark.parametrize("later_due", [False, True])
def test_due_out_of_grace_under_catch_up_all_runs(later_due: bool) -> None:
    moved, _ = due("catch_up_all", OUT_OF_GRACE, later_due=later_due)
    assert moved.status is S.RUNNING
    assert moved.reason is not None and moved.reason.endswith("policy catch_up_all runs every missed occurrence")


@pytest.mark.parametrize("policy", ["skip", "catch_up_once"])
@pytest.mark.parametrize(
    ("kw", "why"),
    [
        ({"prepared": False, "attempt": 2, "starts": 1}, "work that started before (attempt 2)"),
        ({"prepared": False, "origin": "manual"}, "a manual run"),
        ({"prepared": False, "origin": "catch_up", "catch_up": True}, "a catch_up run"),
    ],
)
def test_due_starts_what_is_not_a_prepared_occurrence_however_late(policy: str, kw: dict[str, Any], why: str) -> None:
    # A retry, a manual run or a planned catch-up run was judged when it was made: it is never missed.
    moved, _ = due(policy, OUT_OF_GRACE, later_due=True, **kw)
    assert moved.status is S.RUNNING
    assert moved.reason is not None and why in moved.reason


def test_the_due_guards_need_the_schedule_and_only_pending_runs_are_due() -> None:
    with pytest.raises(ValueError, match="missed_under_skip guard needs the run's schedule"):
        fire_run(run(), "due", now=T0, persist=Recorder())
    with pytest.raises(InvalidTransition):
        fire_run(run(S.RUNNING), "due", now=T0, persist=Recorder(), schedule=schedule())
    assert RUN_MACHINE.models == []


def test_the_plain_start_stays_unguarded() -> None:
    moved = fire_run(run(), "start", now=T0 + OUT_OF_GRACE, persist=Recorder())
    assert moved.status is S.RUNNING


# ---------------------------------------------------------------------------------------- shutdown

BEGAN = T0 + timedelta(minutes=1)


def stop(
    policy: str, after: timedelta, *, saved: bool = False, hurried: bool = False, in_thread: bool = False
) -> tuple[ScheduledRun, Recorder]:
    persist = Recorder()
    moved = fire_run(
        run(S.RUNNING, started_at=T0, owner="w1", lease_expires_at=T0 + timedelta(seconds=30)),
        "stop",
        now=BEGAN + after,
        persist=persist,
        schedule=schedule(shutdown_policy=policy),
        facts=Stopping(began=BEGAN, checkpoint_saved=saved, hurried=hurried, in_thread=in_thread),
    )
    return moved, persist


def test_checkpoint_and_stop_with_a_checkpoint_pauses_at_once() -> None:
    moved, persist = stop("checkpoint_and_stop", timedelta(0), saved=True)
    assert (moved.status, moved.reason) == (S.PAUSED, "shutdown: checkpointed (policy checkpoint_and_stop)")
    assert persist.edges == [("stop", "running", "paused")]
    assert (moved.owner, moved.lease_expires_at, moved.started_at) == (None, None, None)  # checkpoint's effects


def test_checkpoint_and_stop_without_a_checkpoint_waits_then_requeues() -> None:
    with pytest.raises(GuardRejected, match="waits for a checkpoint until") as err:
        stop("checkpoint_and_stop", timedelta(seconds=9))
    assert err.value.trigger == "stop"
    # The checkpoint wait is 10 s (less than the 30 s shutdown timeout).
    moved, persist = stop("checkpoint_and_stop", timedelta(seconds=10))
    assert (moved.status, moved.reason) == (S.PENDING, "shutdown: no checkpoint saved, requeued")
    assert persist.edges == [("stop", "running", "pending")]


def test_requeue_requeues_at_once() -> None:
    moved, _ = stop("requeue", timedelta(0))
    assert (moved.status, moved.reason) == (S.PENDING, "shutdown: requeued (policy requeue)")
    assert (moved.owner, moved.lease_expires_at, moved.started_at) == (None, None, None)  # requeue's effects


def test_requeue_gives_a_thread_its_shutdown_timeout() -> None:
    with pytest.raises(GuardRejected, match="may finish until"):
        stop("requeue", timedelta(seconds=29), in_thread=True)
    moved, _ = stop("requeue", timedelta(seconds=30), in_thread=True)
    assert moved.status is S.PENDING
    assert moved.reason == (
        "shutdown: still running at the shutdown timeout; its thread ends with the process, and what it did may be "
        "done again"
    )


def test_graceful_finish_keeps_running_until_its_timeout_then_requeues() -> None:
    with pytest.raises(GuardRejected, match=r"graceful_finish: may finish until 2027-03-13T12:01:30\+00:00"):
        stop("graceful_finish", timedelta(seconds=29))
    moved, _ = stop("graceful_finish", timedelta(seconds=30))
    assert (moved.status, moved.reason) == (S.PENDING, "shutdown: still running at the shutdown timeout")


def test_graceful_finish_pauses_nothing_even_with_a_checkpoint() -> None:
    moved, _ = stop("graceful_finish", timedelta(seconds=30), saved=True)
    assert moved.status is S.PENDING


@pytest.mark.parametrize("policy", ["graceful_finish", "checkpoint_and_stop", "requeue"])
def test_a_second_signal_requeues_at_once_unless_a_checkpoint_pauses(policy: str) -> None:
    moved, _ = stop(policy, timedelta(0), hurried=True, in_thread=True)
    assert (moved.status, moved.reason) == (S.PENDING, "shutdown forced: requeued")
    paused, _ = stop(policy, timedelta(0), hurried=True, saved=True)
    assert paused.status is (S.PAUSED if policy == "checkpoint_and_stop" else S.PENDING)


def test_the_stop_guards_need_the_stop_facts_and_only_running_runs_stop() -> None:
    with pytest.raises(ValueError, match="needs the stop's facts"):
        fire_run(run(S.RUNNING), "stop", now=T0, persist=Recorder(), schedule=schedule())
    with pytest.raises(InvalidTransition):
        fire_run(run(S.PENDING), "stop", now=T0, persist=Recorder(), schedule=schedule(), facts=Stopping(began=T0))
    assert RUN_MACHINE.models == []
