"""The run machine: every status change of a ScheduledRun, its guards and the row fields each edge sets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from datetime import datetime
from typing import Any

from ..definition import ScheduleDefinition
from ..enums import RunStatus
from ..policies import Decision
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


_may_replay.__name__ = "may_replay"
_replay_guard = guard(_may_replay)

#: The run machine's edges, exactly as in the architecture's diagram.
RUN_TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "start", "source": S.PENDING, "dest": S.RUNNING},
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
) -> ScheduledRun:
    """Move ``run`` by ``trigger`` and return its new snapshot; ``run`` itself is never changed.

    ``persist(run, transition, fields)`` must write the row conditionally on ``run``'s status
    and raise (StaleRun) when it lost the race; then nothing changes. ``changes`` (outcome,
    error, reason, owner...) override the edge's default fields; the allowing guard's reason
    becomes the row's reason unless ``changes`` gives one.
    """

    def write(transition: Transition) -> ScheduledRun:
        fields = run_effects(run, transition.trigger, now)
        if transition.reason is not None:
            fields["reason"] = transition.reason
        fields.update(changes or {})
        persist(run, transition, fields)
        return _evolve(run, status=RunStatus(transition.dest), updated_at=now, **fields)

    binding = RunBinding(run, schedule, now, write)
    binding.force = force
    return fire(RUN_MACHINE, binding, trigger)
