"""The schedules' circuit breakers: counting outcomes, trip, reopen, close and probe (database thread).

Every method runs inside the caller's transaction on the engine's database thread and returns
what the tick needs to know (when the next cooldown ends, whether a probe happened); nothing is
remembered here between calls.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime

from ..definition import ScheduleDefinition
from ..enums import BreakerState
from ..errors import GuardRejected, StaleState
from ..store import EngineStore

log = logging.getLogger(__name__)


class Breakers:
    """Fires triggers on the breaker machine of each schedule, through the store."""

    def __init__(self, store: EngineStore) -> None:
        self.store = store

    def succeeded(self, schedule_ids: Iterable[str], now: datetime) -> None:
        """A success resets the breaker's count; a half-open breaker's trial succeeded: close it."""
        for schedule in self.store.reset_failures(schedule_ids):
            if schedule.breaker_state is BreakerState.HALF_OPEN:
                self.close(schedule, now)

    def failed(self, schedule_id: str, *, now: datetime, error: str | None = None) -> datetime | None:
        """A terminal failure adds one to the count and may trip (or reopen) the breaker.

        Returns when the opened breaker's cooldown ends (its probe is due), or None.
        """
        schedule = self.store.record_outcome(schedule_id, failed=True)
        if schedule is None or schedule.breaker_state not in (BreakerState.CLOSED, BreakerState.HALF_OPEN):
            return None
        trigger = "trip" if schedule.breaker_state is BreakerState.CLOSED else "reopen"
        try:
            opened = self.store.transition_breaker(schedule, trigger, now=now)
        except GuardRejected as exc:
            log.debug("breaker of %s stays %s: %s", schedule.name, schedule.breaker_state, exc.reason)
            return None
        except StaleState as exc:
            log.info("breaker of %s moved elsewhere: %s", schedule.name, exc)
            return None
        # Written in the same transaction as the trip: no open breaker without its alert.
        self.store.add_alert(
            "breaker_opened",
            breaker_text(opened, error),
            {"schedule": opened.name, "failures": opened.consecutive_failures, "last_error": error},
        )
        log.warning("breaker of %s opened after %d consecutive failures", opened.name, opened.consecutive_failures)
        if opened.breaker_cooldown is not None and opened.breaker_opened_at is not None:
            return opened.breaker_opened_at + opened.breaker_cooldown
        return None

    def close(self, schedule: ScheduleDefinition, now: datetime) -> None:
        try:
            self.store.transition_breaker(schedule, "close", now=now)
            log.info("breaker of %s closed: the trial run succeeded", schedule.name)
        except (GuardRejected, StaleState) as exc:
            log.info("breaker of %s not closed: %s", schedule.name, exc)

    def probe(self, now: datetime) -> tuple[datetime | None, bool]:
        """Fire ``probe`` on open breakers (the guard waits for the cooldown).

        Returns the next cooldown end, and whether a breaker half-opened (its schedule's next
        occurrence is then computed afresh by a full scan).
        """
        waiting = []
        probed = False
        for schedule in self.store.open_breakers():
            if schedule.breaker_cooldown is None:
                continue
            try:
                self.store.transition_breaker(schedule, "probe", now=now)
                log.info("breaker of %s half-open: one trial run allowed", schedule.name)
                probed = True
                waiting.append(now)
            except GuardRejected:
                if schedule.breaker_opened_at is not None:
                    waiting.append(schedule.breaker_opened_at + schedule.breaker_cooldown)
            except StaleState:
                pass
        return (min(waiting) if waiting else None), probed

    def half_open_after_restart(self, now: datetime) -> int:
        """At start, every open breaker whose cooldown passed while the worker was down half-opens."""
        count = 0
        for schedule in self.store.open_breakers():  # by index: not every schedule read and mapped
            if schedule.breaker_cooldown is not None:
                try:
                    self.store.transition_breaker(schedule, "probe", now=now)
                    count += 1
                except (GuardRejected, StaleState):
                    pass
        return count


def breaker_text(schedule: ScheduleDefinition, error: str | None) -> str:
    how = (
        f"it half-opens for one trial run after {schedule.breaker_cooldown}"
        if schedule.breaker_cooldown
        else f"reset it with: python -m agent.scheduler reset {schedule.name}"
    )
    return (
        f"Circuit breaker OPEN for {schedule.name}: {schedule.consecutive_failures} consecutive failed runs "
        f"(last error: {error or 'unknown'}). No new runs until it closes; {how}."
    )
