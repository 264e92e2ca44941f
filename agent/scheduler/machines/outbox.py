"""The outbox machine: an alert from queued to sent, claimed by one dispatcher at a time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from ..enums import AlertStatus
from ..errors import InvalidSchedule
from ..policies import Decision
from ..policies.outbox import may_reclaim, may_resend
from ..records import Alert
from .binding import Binding, Transition, build_machine, fire, guard

A = AlertStatus

OUTBOX_STATES = [s.value for s in AlertStatus]


class OutboxBinding(Binding[Alert]):
    """A stored alert bound to the machine for one trigger, with what the claim guards read."""

    def __init__(
        self,
        alert: Alert,
        persist: Callable[[Transition], Alert],
        *,
        now: datetime,
        lease: timedelta,
        claimed_at: datetime | None,
        notifier_configured: bool,
    ) -> None:
        super().__init__(alert.id, alert.status.value, persist)
        self.alert = alert
        self.now = now
        self.lease = lease
        self.claimed_at = claimed_at
        self.notifier_configured = notifier_configured


def _may_resend(binding: OutboxBinding) -> Decision:
    return may_resend(binding.notifier_configured)


def _may_reclaim(binding: OutboxBinding) -> Decision:
    return may_reclaim(binding.claimed_at, binding.now, binding.lease)


_may_resend.__name__ = "may_resend"
_may_reclaim.__name__ = "may_reclaim"

#: The outbox's edges. ``claim`` leaves from three states, each with its own guard: a pending
#: alert is free, an undeliverable one waits for a notifier, and a claim (``sending``) is taken
#: over only after its dispatcher's lease ran out (it vanished mid-send).
OUTBOX_TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "claim", "source": A.PENDING.value, "dest": A.SENDING.value},
    {"trigger": "claim", "source": A.UNDELIVERABLE.value, "dest": A.SENDING.value, "conditions": [guard(_may_resend)]},
    {"trigger": "claim", "source": A.SENDING.value, "dest": A.SENDING.value, "conditions": [guard(_may_reclaim)]},
    {"trigger": "deliver", "source": A.SENDING.value, "dest": A.SENT.value},
    {"trigger": "fail", "source": A.SENDING.value, "dest": A.PENDING.value},
    {"trigger": "shelve", "source": A.SENDING.value, "dest": A.UNDELIVERABLE.value},
]

OUTBOX_MACHINE = build_machine("outbox", OUTBOX_STATES, OUTBOX_TRANSITIONS, initial=A.PENDING.value)

#: How a dispatcher settles a claimed alert: the status it asks for, and the trigger that leads there.
SETTLE_TRIGGERS: dict[AlertStatus, str] = {A.SENT: "deliver", A.PENDING: "fail", A.UNDELIVERABLE: "shelve"}


def alert_status(value: object, field: str = "status") -> AlertStatus:
    """``value`` as an AlertStatus; InvalidSchedule naming ``field`` and the allowed values otherwise."""
    if isinstance(value, str) and value in OUTBOX_STATES:
        return AlertStatus(value)
    raise InvalidSchedule(field, value, "one of " + ", ".join(OUTBOX_STATES))


def settle_trigger(status: object) -> str:
    """The trigger that settles a claimed alert as ``status`` (sent, pending or undeliverable)."""
    for wanted, trigger in SETTLE_TRIGGERS.items():
        if status == wanted.value:
            return trigger
    raise InvalidSchedule("status", status, "one of " + ", ".join(SETTLE_TRIGGERS))


def outbox_effects(alert: Alert, trigger: str, now: datetime, error: str | None) -> dict[str, Any]:
    """The alert fields an accepted ``trigger`` sets besides the status."""
    if trigger == "claim":
        return {"attempts": alert.attempts + 1}
    if trigger == "deliver":
        return {"delivered_at": now, "last_error": error}
    if trigger in ("fail", "shelve"):
        return {"last_error": error}
    return {}


def fire_outbox(
    alert: Alert,
    trigger: str,
    *,
    now: datetime,
    persist: Callable[[Alert, Transition, dict[str, Any]], None],
    lease: timedelta = timedelta(0),
    claimed_at: datetime | None = None,
    notifier_configured: bool = True,
    error: str | None = None,
) -> Alert:
    """Move ``alert`` by ``trigger`` and return its new snapshot; ``alert`` itself is never changed.

    ``persist(alert, transition, fields)`` must write the row conditionally on ``alert``'s status
    (and, for a claim, on the claim it saw) and raise StaleState when it lost the race; then
    nothing changes. ``claimed_at`` is when the current claim of a ``sending`` alert was made.
    """

    def write(transition: Transition) -> Alert:
        fields = outbox_effects(alert, transition.trigger, now, error)
        persist(alert, transition, fields)
        return replace(alert, status=AlertStatus(transition.dest), **fields)

    binding = OutboxBinding(
        alert, write, now=now, lease=lease, claimed_at=claimed_at, notifier_configured=notifier_configured
    )
    return fire(OUTBOX_MACHINE, binding, trigger)
