"""Concurrency guard: what each due pending run of a schedule may do while others are in flight."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from ..enums import ConcurrencyPolicy

if TYPE_CHECKING:
    from ..scheduled_run import ScheduledRun


class Action(StrEnum):
    """What the engine does with one due pending run."""

    #: Fire ``start``.
    START = "start"
    #: Leave it pending; it starts when the schedule is free.
    WAIT = "wait"
    #: Fire ``skip`` with the decision's reason.
    SKIP = "skip"
    #: Ask the in-flight runs to stop; it starts once they are gone.
    REPLACE = "replace"


@dataclass(frozen=True, slots=True)
class StartDecision:
    """The action for one run and why."""

    run: ScheduledRun
    action: Action
    reason: str


def decide_starts(policy: ConcurrencyPolicy, due: list[ScheduledRun], in_flight: int) -> list[StartDecision]:
    """Decide every due pending run of one schedule (oldest first) given how many of its runs are running.

    ``forbid``: one at a time; a regular occurrence that finds a run in flight is skipped
    (overlap); a catch-up run, or a run that started before and was cut (``starts``), waits its
    turn. ``allow``: all start. ``enqueue_one``: one runs, one waits, the rest are skipped (queue
    full). ``replace``: the newest due run replaces what is in flight; older due ones are
    skipped as superseded.
    """
    if policy is ConcurrencyPolicy.ALLOW:
        return [StartDecision(r, Action.START, "allow: overlap permitted") for r in due]
    if policy is ConcurrencyPolicy.REPLACE:
        if not due:
            return []
        *older, newest = due
        out = [StartDecision(r, Action.SKIP, "replace: superseded by a newer occurrence") for r in older]
        if in_flight:
            out.append(StartDecision(newest, Action.REPLACE, f"replace: stopping {in_flight} run(s) in flight"))
        else:
            out.append(StartDecision(newest, Action.START, "replace: nothing in flight"))
        return out
    out = []
    busy = in_flight
    waiting = 0
    for run in due:
        if busy == 0:
            out.append(StartDecision(run, Action.START, f"{policy}: nothing in flight"))
            busy = 1
        elif run.catch_up:
            out.append(StartDecision(run, Action.WAIT, f"{policy}: catch-up run waits for the run in flight"))
        elif run.starts:
            out.append(StartDecision(run, Action.WAIT, f"{policy}: a run that was cut waits for the run in flight"))
        elif policy is ConcurrencyPolicy.ENQUEUE_ONE and waiting == 0:
            out.append(StartDecision(run, Action.WAIT, "enqueue_one: waits behind the run in flight"))
            waiting = 1
        elif policy is ConcurrencyPolicy.ENQUEUE_ONE:
            out.append(StartDecision(run, Action.SKIP, "enqueue_one: a run is already waiting (queue full)"))
        else:
            out.append(StartDecision(run, Action.SKIP, "overlap: a run of this schedule is in flight (forbid)"))
    return out
