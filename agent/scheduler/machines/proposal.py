"""The proposal machine: an agent's schedule proposal from submission to an active schedule."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from ..enums import ProposalStatus
from ..records import ProposalRecord
from .binding import Binding, Transition, build_machine, fire

P = ProposalStatus

PROPOSAL_STATES = [s.value for s in ProposalStatus]

#: The proposal's edges; ``approve`` straight from submitted is the policy's auto-approval.
PROPOSAL_TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "reject", "source": [P.SUBMITTED.value, P.AWAITING_APPROVAL.value], "dest": P.REJECTED.value},
    {"trigger": "hold", "source": P.SUBMITTED.value, "dest": P.AWAITING_APPROVAL.value},
    {"trigger": "approve", "source": [P.SUBMITTED.value, P.AWAITING_APPROVAL.value], "dest": P.APPROVED.value},
    {"trigger": "activate", "source": P.APPROVED.value, "dest": P.ACTIVE.value},
    {"trigger": "expire", "source": P.AWAITING_APPROVAL.value, "dest": P.EXPIRED.value},
]

PROPOSAL_MACHINE = build_machine("proposal", PROPOSAL_STATES, PROPOSAL_TRANSITIONS, initial=P.SUBMITTED.value)


class ProposalBinding(Binding[ProposalRecord]):
    """A stored proposal bound to the machine for one trigger."""

    def __init__(self, record: ProposalRecord, persist: Callable[[Transition], ProposalRecord]) -> None:
        super().__init__(record.id, record.status, persist)
        self.record = record


def fire_proposal(
    record: ProposalRecord,
    trigger: str,
    *,
    now: datetime,
    persist: Callable[[ProposalRecord, Transition, dict[str, Any]], None],
    changes: dict[str, Any] | None = None,
) -> ProposalRecord:
    """Move a proposal by ``trigger``; ``persist`` writes conditionally on its current status."""

    def write(transition: Transition) -> ProposalRecord:
        fields = dict(changes or {})
        persist(record, transition, fields)
        return replace(record, status=transition.dest, updated_at=now, **fields)

    return fire(PROPOSAL_MACHINE, ProposalBinding(record, write), trigger)
