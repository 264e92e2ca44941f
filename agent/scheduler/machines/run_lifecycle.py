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
the same destination (``RUN_EFFECTS_BY_DESTINATION``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from ..definition import ScheduleDefinition
from ..enums import RunStatus
from ..errors import GuardRejected, InvalidTransition
from ..policies import Decision, missed_run, shutdown
from ..policies.breaker import may_replay
from ..policies.retry import may_dead_letter, may_retry
from ..scheduled_run import ScheduledRun
from .binding import Binding, GroupBinding, MixedVerdicts, Transition, build_machine, fire, guard

S = RunStatus

RUN_STATES = [s.value for s in RunStatus]


class RunBinding(Binding["RunMove"]):
    """A run bound to the machine for one trigger, with what its guards read."""

    def __init__(
        self,
        run: ScheduledRun,
        schedule: ScheduleDefinition | None,
        now: datetime,
        persist: Callable[[Transition], RunMove],
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

_RELEASE: dict[str, Any] = {"owner": None, "lease_expires_at": None}
_UNLEASE: dict[str, Any] = {"lease_expires_at": None}

Effect = Callable[[ScheduledRun, datetime], dict[str, Any]]


def _started(run: ScheduledRun, now: datetime) -> dict[str, Any]:
    return {"started_at": now, "completed_at": None, "heartbeat_at": now, "prepared": False, "starts": run.starts + 1}


# A finished run keeps its owner (who ran it, for telemetry and operators); only the lease goes.
def _ended(run: ScheduledRun, now: datetime) -> dict[str, Any]:
    return {"completed_at": now, **_UNLEASE}


def _succeeded(run: ScheduledRun, now: datetime) -> dict[str, Any]:
    return {**_ended(run, now), "error": None, "error_type": None, "error_traceback": None, "reason": None}


def _back_in_queue(run: ScheduledRun, now: datetime) -> dict[str, Any]:
    return {"started_at": None, **_RELEASE}


def _retried(run: ScheduledRun, now: datetime) -> dict[str, Any]:
    return {"attempt": run.attempt + 1, "completed_at": None, **_back_in_queue(run, now)}


def _replayed(run: ScheduledRun, now: datetime) -> dict[str, Any]:
    return {"attempt": 1, "origin": "replay", "completed_at": None, **_back_in_queue(run, now)}


def _unchanged(run: ScheduledRun, now: datetime) -> dict[str, Any]:
    return {}


#: What each trigger sets besides the status.
RUN_EFFECTS: dict[str, Effect] = {
    "start": _started,
    "succeed": _succeeded,
    "fail": _ended,
    "orphan": _ended,
    "skip": _ended,
    "cancel": _ended,
    "retry": _retried,
    "replay": _replayed,
    "requeue": _back_in_queue,
    "checkpoint": _back_in_queue,
    # The failure stays on the row as it was; the dead-letter row copies it.
    "dead_letter": _unchanged,
    # Checkpointing already released the run; its start time went then.
    "resume": _unchanged,
}
#: What a trigger without its own entry sets, by the status it leads to.
RUN_EFFECTS_BY_DESTINATION: dict[RunStatus, Effect] = {
    S.RUNNING: _started,
    S.SUCCEEDED: _ended,
    S.FAILED: _ended,
    S.SKIPPED: _ended,
    S.CANCELLED: _ended,
    S.DEAD_LETTERED: _unchanged,
    S.PENDING: _back_in_queue,
    S.PAUSED: _back_in_queue,
}


def run_effects(run: ScheduledRun, trigger: str, now: datetime, *, dest: str | None = None) -> dict[str, Any]:
    """The row fields an accepted ``trigger`` sets besides the status (times, attempt, ownership).

    Keyed by trigger (RUN_EFFECTS); a trigger without an entry gets the effects of the status it
    leads to (RUN_EFFECTS_BY_DESTINATION): ``dest``, or the machine's edge from ``run.status``.
    """
    effect = RUN_EFFECTS.get(trigger)
    if effect is None:
        effect = RUN_EFFECTS_BY_DESTINATION[RunStatus(dest or _destination(run, trigger))]
    return effect(run, now)


def _destination(run: ScheduledRun, trigger: str) -> str:
    """Where ``trigger`` leads from ``run``'s status on the machine (InvalidTransition if nowhere)."""
    event = RUN_MACHINE.events.get(trigger)
    edges = event.transitions.get(run.status.value) if event is not None else None
    if not edges:
        raise InvalidTransition(run.run_id, run.status.value, trigger)
    return str(edges[0].dest)


@dataclass(frozen=True, slots=True)
class RunMove:
    """One accepted transition of a run: the edge, every row field it writes, and the run after it."""

    run: ScheduledRun
    """The snapshot the transition was fired on (its status and attempt are the write's condition)."""
    transition: Transition
    fields: dict[str, Any]
    """Column -> value: the status, ``updated_at``, the edge's effects, the guard's reason, the changes."""
    moved: ScheduledRun
    """The run as the row will be once ``fields`` are written."""


def _move(run: ScheduledRun, transition: Transition, now: datetime, changes: dict[str, Any] | None) -> RunMove:
    fields: dict[str, Any] = {"status": transition.dest, "updated_at": now}
    fields.update(run_effects(run, transition.trigger, now, dest=transition.dest))
    if transition.reason is not None:
        fields["reason"] = transition.reason
    fields.update(changes or {})
    return RunMove(run, transition, fields, run.evolved(fields, RunStatus(transition.dest)))


def plan_run(
    run: ScheduledRun,
    trigger: str,
    *,
    now: datetime,
    schedule: ScheduleDefinition | None = None,
    changes: dict[str, Any] | None = None,
    force: bool = False,
    persist: Callable[[ScheduledRun, Transition, dict[str, Any]], None] | None = None,
    facts: Any = None,
) -> RunMove:
    """Fire ``trigger`` on ``run`` through the machine's guards; return the move it makes.

    Raises InvalidTransition for a trigger the status does not allow and GuardRejected (with the
    guard's reason) when a guard says no. ``persist(run, transition, fields)``, if given, runs
    before the state changes and may raise to abort (StaleRun when the conditional write lost).
    ``changes`` (outcome, error, reason, owner...) override the edge's effects; the allowing
    guard's reason becomes the row's reason unless ``changes`` gives one.
    """

    def write(transition: Transition) -> RunMove:
        move = _move(run, transition, now, changes)
        if persist is not None:
            persist(run, transition, move.fields)
        return move

    binding = RunBinding(run, schedule, now, write)
    binding.force = force
    binding.facts = facts
    return fire(RUN_MACHINE, binding, trigger)


def plan_runs(
    items: Iterable[tuple[ScheduledRun, str, dict[str, Any]]],
    *,
    now: datetime,
    schedules: Mapping[str, ScheduleDefinition] | None = None,
    facts: Mapping[str, Any] | None = None,
) -> list[RunMove | InvalidTransition | GuardRejected]:
    """``plan_run`` for many ``(run, trigger, changes)``: per item, its move or the machine's refusal.

    The machine is fired once per group of runs in the same status given the same trigger (a
    GroupBinding): the guards judge every run of the group, each run's move is computed from its
    own reason and changes, and a group whose runs the guards judge differently is split and fired
    again per verdict. The moves and refusals are those ``plan_run`` gives run by run (a property
    test holds the two to that). ``schedules`` (by id) feed the guards that read a run's schedule
    (retry, dead_letter, replay, due, stop); ``facts`` (by run id) feed the guards of ``due`` and
    ``stop``.
    """
    known = schedules or {}
    given = facts or {}
    batch = list(items)
    out: list[RunMove | InvalidTransition | GuardRejected | None] = [None] * len(batch)
    groups: dict[tuple[RunStatus, str], list[int]] = {}
    for i, (run, trigger, _) in enumerate(batch):
        groups.setdefault((run.status, trigger), []).append(i)
    for (status, trigger), positions in groups.items():
        _plan_group(batch, positions, status=status, trigger=trigger, now=now, known=known, given=given, out=out)
    assert all(r is not None for r in out), "every item is planned"
    return cast("list[RunMove | InvalidTransition | GuardRejected]", out)


def _no_persist(transition: Transition) -> RunMove:
    raise AssertionError("a member of a group is never fired on its own")


def _plan_group(
    batch: list[tuple[ScheduledRun, str, dict[str, Any]]],
    positions: list[int],
    *,
    status: RunStatus,
    trigger: str,
    now: datetime,
    known: Mapping[str, ScheduleDefinition],
    given: Mapping[str, Any],
    out: list[RunMove | InvalidTransition | GuardRejected | None],
) -> None:
    members: list[RunBinding] = []
    for i in positions:
        run = batch[i][0]
        member = RunBinding(run, known.get(run.schedule_id), now, _no_persist)
        member.facts = given.get(run.run_id)
        members.append(member)

    def write(transition: Transition) -> list[RunMove]:
        edge = (transition.trigger, transition.source, transition.dest)  # each member's with its own reason
        return [
            _move(m.run, Transition(*edge, reason=m.guard_reason), now, batch[i][2])
            for m, i in zip(members, positions, strict=True)
        ]

    try:
        moves = fire(RUN_MACHINE, GroupBinding(status.value, list(members), write), trigger)
    except MixedVerdicts as mixed:
        for verdict in (True, False):
            part = [i for i, allowed in zip(positions, mixed.allowed, strict=True) if allowed is verdict]
            _plan_group(batch, part, status=status, trigger=trigger, now=now, known=known, given=given, out=out)
        return
    except GuardRejected:
        # Every guard refused every run: each gets the refusal plan_run gives it, with its own reason.
        for m, i in zip(members, positions, strict=True):
            out[i] = GuardRejected(m.entity_id, status.value, trigger, m.rejection or "a guard refused")
        return
    except InvalidTransition as refused:
        # No such edge from this status (or no such trigger): the same words for each run, with its id.
        for m, i in zip(members, positions, strict=True):
            out[i] = InvalidTransition(m.entity_id, status.value, trigger, refused.detail)
        return
    for i, move in zip(positions, moves, strict=True):
        out[i] = move


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

    ``persist(run, transition, fields)`` must write ``fields`` (every column the move sets, the
    status included) conditionally on ``run``'s status and attempt, and raise (StaleRun) when it
    lost the race; then nothing changes. ``facts`` go to the guards of ``due`` (``DueFacts``) and
    ``stop`` (``Stopping``). See ``plan_run``.
    """
    move = plan_run(
        run, trigger, now=now, schedule=schedule, changes=changes, force=force, persist=persist, facts=facts
    )
    return move.moved
