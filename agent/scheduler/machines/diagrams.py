"""Export every machine as a Mermaid state diagram, built from the same transition tables the code runs."""

from __future__ import annotations

from typing import Any

from transitions.extensions import GraphMachine

from .breaker import BREAKER_STATES, BREAKER_TRANSITIONS
from .proposal import PROPOSAL_STATES, PROPOSAL_TRANSITIONS
from .run_lifecycle import RUN_STATES, RUN_TRANSITIONS

#: name -> (states, transitions, initial state) of every machine.
MACHINES: dict[str, tuple[list[str], list[dict[str, Any]], str]] = {
    "run": (RUN_STATES, RUN_TRANSITIONS, "pending"),
    "breaker": (BREAKER_STATES, BREAKER_TRANSITIONS, "closed"),
    "proposal": (PROPOSAL_STATES, PROPOSAL_TRANSITIONS, "submitted"),
}


class _Model:
    """A throwaway model: GraphMachine needs one to draw."""


def mermaid(name: str) -> str:
    """The Mermaid ``stateDiagram-v2`` text of machine ``name`` (run, breaker or proposal), guards shown."""
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
