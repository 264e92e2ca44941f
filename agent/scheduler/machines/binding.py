"""How a stored row meets its shared machine: bind, fire one trigger, persist inside it, unbind."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from transitions import EventData, Machine, MachineError

from ..errors import GuardRejected, InvalidTransition
from ..policies import Decision

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Transition:
    """One accepted edge, handed to the persistence callback before the state changes."""

    trigger: str
    source: str
    dest: str
    reason: str | None
    """The allowing guard's reason, when a guard decided."""


class Binding(Generic[T]):
    """A short-lived model: holds one snapshot, the guard inputs and the callback that persists.

    The callback runs in ``before_state_change``: if it raises (a stale row), the machine's
    state never changes, so a transition happens if and only if its write committed.
    """

    def __init__(self, entity_id: str, state: str, persist: Callable[[Transition], T]) -> None:
        self.entity_id = entity_id
        self.state = state
        self.persist = persist
        self.guard_reason: str | None = None
        self.rejection: str | None = None
        self.result: T | None = None


class GroupBinding(Binding[T]):
    """Many entities in one state, bound together to fire one trigger once.

    Each guard is asked about every member (``members``, each a Binding of its own that keeps its
    own reason); the group takes an edge when the guard allows every member and passes it over
    when it refuses every one. When it allows some and refuses others, it raises MixedVerdicts
    before anything is persisted: the caller splits the group by that verdict and fires each part.
    The persistence callback then computes each member's move from its own reason.
    """

    def __init__(self, state: str, members: list[Binding[Any]], persist: Callable[[Transition], T]) -> None:
        super().__init__(f"a group of {len(members)}", state, persist)
        self.members = members


class MixedVerdicts(Exception):
    """A guard allowed some members of a group and refused others (``allowed``, by member)."""

    def __init__(self, allowed: list[bool]) -> None:
        super().__init__("a guard allowed some members of the group and refused others")
        self.allowed = allowed


def guard(check: Callable[[Any], Decision]) -> Callable[[EventData], bool]:
    """Adapt a policy ``check(binding) -> Decision`` into a transitions condition that keeps the reason.

    On a GroupBinding the policy judges each member (see there)."""

    def condition(event: EventData) -> bool:
        binding = cast("Binding[Any]", event.model)
        if isinstance(binding, GroupBinding):
            return _judge_group(binding, check)
        decision = check(binding)
        if decision.allowed:
            binding.guard_reason = decision.reason
        else:
            binding.rejection = decision.reason
        return decision.allowed

    condition.__name__ = getattr(check, "__name__", "guard")
    condition.__qualname__ = condition.__name__
    return condition


def _judge_group(group: GroupBinding[Any], check: Callable[[Any], Decision]) -> bool:
    decisions = [check(member) for member in group.members]
    allowed = [bool(d.allowed) for d in decisions]
    if any(allowed) and not all(allowed):
        raise MixedVerdicts(allowed)
    for member, decision in zip(group.members, decisions, strict=True):
        if decision.allowed:
            member.guard_reason = decision.reason
        else:
            member.rejection = decision.reason
    return allowed[0] if allowed else True


def persist_before_change(event: EventData) -> None:
    """``before_state_change`` of every machine: write the row; raising here aborts the transition."""
    binding = cast("Binding[Any]", event.model)
    assert event.transition is not None
    binding.result = binding.persist(
        Transition(
            trigger=event.event.name if event.event else "",
            source=event.transition.source,
            dest=event.transition.dest or event.transition.source,
            reason=binding.guard_reason,
        )
    )


def build_machine(name: str, states: list[str], transitions: list[dict[str, Any]], initial: str) -> Machine:
    """One shared machine per kind: no auto ``to_<state>`` back doors, guards get the EventData."""
    return Machine(
        model=None,
        states=states,
        transitions=transitions,
        initial=initial,
        auto_transitions=False,
        send_event=True,
        before_state_change=[persist_before_change],
        name=name,
    )


def fire(machine: Machine, binding: Binding[T], trigger: str) -> T:
    """Fire ``trigger`` on ``binding`` through ``machine``; return what the persistence callback returned.

    Raises InvalidTransition for a trigger the state does not allow, GuardRejected when a guard
    says no (with its reason), and whatever the callback raises (StaleRun...) unchanged.
    """
    state = binding.state
    if trigger not in machine.events:
        known = ", ".join(sorted(machine.events))
        raise InvalidTransition(binding.entity_id, state, trigger, f"unknown trigger; known: {known}")
    # The binding is not added to the machine: an Event fires on any object holding a state
    # attribute, so the shared machine keeps no list of models (nothing to leak, nothing to scan).
    try:
        accepted = machine.events[trigger].trigger(binding)
    except MachineError:
        raise InvalidTransition(binding.entity_id, state, trigger) from None
    if not accepted:
        raise GuardRejected(binding.entity_id, state, trigger, binding.rejection or "a guard refused")
    assert binding.result is not None
    return binding.result
