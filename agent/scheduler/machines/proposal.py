"""The proposal machine: an agent's schedule proposal from submission to an active schedule."""

from __future__ import annotations

from typing import Any

from ..enums import ProposalStatus
from .binding import build_machine

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
