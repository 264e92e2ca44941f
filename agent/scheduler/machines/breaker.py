"""The breaker machine: a schedule's circuit breaker, closed -> open -> half_open -> closed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from ..definition import ScheduleDefinition
from ..enums import BreakerState
from ..policies import Decision
from ..policies.breaker import may_probe, may_trip
from .binding import Binding, Transition, build_machine, fire, guard

B = BreakerState

BREAKER_STATES = [s.value for s in BreakerState]


class BreakerBinding(Binding[ScheduleDefinition]):
    """A schedule's breaker bound to the machine for one trigger."""

    def __init__(
        self, schedule: ScheduleDefinition, now: datetime, persist: Callable[[Transition], ScheduleDefinition]
    ) -> None:
        super().__init__(schedule.id, schedule.breaker_state.value, persist)
        self.schedule = schedule
        self.now = now


def _breaker_guard(policy: Callable[[ScheduleDefinition, datetime], Decision]) -> Any:
    def check(binding: BreakerBinding) -> Decision:
        return policy(binding.schedule, binding.now)

    check.__name__ = policy.__name__
    return guard(check)


#: The breaker's edges. ``reset`` is the operator's way out of open (and of half_open).
BREAKER_TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "trip", "source": B.CLOSED.value, "dest": B.OPEN.value, "conditions": [_breaker_guard(may_trip)]},
    {"trigger": "probe", "source": B.OPEN.value, "dest": B.HALF_OPEN.value, "conditions": [_breaker_guard(may_probe)]},
    {"trigger": "close", "source": B.HALF_OPEN.value, "dest": B.CLOSED.value},
    {"trigger": "reopen", "source": B.HALF_OPEN.value, "dest": B.OPEN.value},
    {"trigger": "reset", "source": [B.OPEN.value, B.HALF_OPEN.value], "dest": B.CLOSED.value},
]

BREAKER_MACHINE = build_machine("breaker", BREAKER_STATES, BREAKER_TRANSITIONS, initial=B.CLOSED.value)


#: The schedule field counting its consecutive terminal failures; each failure adds one to it.
FAILURE_COUNT = "consecutive_failures"


def success_effects() -> dict[str, Any]:
    """The schedule fields a run's success sets: the consecutive failures count from zero again."""
    return {FAILURE_COUNT: 0}


def breaker_effects(trigger: str, now: datetime) -> dict[str, Any]:
    """The schedule fields an accepted breaker ``trigger`` sets besides the breaker state."""
    if trigger in ("trip", "reopen"):
        return {"breaker_opened_at": now}
    if trigger == "close":
        return {"breaker_opened_at": None, **success_effects()}
    # After an open period the schedule starts again from now: what fell due while it was open
    # was held back on purpose, not missed, so its next occurrence is computed afresh.
    if trigger == "reset":
        return {"breaker_opened_at": None, **success_effects(), "next_run_at": None}
    if trigger == "probe":
        return {"next_run_at": None}
    return {}


def fire_breaker(
    schedule: ScheduleDefinition,
    trigger: str,
    *,
    now: datetime,
    persist: Callable[[ScheduleDefinition, Transition, dict[str, Any]], None],
) -> ScheduleDefinition:
    """Move ``schedule``'s breaker by ``trigger``; ``persist`` writes conditionally on the old state."""

    def write(transition: Transition) -> ScheduleDefinition:
        fields = breaker_effects(transition.trigger, now)
        persist(schedule, transition, fields)
        return replace(schedule, breaker_state=BreakerState(transition.dest), updated_at=now, **fields)

    return fire(BREAKER_MACHINE, BreakerBinding(schedule, now, write), trigger)
