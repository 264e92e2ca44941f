"""Missed-run policy: what becomes of occurrences that were due longer ago than the schedule's grace.

A crash, a sleeping laptop and a stalled loop all look the same from here: occurrences that
were due but are later than ``grace`` by the time anyone looks. The policy acts twice:

- Planning (``plan_due``, ``decide_missed``): when a schedule's occurrences fall due, they are
  split into on-time ones and missed ones and turned into rows. Missed ones are counted, never
  walked, so a week of a per-second schedule becomes a few rows: one skipped row standing for
  them all (skip), one catch-up run (catch_up_once), or up to the catch-up limit of runs
  (catch_up_all).
- At the start (``due_fate`` and the guards ``missed_under_skip``, ``coalesced_into_later`` and
  ``starts_when_due``): the run machine's ``due`` trigger, fired on every pending run whose time
  has come, has one edge per fate and these guards choose it. A run prepared ahead of its time
  and found later than the grace (its worker stopped or stalled in between) is a missed
  occurrence like any other: skipped under skip; under catch_up_once skipped as coalesced into
  a later due occurrence of the schedule when there is one, else it is the one catch-up run;
  run under catch_up_all. Every other run starts: its occurrence was judged when it was planned,
  or it is work that started before (a retry, a requeue, a replay), or a manual or event run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from ..enums import MissedRunPolicy, TriggerType
from .decision import Decision

if TYPE_CHECKING:
    from ..definition import ScheduleDefinition
    from ..scheduled_run import ScheduledRun
    from ..triggers import Trigger

#: One microsecond: the resolution of instants, used to make an inclusive bound exclusive.
_TICK = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Missed:
    """The occurrences that were due later than the grace: how many, and the latest few."""

    count: int
    first: datetime
    """The oldest missed occurrence."""
    latest: list[datetime]
    """The most recent missed occurrences (at most the catch-up limit), oldest first."""


@dataclass(frozen=True, slots=True)
class PlannedRun:
    """A run to materialize: when it was meant to start and how it came to be."""

    intended_at: datetime
    catch_up: bool = False
    coalesced_from: int = 1
    skip_reason: str | None = None
    """When set, the run is recorded as skipped with this reason instead of running."""


@dataclass(frozen=True, slots=True)
class MissedDecision:
    """What the policy does with the missed occurrences, and why."""

    runs: list[PlannedRun]
    reason: str
    detected: int = 0
    """Missed occurrences found."""
    caught_up: int = 0
    """Catch-up runs created for them."""
    skipped: int = 0
    """Missed occurrences recorded as skipped."""
    coalesced: int = 0
    """Missed occurrences folded into a catch-up run that stands for them."""
    warning: str | None = None


@dataclass(frozen=True, slots=True)
class DuePlan:
    """Everything a schedule's due occurrences turn into at ``now``."""

    runs: list[PlannedRun] = field(default_factory=list)
    next_run_at: datetime | None = None
    missed: MissedDecision | None = None


def decide_missed(schedule: ScheduleDefinition, missed: Missed, now: datetime) -> MissedDecision:
    """Apply ``schedule.missed_run_policy`` to ``missed``; every occurrence ends in a run or a count."""
    n = missed.count
    span = f"{n} occurrence(s) missed from {missed.first.isoformat()} to {missed.latest[-1].isoformat()}"
    policy = schedule.missed_run_policy
    if policy is MissedRunPolicy.SKIP:
        reason = f"missed: {span}; policy skip"
        skip = PlannedRun(missed.latest[-1], coalesced_from=n, skip_reason=reason)
        return MissedDecision([skip], reason, detected=n, skipped=n)
    if policy is MissedRunPolicy.CATCH_UP_ONCE:
        reason = f"catch-up: {span}; policy catch_up_once runs the latest once"
        run = PlannedRun(missed.latest[-1], catch_up=True, coalesced_from=n)
        return MissedDecision([run], reason, detected=n, caught_up=1, coalesced=n - 1)
    limit = schedule.catch_up_limit
    runs = [PlannedRun(t, catch_up=True) for t in missed.latest[-limit:]]
    reason = f"catch-up: {span}; policy catch_up_all runs {len(runs)}"
    if n <= limit:
        return MissedDecision(runs, reason, detected=n, caught_up=len(runs))
    rest = n - len(runs)
    warning = f"{rest} missed occurrence(s) beyond the catch-up limit of {limit} were skipped"
    skip = PlannedRun(missed.first, coalesced_from=rest, skip_reason=f"missed: {warning}")
    return MissedDecision(
        [skip, *runs], f"{reason}; {warning}", detected=n, caught_up=len(runs), skipped=rest, warning=warning
    )


def plan_due(schedule: ScheduleDefinition, trigger: Trigger, now: datetime) -> DuePlan:
    """The runs that ``schedule``'s occurrences due by ``now`` become, and its next occurrence.

    Occurrences from ``next_run_at`` up to ``now`` are due. Those later than ``grace`` are
    missed and go to :func:`decide_missed`; the rest run as scheduled.
    """
    first = schedule.next_run_at
    if first is None or first > now:
        return DuePlan(next_run_at=first)
    cutoff = now - schedule.grace
    runs: list[PlannedRun] = []
    decision = None
    if first < cutoff:
        count = 1 + trigger.count(first, cutoff - _TICK)
        latest = trigger.latest(first, cutoff - _TICK, schedule.catch_up_limit) or [first]
        if len(latest) < schedule.catch_up_limit and latest[0] != first:
            latest = [first, *latest]
        decision = decide_missed(schedule, Missed(count, first, latest), now)
        runs.extend(decision.runs)
        cursor = trigger.next_after(cutoff - _TICK)
    else:
        cursor = first
    # Walk the on-time occurrences (within the grace, so few); the first one past now is next.
    on_time: list[PlannedRun] = []
    while cursor is not None and cursor <= now:
        on_time.append(PlannedRun(cursor))
        cursor = trigger.next_after(cursor)
    if decision is not None and on_time and schedule.missed_run_policy is MissedRunPolicy.CATCH_UP_ONCE:
        decision = _coalesce_into_latest(decision, on_time[-1].intended_at, len(on_time))
        return DuePlan(runs=decision.runs, next_run_at=cursor, missed=decision)
    return DuePlan(runs=runs + on_time, next_run_at=cursor, missed=decision)


def _coalesce_into_latest(decision: MissedDecision, latest: datetime, on_time: int) -> MissedDecision:
    """catch_up_once with occurrences still within the grace: one run of the latest due stands for all.

    Running the latest missed one and then the on-time ones would run the schedule several
    times over (or skip the newest as an overlap); every overdue occurrence, in grace or past
    it, becomes one run of the newest.
    """
    n = decision.detected
    run = PlannedRun(latest, catch_up=True, coalesced_from=n + on_time)
    reason = f"{decision.reason}: {latest.isoformat()}, standing for {n + on_time} due occurrence(s)"
    return MissedDecision([run], reason, detected=n, caught_up=1, coalesced=n)


class Fate(StrEnum):
    """What becomes of a pending run whose time has come, as far as the missed-run policy goes."""

    #: It starts (the concurrency policy may still make it wait).
    START = "start"
    #: It is skipped: a missed occurrence under the skip policy.
    SKIP = "skip"
    #: It is skipped: under catch_up_once, a later due occurrence of the schedule runs for it.
    COALESCE = "coalesce"


@dataclass(frozen=True, slots=True)
class DueFacts:
    """What the engine passes to the ``due`` guards besides the run, its schedule and now."""

    later_due: bool = False
    """A later occurrence of the same schedule is pending and due too, so it can stand for this one."""


def describe_span(delta: timedelta) -> str:
    """A duration as ``3h``, ``2m30s`` or ``0.5s``: how late a run is, in reasons."""
    seconds = delta.total_seconds()
    if seconds < 1:
        return f"{seconds:g}s"
    whole, parts = int(seconds), []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return "".join(parts)


def _fate_of(schedule: ScheduleDefinition, intended_at: datetime, now: datetime, *, later_due: bool) -> Fate:
    """The fate of an occurrence prepared for ``intended_at`` and not started by ``now`` (``_fate_words``: why)."""
    if now - intended_at <= schedule.grace:
        return Fate.START
    policy = schedule.missed_run_policy
    if policy is MissedRunPolicy.SKIP:
        return Fate.SKIP
    if policy is MissedRunPolicy.CATCH_UP_ONCE and later_due:
        return Fate.COALESCE
    return Fate.START


def _fate_words(schedule: ScheduleDefinition, intended_at: datetime, now: datetime, *, later_due: bool) -> str:
    """Why ``_fate_of`` says what it says, for the row's reason."""
    late = now - intended_at
    if late <= schedule.grace:
        return f"on time: {describe_span(late)} late, within the grace of {describe_span(schedule.grace)}"
    missed = (
        f"missed by {describe_span(late)}: prepared for {intended_at.isoformat()}, not started within the grace "
        f"of {describe_span(schedule.grace)} (its worker stopped or stalled)"
    )
    policy = schedule.missed_run_policy
    if policy is MissedRunPolicy.SKIP:
        return f"{missed}; policy skip"
    if policy is MissedRunPolicy.CATCH_UP_ONCE and later_due:
        return f"{missed}; policy catch_up_once: the run of a later due occurrence stands for it"
    if policy is MissedRunPolicy.CATCH_UP_ONCE:
        return f"{missed}; policy catch_up_once: it is the one catch-up run"
    return f"{missed}; policy catch_up_all runs every missed occurrence"


def due_fate(run: ScheduledRun, schedule: ScheduleDefinition, now: datetime, facts: DueFacts | None = None) -> Fate:
    """The fate of the pending ``run`` whose time has come at ``now`` (module docstring); ``due_reason``: why."""
    if not is_prepared(run):
        return Fate.START
    return _fate_of(schedule, run.intended_run_at, now, later_due=(facts or DueFacts()).later_due)


def due_reason(run: ScheduledRun, schedule: ScheduleDefinition, now: datetime, facts: DueFacts | None = None) -> str:
    """Why ``due_fate`` gives the fate it gives, in the words that go on the row."""
    if not is_prepared(run):
        if run.starts or run.attempt > 1:
            return f"due: work that started before (attempt {run.attempt}), never a missed occurrence"
        return f"due: a {run.origin} run, its occurrence judged when it was planned"
    return _fate_words(schedule, run.intended_run_at, now, later_due=(facts or DueFacts()).later_due)


def _due_guard(
    wanted: Fate, run: ScheduledRun, schedule: ScheduleDefinition, now: datetime, facts: DueFacts | None
) -> Decision:
    # The words are built only for the edge taken: of the three guards of ``due`` exactly one allows.
    fate = due_fate(run, schedule, now, facts)
    if fate is not wanted:
        return Decision(False, f"its fate is {fate.value}, not {wanted.value}")
    return Decision(True, due_reason(run, schedule, now, facts))


def missed_under_skip(
    run: ScheduledRun, schedule: ScheduleDefinition, now: datetime, facts: DueFacts | None = None
) -> Decision:
    """Guard of ``pending -> skipped`` on ``due``: a prepared run found later than the grace, policy skip."""
    return _due_guard(Fate.SKIP, run, schedule, now, facts)


def coalesced_into_later(
    run: ScheduledRun, schedule: ScheduleDefinition, now: datetime, facts: DueFacts | None = None
) -> Decision:
    """Guard of ``pending -> skipped`` on ``due``: catch_up_once, and a later due occurrence stands for it."""
    return _due_guard(Fate.COALESCE, run, schedule, now, facts)


def starts_when_due(
    run: ScheduledRun, schedule: ScheduleDefinition, now: datetime, facts: DueFacts | None = None
) -> Decision:
    """Guard of ``pending -> running`` on ``due``: on time, a catch-up the policy runs, or not an occurrence
    that could be missed at all."""
    return _due_guard(Fate.START, run, schedule, now, facts)


def decide_prepared(schedule: ScheduleDefinition, intended_at: datetime, now: datetime) -> str | None:
    """A run prepared ahead of ``intended_at`` and still waiting at ``now``: None to run it, else why it is skipped.

    The fate ``due_fate`` gives, with a later occurrence due when ``schedule.next_run_at`` is not
    after ``now`` (the schedule as it was before that occurrence was planned).
    """
    later = schedule.next_run_at
    later_due = later is not None and later <= now
    if _fate_of(schedule, intended_at, now, later_due=later_due) is Fate.START:
        return None
    return _fate_words(schedule, intended_at, now, later_due=later_due)


def is_prepared(run: ScheduledRun) -> bool:
    """Whether ``run`` was stored ahead of its time and has never started: the stored fact, not a guess
    from timestamps. A retry, a requeue or a replay of a run that once started is not prepared."""
    return run.prepared


#: Why a run prepared ahead of its time is skipped when its schedule's new trigger no longer has it.
CHANGED_BEFORE = "schedule changed before this run's time: no longer one of its occurrences"


def fired_reason(schedule: ScheduleDefinition, at: datetime) -> str | None:
    """Why materializing the occurrence at ``at`` disables ``schedule``: a delay fires once."""
    if schedule.trigger_type is not TriggerType.DELAY:
        return None
    return f"delay fired at {at.astimezone(UTC).isoformat()}"


def fired_by(schedule: ScheduleDefinition, at: datetime) -> bool:
    """Whether ``schedule`` is disabled by the firing of its occurrence at ``at`` (a delay, prepared or run)."""
    reason = fired_reason(schedule, at)
    return not schedule.enabled and reason is not None and schedule.disabled_reason == reason


def prepared_blocked(run: ScheduledRun, schedule: ScheduleDefinition, now: datetime, *, current: bool) -> str | None:
    """Why a run prepared ahead of its time must not start at ``now`` whatever its lateness, or None.

    Disabling or changing a schedule after its next run was prepared takes that run back. A delay
    disabled by the very firing that prepared this run is not disabled before its time: that is
    how a delay fires (anyone else's disable replaces the reason). How late it is, is for the
    ``due`` guards (``due_fate``).
    ``current``: ``schedule`` is known unchanged since the run was prepared.
    """
    if not schedule.enabled and not fired_by(schedule, run.intended_run_at):
        return "schedule disabled before this run's time"
    # The schedule may have been edited since: is the run's time still one of its occurrences?
    if not current and schedule.trigger().next_after(run.intended_run_at - _TICK) != run.intended_run_at:
        return CHANGED_BEFORE
    return None
