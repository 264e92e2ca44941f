"""Service-registry edge: the ``scheduler.*`` topics, thin handlers over the store, the engine and proposals.

:func:`register_scheduler_topics` adds every topic to the worker's :class:`ServiceRegistry`. The
handlers only translate JSON to store, engine and proposal calls and back; the rules live in
those. Whatever changes state records the caller (the identity its door established, never an id
it wrote): a disable reason says ``by <caller>``, a replay's actor and a proposal's proposer and
decider are the caller, and one INFO line names who did what. Only a configured human approves or
rejects a proposal; the proposal service refuses everyone else, agents always.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from pydantic import Field, Strict

from .. import inbox
from ..definition import ScheduleDefinition
from ..engine import RECONCILE_TASK, ScheduleEngine
from ..enums import BreakerState, ProposalStatus, RiskTier, RunStatus, ScheduleSource, TriggerType
from ..errors import InvalidSchedule, ScheduleNotFound
from ..identity import high_risk_refusal
from ..proposals import ProposalService
from ..records import DeadLetter, ProposalRecord
from ..registry import ONE_LINE, CallContext, ErrorCode, JsonChars, ServiceError, ServiceRegistry, TopicInput
from ..scheduled_run import ScheduledRun
from ..store import ScheduleStore
from ..tasks import TaskRegistry
from ..triggers import EVENT_HELP, parse_duration
from ..views import event_dict, humanize, iso, letter_dict, next_run, proposal_dict, report_summary, run_dict

log = logging.getLogger(__name__)

#: Longest schedule name, run id, dead-letter id or proposal id a payload may carry, in characters.
ID_CHARS = 128
#: Longest reason an operator may give, in characters.
REASON_CHARS = 500
#: Longest "name contains" filter, in characters.
FILTER_CHARS = 128
#: The most runs, dead letters or proposals one call lists.
MAX_LIMIT = 200
#: Largest proposal accepted, as JSON text, in characters.
PROPOSAL_CHARS = 256 * 1024
#: The window over which a calendar schedule's average period is counted.
PERIOD_WINDOW = timedelta(days=7)
#: A run's reason that means its task is missing configuration (TaskNotConfigured).
NOT_CONFIGURED_PREFIX = "not configured"

#: Payload models of the topics (see agent.scheduler.registry for how a topic is defined).
#: A schedule's name or id; ``Id``: a run's, a dead letter's or a proposal's id.
Name = Annotated[str, Field(max_length=ID_CHARS, description="schedule name or id"), ONE_LINE]
Id = Annotated[str, Field(max_length=ID_CHARS), ONE_LINE]
Reason = Annotated[str, Field(max_length=REASON_CHARS)]
#: An enum field: its values, as strings (the handler gets the value, as from JSON).
SourceValue = Annotated[ScheduleSource, Strict(False)]
TriggerTypeValue = Annotated[TriggerType, Strict(False)]
RunStatusValue = Annotated[RunStatus, Strict(False)]
ProposalStatusValue = Annotated[ProposalStatus, Strict(False)]


def _limit(default: int) -> Any:
    return Field(default=default, ge=1, le=MAX_LIMIT, description="most items")


class ProposeSchedule(TopicInput):
    """scheduler.propose_schedule: the proposal as a JSON object."""

    proposal: Annotated[
        dict[str, Any],
        Field(description="the proposal (see README); proposed_by defaults to the caller"),
        JsonChars(PROPOSAL_CHARS),
    ]


class ListSchedules(TopicInput):
    """scheduler.list_schedules: filters, all optional; they combine."""

    enabled: Annotated[bool, Field(description="only enabled (true) or disabled")] | None = None
    source: SourceValue | None = None
    trigger_type: TriggerTypeValue | None = None
    name_contains: Annotated[str, Field(max_length=FILTER_CHARS), ONE_LINE] | None = None


class GetSchedule(TopicInput):
    """scheduler.get_schedule: a schedule and how many of its latest runs to show."""

    name: Name
    runs: Annotated[int, Field(ge=0, le=50)] = 5


class DisableSchedule(TopicInput):
    """scheduler.disable_schedule: a schedule and, optionally, why."""

    name: Name
    reason: Reason | None = None


class NamedSchedule(TopicInput):
    """A schedule by name or id (enable_schedule, run_now, reset_breaker)."""

    name: Name


class EmitEvent(TopicInput):
    """scheduler.emit_event: an event's name and its payload, handed to each run it sets off."""

    name: Annotated[str, Field(max_length=ID_CHARS, description=EVENT_HELP), ONE_LINE]
    payload: Annotated[
        dict[str, Any],
        Field(
            description=f"a JSON object of at most {inbox.EVENT_PAYLOAD_BYTES // 1024} KiB (compact JSON), "
            "handed to each run as params.payload"
        ),
    ] = Field(default_factory=dict)


class ListRuns(TopicInput):
    """scheduler.list_runs: optionally one schedule's and one status's runs."""

    schedule: Annotated[str, Field(max_length=ID_CHARS), ONE_LINE] | None = None
    status: RunStatusValue | None = None
    limit: Annotated[int, _limit(20)]


class DeadLetters(TopicInput):
    """scheduler.dead_letters: which dead letters, and whether with tracebacks."""

    schedule: Annotated[str, Field(max_length=ID_CHARS), ONE_LINE] | None = None
    include_replayed: bool = False
    with_traceback: bool = False
    limit: Annotated[int, _limit(50)]


class ReplayDeadLetter(TopicInput):
    """scheduler.replay_dead_letter: the dead letter, and whether to replay into an open breaker."""

    id: Id
    force: Annotated[bool, Field(description="even into an open breaker")] = False


class ListProposals(TopicInput):
    """scheduler.list_proposals: optionally one status's proposals."""

    status: ProposalStatusValue | None = None
    limit: Annotated[int, _limit(50)]


class ApproveProposal(TopicInput):
    """scheduler.approve_proposal: the proposal and, optionally, why."""

    id: Id
    reason: Reason | None = None


class RejectProposal(TopicInput):
    """scheduler.reject_proposal: the proposal and why (required)."""

    id: Id
    reason: Reason


class SchedulerTopics:
    """The handlers, bound to one store, engine, task registry and proposal service."""

    def __init__(
        self, *, store: ScheduleStore, engine: ScheduleEngine, tasks: TaskRegistry, proposals: ProposalService
    ) -> None:
        self.store, self.engine, self.tasks, self.proposals = store, engine, tasks, proposals

    def table(self) -> list[tuple[str, Any, type[TopicInput]]]:
        """``(topic, handler, payload model)`` for every scheduler topic."""
        return [
            ("scheduler.propose_schedule", self.propose_schedule, ProposeSchedule),
            ("scheduler.list_schedules", self.list_schedules, ListSchedules),
            ("scheduler.get_schedule", self.get_schedule, GetSchedule),
            ("scheduler.disable_schedule", self.disable_schedule, DisableSchedule),
            ("scheduler.enable_schedule", self.enable_schedule, NamedSchedule),
            ("scheduler.run_now", self.run_now, NamedSchedule),
            ("scheduler.emit_event", self.emit_event, EmitEvent),
            ("scheduler.status", self.status, TopicInput),
            ("scheduler.list_runs", self.list_runs, ListRuns),
            ("scheduler.dead_letters", self.dead_letters, DeadLetters),
            ("scheduler.replay_dead_letter", self.replay_dead_letter, ReplayDeadLetter),
            ("scheduler.reset_breaker", self.reset_breaker, NamedSchedule),
            ("scheduler.list_proposals", self.list_proposals, ListProposals),
            ("scheduler.approve_proposal", self.approve_proposal, ApproveProposal),
            ("scheduler.reject_proposal", self.reject_proposal, RejectProposal),
        ]

    # ------------------------------------------------------------------ schedules

    def list_schedules(self, payload: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        """Schedules by name with their next run, last outcome and breaker state; filters combine."""
        now = self.engine.clock.now()
        schedules = self.store.list(
            enabled=payload["enabled"], source=payload["source"], trigger_type=payload["trigger_type"]
        )
        needle = (payload["name_contains"] or "").lower()
        latest = self.store.latest_runs()
        items = [self._item(s, latest.get(s.id), now) for s in schedules if needle in s.name.lower()]
        return {"as_of": now.isoformat(), "count": len(items), "schedules": items}

    def get_schedule(self, payload: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        """One schedule with its policies and its latest runs, newest first."""
        now = self.engine.clock.now()
        schedule = self.store.get(payload["name"])
        runs = (
            self.store.runs(schedule=schedule.id, limit=payload["runs"], newest_first=True) if payload["runs"] else []
        )
        item = self._item(schedule, runs[0] if runs else None, now)
        item.update(_policies(schedule))
        return {"as_of": now.isoformat(), "schedule": item, "runs": [_run_item(r) for r in runs]}

    def disable_schedule(self, payload: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        """Stop a schedule from producing runs; the stored reason names the caller."""
        given = (payload["reason"] or "").strip()
        reason = f"{given} (by {ctx.caller.id})" if given else f"disabled by {ctx.caller.id}"
        schedule = self.store.disable(payload["name"], reason=reason)
        log.info("schedule %s disabled by %s: %s", schedule.name, ctx.caller.id, reason)
        return {"name": schedule.name, "enabled": schedule.enabled, "disabled_reason": schedule.disabled_reason}

    def enable_schedule(self, payload: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        """Let a disabled schedule run again from its next occurrence (the disabled period is not caught up)."""
        before = self.store.get(payload["name"])
        _human_for_high_risk(before, self.tasks, ctx, "enable")
        schedule = self.store.enable(before.id)
        if not before.enabled:
            log.info("schedule %s enabled by %s", schedule.name, ctx.caller.id)
        return {"name": schedule.name, "enabled": schedule.enabled, "was_enabled": before.enabled, "by": ctx.caller.id}

    async def run_now(self, payload: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        """Queue a manual run through the engine (the run machine as for every run) and wake its loop."""
        schedule = await ctx.run_sync(self.store.get, payload["name"])
        _human_for_high_risk(schedule, self.tasks, ctx, "run")
        run = await self.engine.run_now(schedule.id)
        log.info("manual run %s of %s queued by %s", run.run_id, run.schedule_name, ctx.caller.id)
        return {**_run_item(run), "by": ctx.caller.id}

    def emit_event(self, payload: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        """Write an event to the inbox as the caller; one worker consumes it and runs each event schedule on its name.

        As for ``run_now``, only a human may set off a high-risk schedule: an agent's event is refused
        (nothing written) when a schedule listening to its name, enabled or not, is high-risk. The
        worker that consumes it judges again (a schedule may be added or its tier raised meanwhile).
        """
        for schedule in self.store.list(enabled=None, trigger_type=TriggerType.EVENT):
            if schedule.expression == payload["name"]:
                _human_for_high_risk(schedule, self.tasks, ctx, "emit an event that runs")
        event = inbox.emit_event(self.store, payload["name"], payload["payload"], by=ctx.caller)
        return event_dict(event)

    def reset_breaker(self, payload: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        """Close an open (or half-open) breaker; refused when it is closed."""
        _human_for_high_risk(self.store.get(payload["name"]), self.tasks, ctx, "reset the breaker of")
        schedule = self.store.transition_breaker(payload["name"], "reset")
        log.info("breaker of %s reset by %s", schedule.name, ctx.caller.id)
        return {"name": schedule.name, "breaker_state": schedule.breaker_state.value, "by": ctx.caller.id}

    # ------------------------------------------------------------------ runs and the engine

    async def status(self, payload: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        """This worker's engine: id, runs in flight, the last reconciliation report, what needs attention."""
        in_flight = self.engine.in_flight  # read on the loop that owns it
        return await ctx.run_sync(self._status, in_flight)

    def _status(self, in_flight: list[ScheduledRun]) -> dict[str, Any]:
        now = self.engine.clock.now()
        schedules = self.store.list()
        reports = self.store.reports(limit=1)
        last: dict[str, Any] | None = None
        if reports:
            stored = reports[0]
            last = {
                "id": stored.id,
                "worker_id": stored.worker_id,
                "started_at": iso(stored.started_at),
                "finished_at": iso(stored.finished_at),
                "summary": report_summary(stored.report),
                "report": stored.report,
            }
        return {
            "as_of": now.isoformat(),
            "worker_id": self.engine.worker_id,
            "in_flight": [_run_item(r) for r in in_flight],
            "in_flight_count": len(in_flight),
            "last_reconciliation": last,
            "schedules_enabled": sum(1 for s in schedules if s.enabled),
            "schedules_disabled": sum(1 for s in schedules if not s.enabled),
            "breakers": [
                {"name": s.name, "state": s.breaker_state.value}
                for s in schedules
                if s.breaker_state is not BreakerState.CLOSED
            ],
            "dead_letters_waiting": len(self.store.dead_letters(include_replayed=False)),
            "pending_runs": self.store.count_runs(status=RunStatus.PENDING),
        }

    def list_runs(self, payload: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        """Recent runs, newest first, optionally of one schedule and one status."""
        schedule = self.store.get(payload["schedule"]).id if payload["schedule"] is not None else None
        runs = self.store.runs(schedule=schedule, status=payload["status"], limit=payload["limit"], newest_first=True)
        return {"runs": [_run_item(r) for r in runs]}

    def dead_letters(self, payload: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        """Dead letters, newest first (replayed ones only when asked)."""
        schedule = self.store.get(payload["schedule"]).id if payload["schedule"] is not None else None
        letters = self.store.dead_letters(schedule, include_replayed=payload["include_replayed"])
        newest = list(reversed(letters))[: payload["limit"]]
        return {"dead_letters": [_letter_item(d, payload["with_traceback"]) for d in newest], "total": len(letters)}

    def replay_dead_letter(self, payload: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        """Send a dead letter back to pending with a fresh retry budget; the caller is its recorded actor."""
        letter = self.store.dead_letter(payload["id"])
        with contextlib.suppress(ScheduleNotFound):  # a letter outlives its schedule; replay says so
            _human_for_high_risk(self.store.get(letter.schedule_id), self.tasks, ctx, "replay a dead letter of")
        run = self.store.replay_dead_letter(letter.id, actor=ctx.caller.id, force=payload["force"])
        self.engine.wake()
        return {**_run_item(run), "replayed_by": ctx.caller.id}

    # ------------------------------------------------------------------ proposals

    def propose_schedule(self, payload: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        """Submit a proposal: stored with its validation report, then rejected, held or activated.

        The proposer is the caller: ``proposed_by`` may be left out, and any other identity is
        refused, since nobody may approve their own proposal and a claimed proposer would get round
        that. A proposal that fails validation is still an answer (``status: rejected`` with the
        report naming each rule).
        """
        self.proposals.expire_overdue()
        record = self.proposals.submit(payload["proposal"], by=ctx.caller)
        log.info("proposal %s (%s) submitted by %s: %s", record.id, record.name, ctx.caller.id, record.status)
        return {"proposal": proposal_dict(record), "report": record.report, "submitted_by": ctx.caller.id}

    def list_proposals(self, payload: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        """Proposals, newest first, optionally of one status (overdue ones are expired first)."""
        self.proposals.expire_overdue()
        records = list(reversed(self.proposals.list(payload["status"])))[: payload["limit"]]
        return {"proposals": [_proposal_item(r) for r in records]}

    def approve_proposal(self, payload: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        """A configured human approves a held proposal as the caller; its schedule is created at once."""
        record = self.proposals.approve(payload["id"], by=ctx.caller, reason=payload["reason"] or "")
        return {"proposal": proposal_dict(record)}

    def reject_proposal(self, payload: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        """A configured human refuses a proposal as the caller, saying why."""
        reason = payload["reason"].strip()
        if not reason:
            raise ServiceError(ErrorCode.INVALID, "reason: say why it is rejected", "reason")
        record = self.proposals.reject(payload["id"], by=ctx.caller, reason=reason)
        return {"proposal": proposal_dict(record)}

    # ------------------------------------------------------------------ shapes

    def _item(self, s: ScheduleDefinition, last: ScheduledRun | None, now: datetime) -> dict[str, Any]:
        nxt = next_run(s, now)
        last_reason = None
        if last is not None:
            failed = last.status in (RunStatus.FAILED, RunStatus.DEAD_LETTERED)
            last_reason = (last.error if failed else None) or last.reason
        registered = s.target in self.tasks or s.target == RECONCILE_TASK
        spec = self.tasks.get(s.target) if s.target in self.tasks else None
        missing = spec.missing_configuration(self.engine.settings) if spec is not None else []
        return {
            "name": s.name,
            "id": s.id,
            "description": s.description,
            "trigger_type": s.trigger_type.value,
            "expression": s.expression,
            "timezone": s.timezone,
            "target": s.target,
            "source": s.source.value,
            "enabled": s.enabled,
            "disabled_reason": s.disabled_reason,
            "next_run_at": iso(nxt),
            "next_run_local": iso(nxt.astimezone(ZoneInfo(s.timezone))) if nxt else None,
            "next_run_in": humanize(nxt - now) if nxt else None,
            "period_s": _period_seconds(s, now),
            "last_status": last.status.value if last else None,
            "last_run_at": iso(last.intended_run_at) if last else None,
            "last_reason": last_reason,
            "not_configured": bool(
                last is not None
                and last.status is RunStatus.SKIPPED
                and (last.reason or "").startswith(NOT_CONFIGURED_PREFIX)
            ),
            "missing_configuration": missing,
            "task_registered": registered,
            "breaker_state": s.breaker_state.value,
            "consecutive_failures": s.consecutive_failures,
        }


def _human_for_high_risk(schedule: ScheduleDefinition, tasks: TaskRegistry, ctx: CallContext, action: str) -> None:
    """REFUSED, logged, when the identity rules keep ``ctx.caller`` from ``action`` on ``schedule``.

    A task this worker does not know may be high-risk where it is known: an agent is refused it too.
    """
    why: str | None
    if schedule.target == RECONCILE_TASK or schedule.target in tasks:
        task_tier = RiskTier.LOW if schedule.target == RECONCILE_TASK else tasks.get(schedule.target).risk_tier
        why = high_risk_refusal(ctx.caller, (schedule.risk_tier, task_tier), action, schedule.name)
    elif ctx.caller.is_agent:
        why = (
            f"{ctx.caller.id} is an agent: only a human may {action} schedule {schedule.name}, whose task "
            f"{schedule.target} is not registered in this worker (its risk cannot be told)"
        )
    else:
        why = None
    if why is not None:
        log.warning("%s by %s refused: %s", ctx.topic, ctx.caller.id, why)
        raise ServiceError(ErrorCode.REFUSED, why)


def register_scheduler_topics(
    registry: ServiceRegistry,
    *,
    store: ScheduleStore,
    engine: ScheduleEngine,
    tasks: TaskRegistry,
    proposals: ProposalService,
) -> None:
    """Register every ``scheduler.*`` topic on ``registry``, served by this store, engine, tasks and proposals."""
    topics = SchedulerTopics(store=store, engine=engine, tasks=tasks, proposals=proposals)
    for name, handler, schema in topics.table():
        registry.register(name, handler, schema)


def _period_seconds(s: ScheduleDefinition, now: datetime) -> float | None:
    """The average seconds between fires (over the next week for calendars); None for one-off and event schedules."""
    try:
        if s.trigger_type in (TriggerType.INTERVAL, TriggerType.RECONCILIATION):
            return parse_duration(s.expression).total_seconds()
        if s.trigger_type is not TriggerType.CALENDAR:
            return None
        trigger = s.trigger(s.anchor_at or s.created_at or now)
        count = trigger.count(now, now + PERIOD_WINDOW)
        if count:
            return PERIOD_WINDOW.total_seconds() / count
        first = trigger.next_after(now)
        second = trigger.next_after(first) if first else None
        return (second - first).total_seconds() if first and second else None
    except (InvalidSchedule, ValueError, OverflowError):
        return None


def _policies(s: ScheduleDefinition) -> dict[str, Any]:
    def seconds(span: timedelta | None) -> float | None:
        return None if span is None else span.total_seconds()

    return {
        "missed_run_policy": s.missed_run_policy.value,
        "concurrency_policy": s.concurrency_policy.value,
        "shutdown_policy": s.shutdown_policy.value,
        "risk_tier": s.risk_tier.value,
        "max_retries": s.max_retries,
        "retry_backoff_s": seconds(s.retry_backoff),
        "timeout_s": seconds(s.timeout),
        "grace_s": seconds(s.grace),
        "breaker_threshold": s.breaker_threshold,
        "breaker_cooldown_s": seconds(s.breaker_cooldown),
        "breaker_opened_at": iso(s.breaker_opened_at),
        "params": s.params,
        "created_at": iso(s.created_at),
        "updated_at": iso(s.updated_at),
    }


def _run_item(run: ScheduledRun) -> dict[str, Any]:
    return {**run_dict(run), "schedule_id": run.schedule_id}


def _letter_item(letter: DeadLetter, with_traceback: bool) -> dict[str, Any]:
    data = letter_dict(letter)
    if not with_traceback:
        data.pop("error_traceback", None)
    return data


def _proposal_item(record: ProposalRecord) -> dict[str, Any]:
    data = proposal_dict(record)
    report = record.report or {}
    data["target"] = (record.payload or {}).get("target")
    data["trigger_type"] = (record.payload or {}).get("trigger_type")
    data["expression"] = (record.payload or {}).get("expression")
    data["simulation_note"] = (report.get("simulation") or {}).get("note")
    return data
