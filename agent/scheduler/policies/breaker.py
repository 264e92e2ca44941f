"""Breaker guards: when consecutive failures trip a schedule's breaker and when a trial run may probe it."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from ..enums import BreakerState
from .decision import Decision

if TYPE_CHECKING:
    from ..definition import ScheduleDefinition


def may_trip(schedule: ScheduleDefinition, now: datetime) -> Decision:
    """Guard of ``closed -> open``: the schedule's consecutive failures reached its threshold."""
    failures, threshold = schedule.consecutive_failures, schedule.breaker_threshold
    if failures < threshold:
        return Decision(False, f"{failures} consecutive failures, threshold {threshold}")
    return Decision(True, f"{failures} consecutive failures reached the threshold of {threshold}")


def may_probe(schedule: ScheduleDefinition, now: datetime) -> Decision:
    """Guard of ``open -> half_open``: a cooldown is set and has elapsed since the breaker opened."""
    cooldown = schedule.breaker_cooldown
    if cooldown is None:
        return Decision(False, "no cooldown: the breaker stays open until an operator resets it")
    opened = schedule.breaker_opened_at
    if opened is not None and now < opened + cooldown:
        return Decision(False, f"cooldown until {(opened + cooldown).isoformat()}")
    return Decision(True, f"cooldown of {cooldown} elapsed: one trial run allowed")


def may_replay(schedule: ScheduleDefinition, now: datetime) -> Decision:
    """Guard of ``dead_lettered -> pending``: not into an open breaker (an operator may force it)."""
    if schedule.breaker_state is BreakerState.OPEN:
        return Decision(
            False,
            f"the circuit breaker of {schedule.name} is open: reset it first "
            f"(python -m agent.scheduler reset {schedule.name}) or force the replay",
        )
    return Decision(True, "replayed from the dead-letter queue")
