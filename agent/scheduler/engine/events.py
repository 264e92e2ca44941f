"""Consuming the event inbox (database thread): each pending event is taken by exactly one worker, and its runs
are created in the same transaction, one per enabled event schedule listening to its name."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from ..definition import ScheduleDefinition
from ..enums import BreakerState, CallerKind, RiskTier, TriggerType
from ..records import InboxEvent
from ..store import EngineStore

log = logging.getLogger(__name__)

#: Most events one tick consumes; when it took that many, the next tick follows at once for the rest.
EVENTS_PER_TICK = 100
#: The reason recorded on an event whose name no event schedule has (enabled or not).
NO_LISTENER = "no schedule listens"


@dataclass(frozen=True, slots=True)
class Consumed:
    """What one pass over the inbox did."""

    events: int = 0
    """Events this worker consumed (others may have been taken by another worker meanwhile)."""
    runs: int = 0
    """Runs created for them."""
    more: bool = False
    """The pass took a full batch: more events may be waiting."""


def _agent_may_not_start(schedule: ScheduleDefinition, task_tier: Callable[[str], RiskTier | None]) -> str | None:
    if schedule.risk_tier is RiskTier.HIGH:
        return "high-risk"
    tier = task_tier(schedule.target)
    if tier is None:
        return f"task {schedule.target} unknown to this worker, its risk unknown"
    return "high-risk task" if tier is RiskTier.HIGH else None


def listeners(
    event: InboxEvent,
    schedules: Sequence[ScheduleDefinition],
    task_tier: Callable[[str], RiskTier | None],
) -> tuple[list[ScheduleDefinition], str | None]:
    """The event schedules that get a run for ``event``, and why any other on its name does not (None: all do).

    A schedule listens when its expression is the event's name; it gets a run when it is enabled,
    its breaker is not open, it existed when the event was emitted (events are not applied
    retroactively to schedules created after them), and, for an agent's event, neither the
    schedule nor its task (``task_tier(target)``) is high-risk: only a human sets off high-risk
    work. A task this worker does not know (``task_tier`` gives None) may be high-risk, so an
    agent's event does not start it either. That is judged here, when the event is consumed,
    whatever the schedule was when it was emitted (disabled then, or its tier raised since).
    """
    named = [s for s in schedules if s.trigger_type is TriggerType.EVENT and s.expression == event.name]
    if not named:
        return [], NO_LISTENER
    hearing: list[ScheduleDefinition] = []
    held: list[str] = []
    for s in named:
        if not s.enabled:
            held.append(f"{s.name} (disabled)")
        elif s.breaker_state is BreakerState.OPEN:
            held.append(f"{s.name} (breaker open)")
        elif s.created_at is not None and s.created_at > event.emitted_at:
            held.append(f"{s.name} (created after the event)")
        elif event.emitted_kind is CallerKind.AGENT and (why := _agent_may_not_start(s, task_tier)):
            held.append(f"{s.name} ({why}: an agent's event does not start it)")
        else:
            hearing.append(s)
    return hearing, ("listening but not run: " + ", ".join(held)) if held else None


def consume_events(
    store: EngineStore,
    *,
    now: datetime,
    worker_id: str,
    limit: int = EVENTS_PER_TICK,
    task_tier: Callable[[str], RiskTier | None],
) -> Consumed:
    """Take the pending events (oldest first) and create their runs; call inside the tick's transaction.

    Each take is a conditional UPDATE (pending -> consumed): of two workers sharing a database only
    one moves a given event, and only that one creates its runs, in the same transaction.
    """
    pending = store.pending_events(limit=limit)
    if not pending:
        return Consumed()
    schedules = store.list(trigger_type=TriggerType.EVENT)
    taken = runs = 0
    for event in pending:
        if not store.consume_event(event.id, worker_id=worker_id, now=now):
            log.debug("event %s was consumed by another worker first", event.id)
            continue
        taken += 1
        hearing, reason = listeners(event, schedules, task_tier)
        run_ids: list[str] = []
        for schedule in hearing:
            run = store.create_run(
                schedule,
                now,
                occurrence_key=f"event:{event.id}",
                origin="event",
                params={**schedule.params, "event": event.name, "payload": event.payload},
                reason=f"event {event.name}",
            )
            if run is not None:
                run_ids.append(run.run_id)
        store.record_event_runs(event.id, run_ids=run_ids, reason=reason)
        runs += len(run_ids)
        log.info(
            "event %s (%s, by %s): %d run(s)%s",
            event.name,
            event.id,
            event.emitted_by,
            len(run_ids),
            f"; {reason}" if reason else "",
        )
    return Consumed(events=taken, runs=runs, more=len(pending) >= limit)
