"""Export every machine as a Mermaid state diagram, built from the same transition tables the code runs."""

from __future__ import annotations

from typing import Any

from transitions.extensions import GraphMachine

from .breaker import BREAKER_STATES, BREAKER_TRANSITIONS
from .outbox import OUTBOX_STATES, OUTBOX_TRANSITIONS
from .proposal import PROPOSAL_STATES, PROPOSAL_TRANSITIONS
from .run_lifecycle import RUN_STATES, RUN_TRANSITIONS

#: name -> (states, transitions, initial state) of every machine.
MACHINES: dict[str, tuple[list[str], list[dict[str, Any]], str]] = {
    "run": (RUN_STATES, RUN_TRANSITIONS, "pending"),
    "breaker": (BREAKER_STATES, BREAKER_TRANSITIONS, "closed"),
    "proposal": (PROPOSAL_STATES, PROPOSAL_TRANSITIONS, "submitted"),
    "outbox": (OUTBOX_STATES, OUTBOX_TRANSITIONS, "pending"),
}


class _Model:
    """A throwaway model: GraphMachine needs one to draw."""


def mermaid(name: str) -> str:
    """The Mermaid ``stateDiagram-v2`` text of machine ``name`` (a key of MACHINES), guards shown."""
    if name not in MACHINES:
        raise ValueError(f"unknown machine {name!r}; one of: {', '.join(MACHINES)}")
    states, transitions, initial = MACHINES[name]
    model = _Model()
    GraphMachine(
        model=model,
        states=states,
        transitions=transitions,
        initial=initial,
        auto_transitions=False,
        graph_engine="mermaid",
        show_conditions=True,
        title=name,
    )
    text: str = model.get_graph().draw(None)  # type: ignore[attr-defined]
    # Styling lines only colour the throwaway model's current state; a diagram of the rules omits them.
    lines = [ln.rstrip() for ln in text.splitlines() if not ln.strip().startswith(("classDef ", "Class "))]
    return "\n".join(ln for ln in lines if ln.strip()) + "\n"


def all_mermaid() -> dict[str, str]:
    """Every machine's diagram, by name."""
    return {name: mermaid(name) for name in MACHINES}


def state_machines_markdown() -> str:
    """The text of docs/state-machines.md: every machine's diagram, from the tables the code runs."""
    parts = [
        "# State machines",
        "",
        "Generated from `agent/scheduler/machines/` by `python -m agent.scheduler diagram`; a test keeps",
        "this file equal to the code. Guards are shown in brackets: they are the policies of",
        "`agent/scheduler/policies/`. Where one trigger has several guarded edges from one state, they",
        "are tried in the order listed and the first whose guard passes wins: `due` carries the missed-run",
        "policy, `stop` the shutdown policy. A transition is applied only if its conditional write",
        "matched one row, so the state on the row is always a state reached through these edges.",
        "",
    ]
    titles = {
        "run": "Run: one occurrence of a schedule",
        "breaker": "Breaker: a schedule's circuit breaker",
        "proposal": "Proposal: an agent's schedule on its way to activation",
        "outbox": "Outbox: an alert on its way to a human",
    }
    for name, text in all_mermaid().items():
        parts += [f"## {titles[name]}", "", "```mermaid", text.rstrip("\n"), "```", ""]
    return "\n".join(parts)
