"""Judging due runs without writing anything: a schedule's due plan, the ``due`` guards' verdict,
and why a run may not start at all. Shared by the tick, the reconciliation and the stop."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from ..definition import ScheduleDefinition
from ..enums import BreakerState, ConcurrencyPolicy, RunStatus, TriggerType
from ..policies.missed_run import DueFacts, DuePlan, Fate, due_fate, is_prepared, plan_due, prepared_blocked
from ..scheduled_run import ScheduledRun


def plan_schedule(schedule: ScheduleDefinition, now: datetime) -> tuple[DuePlan, datetime | None]:
    """The due plan of a schedule; a schedule seen for the first time gets its anchor and first occurrence."""
    if schedule.next_run_at is not None:
        return plan_due(schedule, schedule.trigger(), now), None
    anchor = schedule.anchor_at or schedule.created_at or now
    trigger = schedule.trigger(anchor)
    if schedule.trigger_type is TriggerType.DELAY:
        first = trigger.next_after(datetime.min.replace(tzinfo=now.tzinfo))
    else:
        first = trigger.next_after(now)
    if first is None:
        return DuePlan(), anchor
    return plan_due(schedule.with_state(next_run_at=first, anchor_at=anchor), trigger, now), anchor


def blocked(
    run: ScheduledRun,
    schedule: ScheduleDefinition | None,
    now: datetime,
    *,
    has_task: Callable[[str], bool],
    worker_id: str,
    current: bool = False,
) -> str | None:
    """Why a due pending run must not start at all, whatever its lateness, or None (lateness is for
    the ``due`` guards).

    ``current``: ``schedule`` is the copy kept since this engine prepared ``run``, unchanged since.
    """
    # Disabling a schedule stops new occurrences (see the tick's materialize); runs that already
    # exist, retries included, still run. An open breaker holds back all but an operator's runs
    # (run-now, a replay the operator forced).
    if schedule is None:
        return "schedule removed"
    if schedule.breaker_state is BreakerState.OPEN and run.origin not in ("manual", "replay"):
        return "circuit breaker open"
    if not has_task(schedule.target):
        return f"task {schedule.target!r} is not registered in worker {worker_id}"
    if is_prepared(run):
        return prepared_blocked(run, schedule, now, current=current)
    return None


def due_facts(pending: list[ScheduledRun]) -> dict[str, DueFacts]:
    """For each run, whether a later occurrence of its schedule is pending and due too (stored rows)."""
    latest: dict[str, datetime] = {}
    for run in pending:
        if run.origin in ("schedule", "catch_up"):
            at = latest.get(run.schedule_id)
            latest[run.schedule_id] = run.intended_run_at if at is None else max(at, run.intended_run_at)
    out: dict[str, DueFacts] = {}
    for run in pending:
        at = latest.get(run.schedule_id)
        out[run.run_id] = DueFacts(later_due=at is not None and at > run.intended_run_at)
    return out


def fate(run: ScheduledRun, schedule: ScheduleDefinition, now: datetime, facts: DueFacts | None) -> RunStatus:
    """Where ``due`` takes ``run``: the pure judgement the machine's ``due`` guards are built from
    (``due_fate``), asked without firing the machine. The write fires ``due`` through the machine with
    the same facts, so its guards decide again, once, with the reason that goes on the row."""
    return RunStatus.RUNNING if due_fate(run, schedule, now, facts) is Fate.START else RunStatus.SKIPPED


def needs_turns(schedule: ScheduleDefinition) -> bool:
    """Whether starting due runs depends on what else of the schedule is running (any policy but allow)."""
    return schedule.concurrency_policy is not ConcurrencyPolicy.ALLOW
