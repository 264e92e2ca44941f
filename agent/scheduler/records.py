"""Small stored records beside schedules and runs: dead letters, alerts, reconciliation reports, proposals, events."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .enums import AlertStatus, CallerKind, EventStatus


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    """A run that failed for good, kept with everything needed to understand and replay it."""

    id: str
    run_id: str
    schedule_id: str
    schedule_name: str
    intended_run_at: datetime
    attempts: int
    """How many attempts failed."""
    error_type: str | None
    error: str | None
    error_traceback: str | None
    params: dict[str, Any] = field(default_factory=dict)
    checkpoint: Any = None
    created_at: datetime | None = None
    replayed_at: datetime | None = None
    replayed_by: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    """A message for a human, written to the outbox in the same transaction as its cause."""

    id: str
    kind: str
    text: str
    payload: dict[str, Any] = field(default_factory=dict)
    status: AlertStatus = AlertStatus.PENDING
    """Where it is in the outbox machine: pending, sending, sent or undeliverable."""
    attempts: int = 0
    last_error: str | None = None
    created_at: datetime | None = None
    delivered_at: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredReport:
    """A reconciliation report as stored: who made it, when, and its content."""

    id: str
    worker_id: str
    started_at: datetime
    finished_at: datetime | None
    dry_run: bool
    report: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProposalRecord:
    """A proposal as stored: its status, the proposed payload and the validation report."""

    id: str
    name: str
    status: str
    proposed_by: str
    payload: dict[str, Any]
    report: dict[str, Any] | None = None
    decided_by: str | None = None
    """The normalised identity that decided it (``policy`` when the policy did)."""
    decided_via: str | None = None
    """The door the decision came through: registry, telegram, cli, api or policy (a Door value)."""
    decided_at: datetime | None = None
    """When it was decided."""
    decision_reason: str | None = None
    schedule_id: str | None = None
    expires_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class InboxEvent:
    """An event as the inbox holds it: who emitted what and when, and which worker consumed it with what result."""

    id: str
    name: str
    """The event name; event schedules whose expression is this name listen to it."""
    payload: dict[str, Any] = field(default_factory=dict)
    """Handed to each run as ``params["payload"]``."""
    emitted_at: datetime
    emitted_by: str
    """Who emitted it: ``cli:<user>``, ``telegram:<chat>``, an agent's id, or ``host`` (``engine.emit``)."""
    emitted_kind: CallerKind = CallerKind.SYSTEM
    """What its door vouched the emitter is: an agent's event never sets off a high-risk schedule."""
    status: EventStatus = EventStatus.PENDING
    consumed_at: datetime | None = None
    consumed_by: str | None = None
    """The worker id that consumed it."""
    run_ids: tuple[str, ...] = ()
    """The runs its consumption created, one per listening schedule (none is a valid outcome)."""
    reason: str | None = None
    """Why it created no run (or fewer than the schedules listening to its name), else None."""
