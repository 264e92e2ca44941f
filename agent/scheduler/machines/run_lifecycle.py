"""The run machine: every status change of a ScheduledRun, its guards and the row fields each edge sets.

Two triggers carry the engine's policies as conditional edges (transitions tries the edges of one
trigger from one state in order; the first whose guards pass wins):

- ``due`` is fired on a pending run whose time has come. Its edges are the missed-run policy
  (``policies.missed_run``): skipped as missed (skip), skipped as coalesced into a later due
  occurrence (catch_up_once), or running. ``start`` stays the plain claim, for runs no policy
  judges (tests, tools); the engine starts due runs through ``due`` only.
- ``stop`` is fired on a running run when the worker stops. Its edges are the shutdown policy
  (``policies.shutdown``): paused with a checkpoint, or requeued to pending; refused while a run
  may still end on its own.

Neither adds a state: each edge of ``due`` and ``stop`` has the effects of the plain trigger with
the same destination (``EFFECTS_OF``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from datetime import datetime
from typing import Any

from ..definition import ScheduleDefinition
from ..enums import RunStatus
from ..policies import Decision, missed_run, shutdown
from ..policies.breaker import may_replay
from ..policies.retry import may_dead_letter, may_retry
from ..scheduled_run import ScheduledRun
from .binding import Binding, Transition, build_machine, fire, guard

S = RunStatus

RUN_STATES = [s.value for s in RunStatus]


class RunBinding(Binding[ScheduledRun]):
    """A run bound to the machine for one trigger, with what its guards read."""

    def __init__(
        self,
        run: ScheduledRun,
        schedule: ScheduleDefinition | None,
        now: datetime,
        persist: Callable[[Transition], ScheduledRun],
    ) -> None:
        super().__init__(run.run_id, run.status.value, persist)
        self.run = run
        self.schedule = schedule
        self.now = now
        self.force = False
        self.facts: Any = None
        """What the engine passes to a trigger's guards beyond the run, its schedule and now."""


def _run_guard(policy: Callable[[ScheduledRun, ScheduleDefinition, datetime], Decision]) -> Any:
    def check(binding: RunBinding) -> Decision:
        if binding.schedule is None:
            raise ValueError(f"the {policy.__name__} guard needs the run's schedule")
        return policy(binding.run, binding.schedule, binding.now)

    check.__name__ = policy.__name__
    return guard(check)


def _may_replay(binding: RunBinding) -> Decision:
    if binding.force:
        return Decision(True, "replay forced by an operator")
    if binding.schedule is None:
        raise ValueError("the may_replay guard needs the run's schedule")
    return may_replay(binding.schedule, binding.now)


def _facts_guard(policy: Callable[[ScheduledRun, ScheduleDefinition, datetime, Any], Decision]) -> Any:
    def check(binding: RunBinding) -> Decision:
        if binding.schedule is None:
            raise ValueError(f"the {policy.__name__} guard needs the run's schedule")
        return policy(binding.run, binding.schedule, binding.now, binding.facts)

    check.__name__ = policy.__name__
    return guard(check)


def _stop_guard(policy: Callable[[ScheduledRun, ScheduleDefinition, datetime, shutdown.Stopping], Decision]) -> Any:
    def check(binding: RunBinding) -> Decision:
        if binding.schedule is None:
            raise ValueError(f"the {policy.__name__} guard needs the run's schedule")
        if not isinstance(binding.facts, shutdown.Stopping):
            raise ValueError(f"the {policy.__name__} guard needs the stop's facts (Stopping)")
        return policy(binding.run, binding.schedule, binding.now, binding.facts)

    check.__name__ = policy.__name__
    return guard(check)


_may_replay.__name__ = "may_replay"
_replay_guard = guard(_may_replay)

#: The run machine's edges, exactly as in the architecture's diagram.
RUN_TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "start", "source": S.PENDING, "dest": S.RUNNING},
    # The missed-run policy, in this order: skipped as missed, skipped as coalesced, or started.
    {
        "trigger": "due",
        "source": S.PENDING,
        "dest": S.SKIPPED,
        "conditions": [_facts_guard(missed_run.missed_under_skip)],
    },
    {
        "trigger": "due",
        "source": S.PENDING,
        "dest": S.SKIPPED,
        "conditions": [_facts_guard(missed_run.coalesced_into_later)],
    },
    {
        "trigger": "due",
        "source": S.PENDING,
        "dest": S.RUNNING,
        "conditions": [_facts_guard(missed_run.starts_when_due)],
    },
    {"trigger": "succeed", "source": S.RUNNING, "dest": S.SUCCEEDED},
    {"trigger": "fail", "source": S.RUNNING, "dest": S.FAILED},
    {"trigger": "orphan", "source": S.RUNNING, "dest": S.FAILED},
    {"trigger": "retry", "source": S.FAILED, "dest": S.PENDING, "conditions": [_run_guard(may_retry)]},
    {
        "trigger": "dead_letter",
        "source": S.FAILED,
        "dest": S.DEAD_LETTERED,
        "conditions": [_run_guard(may_dead_letter)],
    },
    {"trigger": "replay", "source": S.DEAD_LETTERED, "dest": S.PENDING, "conditions": [_replay_guard]},
    {"trigger": "checkpoint", "source": S.RUNNING, "dest": S.PAUSED},
    {"trigger": "resume", "source": S.PAUSED, "dest": S.PENDING},
    {"trigger": "requeue", "source": S.RUNNING, "dest": S.PENDING},
    # The shutdown policy, in this order: paused with a checkpoint, else requeued once a guard lets go.
    {"trigger": "stop", "source": S.RUNNING, "dest": S.PAUSED, "conditions": [_stop_guard(shutdown.checkpoint_saved)]},
    *(
        {"trigger": "stop", "source": S.RUNNING, "dest": S.PENDING, "conditions": [_stop_guard(policy)]}
        for policy in (
            shutdown.forced_by_second_signal,
            shutdown.requeue_policy,
            shutdown.graceful_finish_timed_out,
            shutdown.checkpoint_not_saved_in_time,
        )
    ),
    # A running task may find itself not configured (TaskNotConfigured): it did no work, so
    # the run ends skipped with that reason rather than failed; hence skip from running too.
    {"trigger": "skip", "source": [S.PENDING, S.RUNNING], "dest": S.SKIPPED},
    {"trigger": "cancel", "source": [S.PENDING, S.RUNNING], "dest": S.CANCELLED},
]
for _edge in RUN_TRANSITIONS:
    _src = _edge["source"]
    _edge["source"] = [s.value for s in _src] if isinstance(_src, list) else _src.value
    _edge["dest"] = _edge["dest"].value

RUN_MACHINE = build_machine("run", RUN_STATES, RUN_TRANSITIONS, initial=S.PENDING.value)

#: (trigger, destination) -> the plain trigger whose effects an edge of ``due`` or ``stop`` has.
EFFECTS_OF: dict[tuple[str, str], str] = {
    ("due", S.RUNNING.value): "start",
    ("due", S.SKIPPED.value): "skip",
    ("stop", S.PAUSED.value): "checkpoint",
    ("stop", S.PENDING.value): "requeue",
}

_RELEASE: dict[str, Any] = {"owner": None, "lease_expires_at": None}
_UNLEASE: dict[str, Any] = {"lease_expires_at": None}


def run_effects(run: ScheduledRun, trigger: str, now: datetime) -> dict[str, Any]:
    """The row fields an accepted ``trigger`` sets besides the status (times, attempt, ownership)."""
    if trigger == "start":
        return {
            "started_at": now,
            "completed_at": None,
            "heartbeat_at": now,
            "prepared": False,
            "starts": run.starts + 1,
        }
    # A finished run keeps its owner (who ran it, for telemetry and operators); only the lease goes.
    if trigger == "succeed":
        return {
            "completed_at": now,
            "error": None,
            "error_type": None,
            "error_traceback": None,
            "reason": None,
            **_UNLEASE,
        }
    if trigger in ("fail", "orphan", "skip", "cancel"):
        return {"completed_at": now, **_UNLEASE}
    if trigger == "retry":
        return {"attempt": run.attempt + 1, "started_at": None, "completed_at": None, **_RELEASE}
    if trigger == "replay":
        return {"attempt": 1, "origin": "replay", "started_at": None, "completed_at": None, **_RELEASE}
    if trigger in ("requeue", "checkpoint"):
        return {"started_at": None, **_RELEASE}
    return {}


_RUN_FIELDS = tuple(f.name for f in fields(ScheduledRun))


def _evolve(run: ScheduledRun, **changes: Any) -> ScheduledRun:
    # dataclasses.replace, without looking the fields up again on every call (a hot path).
    values = {name: getattr(run, name) for name in _RUN_FIELDS}
    values.update(changes)
    return ScheduledRun(**values)


def fire_run(
    run: ScheduledRun,
    trigger: str,
    *,
    now: datetime,
    persist: Callable[[ScheduledRun, Transition, dict[str, Any]], None],
    schedule: ScheduleDefinition | None = None,
    changes: dict[str, Any] | None = None,
    force: bool = False,
    facts: Any = None,
) -> ScheduledRun:
    """Move ``run`` by ``trigger`` and return its new snapshot; ``run`` itself is never changed.

    ``persist(run, transition, fields)`` must write the row conditionally on ``run``'s status
    and raise (StaleRun) when it lost the race; then nothing changes. ``changes`` (outcome,
    error, reason, owner...) override the edge's default fields; the allowing guard's reason
    becomes the row's reason unless ``changes`` gives one. ``facts`` go to the guards of ``due``
    (``DueFacts``) and ``stop`` (``Stopping``).
    """

    def write(transition: Transition) -> ScheduledRun:
        effects = EFFECTS_OF.get((transition.trigger, transition.dest), transition.trigger)
        fields = run_effects(run, effects, now)
        if transition.reason is not None:
            fields["reason"] = transition.reason
        fields.update(changes or {})
        persist(run, transition, fields)
        return _evolve(run, status=RunStatus(transition.dest), updated_at=now, **fields)

    binding = RunBinding(run, schedule, now, write)
    binding.force = force
    binding.facts = facts
    return fire(RUN_MACHINE, binding, trigger)
