"""Outbox guards: which alerts a dispatcher may claim, so that one alert is sent by one dispatcher at a time."""

from __future__ import annotations

from datetime import datetime, timedelta

from ..enums import AlertStatus
from .decision import Decision


def claimable_statuses(notifier_configured: bool) -> tuple[AlertStatus, ...]:
    """The statuses a claim may start from without a lease check (a ``sending`` claim also needs one)."""
    if notifier_configured:
        return (AlertStatus.PENDING, AlertStatus.UNDELIVERABLE)
    return (AlertStatus.PENDING,)


def claim_expires_before(now: datetime, lease: timedelta) -> datetime:
    """Claims made before this instant have outlived ``lease``: their dispatcher is presumed gone."""
    return now - lease


def may_resend(notifier_configured: bool) -> Decision:
    """Guard of ``undeliverable -> sending``: only a dispatcher with a notifier takes an undeliverable alert.

    Without one, the alert was already logged and marked when it was due; taking it again would
    only log it again.
    """
    if not notifier_configured:
        return Decision(False, "no notifier configured: the alert stays undeliverable")
    return Decision(True, "a notifier is configured now")


def may_reclaim(claimed_at: datetime | None, now: datetime, lease: timedelta) -> Decision:
    """Guard of ``sending -> sending``: a claim is taken over only once it is older than ``lease``."""
    if claimed_at is None:
        return Decision(False, "the time of the current claim is unknown")
    if claimed_at >= claim_expires_before(now, lease):
        return Decision(False, f"claimed at {claimed_at.isoformat()}, its lease of {lease} has not run out")
    return Decision(True, f"the claim of {claimed_at.isoformat()} outlived its lease of {lease}")
