"""Agent-proposed schedules: ScheduleProposal -> validation report -> decision -> activation.

An agent may propose anything; only what is compiled, validated, scoped and observable becomes
a schedule. :func:`validate_proposal` takes the raw proposal (a dict from JSON, or anything
else: it never raises for bad input) and returns a :class:`ValidationReport`; it only reads, through
:class:`ProposalReads` (a ``ScheduleStore`` is one) and the ``TaskRegistry``.
:class:`ProposalService` stores the proposal with its report and moves it through the proposal
machine: ``reject`` when invalid, ``approve`` then ``activate`` when the policy auto-approves,
``hold`` (with an expiry) when a human must decide.
"""

from __future__ import annotations

import builtins
import json
import logging
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from itertools import pairwise
from typing import Any, Protocol

from . import limits, triggers
from .clock import Clock
from .definition import (
    DEFAULT_BREAKER_THRESHOLD,
    DEFAULT_MAX_RETRIES,
    DEFAULT_RETRY_BACKOFF,
    ScheduleDefinition,
)
from .enums import (
    ConcurrencyPolicy,
    MissedRunPolicy,
    ProposalStatus,
    RiskTier,
    ScheduleSource,
    ShutdownPolicy,
    TriggerType,
)
from .errors import DuplicateSchedule, InvalidSchedule, SchedulerError, StaleState, TooLong, short
from .identity import (
    POLICY,
    Approvers,
    Caller,
    same_identity,
)
from .proposal_schema import check_proposal, json_keys
from .records import ProposalRecord
from .schedule_policy import (
    DEFAULT_RULES,
    Finding,
    Outcome,
    PolicyBundle,
    ProposalRules,
    Rule,
    Shape,
    Verdict,
    assess_tier,
    check_bundle,
    check_limits,
    choose_bundle,
    decide,
    describe_span,
)
from .store import ScheduleStore
from .tasks import TaskRegistry, TaskSpec

log = logging.getLogger(__name__)

#: How many fire times the simulation lists per window (the counts are exact).
SHOWN_FIRES = 24
#: How many upcoming fires are walked to find the smallest gap between two.
GAP_SAMPLE = 2000
#: The simulation's windows.
DAY = timedelta(days=1)
WEEK = timedelta(days=7)
#: How far ahead the seams of a calendar (clock changes, turns of the month) are looked for, in days;
#: how near each seam its fires are walked; the step that finds the hour of a clock change.
SEAM_DAYS = 400
SEAM_REACH = timedelta(hours=1)
SEAM_STEP = timedelta(minutes=15)
#: Longest name a proposal's record keeps, in characters (the store's name columns are no wider).
NAME_CHARS = limits.NAME_CHARS
#: The most of a raw proposal kept in its record, as JSON; a bigger one is kept as an excerpt.
MAX_STORED_PAYLOAD_BYTES = 256 * 1024
STORED_EXCERPT_CHARS = 4096
#: The proposal statuses that still claim their schedule name.
PENDING_STATUSES = (ProposalStatus.SUBMITTED, ProposalStatus.AWAITING_APPROVAL, ProposalStatus.APPROVED)

_SCHEMA_RULES = frozenset({Rule.NOT_AN_OBJECT, Rule.REQUIRED, Rule.UNKNOWN_FIELD, Rule.WRONG_TYPE, Rule.TOO_LONG})
_SEMANTIC_RULES = frozenset(
    {
        Rule.NAME_VALID,
        Rule.EXPRESSION_VALID,
        Rule.TIMEZONE_VALID,
        Rule.DEFINITION_VALID,
        Rule.TARGET_REGISTERED,
        Rule.PARAMS_JSON,
        Rule.BUNDLE_KNOWN,
    }
)


class InvalidProposal(SchedulerError, ValueError):
    """A proposal does not fit the proposal format; ``findings`` name each rule and field to fix."""

    def __init__(self, findings: Iterable[Finding]) -> None:
        self.findings = tuple(findings)
        text = "; ".join(f"{f.rule} ({f.field}): {f.message}" for f in self.findings)
        super().__init__(f"invalid proposal: {text}")


class ProposalNotFound(SchedulerError, LookupError):
    """No proposal has this id; ``proposals`` lists them."""

    def __init__(self, proposal_id: str) -> None:
        self.proposal_id = proposal_id
        super().__init__(f"no proposal with id {proposal_id!r}; list the proposals to see the ids")


class DecisionRefused(SchedulerError):
    """A human decision on a proposal cannot be applied; ``reason`` says why. Nothing changed,
    unless the proposal was found overdue, in which case it is now expired."""

    def __init__(self, proposal_id: str, reason: str) -> None:
        self.proposal_id = proposal_id
        self.reason = reason
        super().__init__(f"proposal {proposal_id}: {reason}")


# ---------------------------------------------------------------------- the proposal format


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleProposal:
    """An agent's request for a recurring job, before any policy has looked at it.

    Build it from JSON with :meth:`from_dict` (which raises only :class:`InvalidProposal`) or
    with keyword arguments (checked the same way). Durations are ``timedelta``; in JSON they are
    the ``*_s`` keys, seconds or ``"15m"``-style spans. ``None`` means "the policy's default".
    """

    name: str
    """The schedule's name, unique among schedules and pending proposals."""
    trigger_type: TriggerType
    """What makes it fire: interval, calendar, delay, event, lifecycle or reconciliation."""
    expression: str
    """The trigger's expression (cron, ``"15m"``, ``"+1h"``, an event name...)."""
    target: str
    """The registered task each run calls; agents can name nothing else."""
    objective: str
    """What the schedule is for, in words; becomes the schedule's description."""
    proposed_by: str
    """The proposing agent's id; it may never approve its own proposal."""
    timezone: str = "UTC"
    """IANA timezone of a calendar expression."""
    params: dict[str, Any] = field(default_factory=dict)
    """JSON object handed to the task."""
    missed_run_policy: MissedRunPolicy = MissedRunPolicy.SKIP
    """What to do with occurrences missed while nothing ran them."""
    concurrency_policy: ConcurrencyPolicy = ConcurrencyPolicy.FORBID
    """What to do when an occurrence is due while a run is in flight."""
    shutdown_policy: ShutdownPolicy = ShutdownPolicy.GRACEFUL_FINISH
    """What happens to a running run when the worker stops."""
    timeout: timedelta | None = None
    """Longest a run may take; required by policy (JSON ``timeout_s``)."""
    max_retries: int | None = None
    """Retries after a failed attempt; None: the bundle's default."""
    retry_backoff: timedelta | None = None
    """Base of the backoff between attempts; None: the scheduler's default (JSON ``retry_backoff_s``)."""
    breaker_threshold: int | None = None
    """Consecutive failed runs that open the breaker; None: the bundle's default."""
    risk_estimate: RiskTier = RiskTier.LOW
    """The proposer's own estimate of the risk; it can raise the tier, never lower it."""
    capabilities: tuple[str, ...] = ()
    """Capability scopes asked for; each must be declared by the target task."""
    bundle: str | None = None
    """The policy bundle to judge it under; None: the one the task's side effects imply, or the default."""
    typical_duration: timedelta | None = None
    """How long a run typically takes (JSON ``typical_duration_s``), for the overlap check."""

    def __post_init__(self) -> None:
        given = {f.name: getattr(self, f.name) for f in fields(self)}
        checked, problems = check_proposal(given, by_attribute=True)
        if checked is None:
            raise InvalidProposal(problems)
        for name, value in checked.given.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_dict(cls, data: Any) -> ScheduleProposal:
        """The proposal in ``data`` (a JSON object); InvalidProposal naming every bad field otherwise."""
        proposal, problems, _ = parse_proposal(data)
        if proposal is None:
            raise InvalidProposal(problems)
        return proposal

    def to_dict(self) -> dict[str, Any]:
        """The proposal as JSON (``from_dict`` of it gives it back)."""
        out: dict[str, Any] = {}
        for name, key in json_keys().items():
            value = getattr(self, name)
            if isinstance(value, timedelta):
                value = value.total_seconds()
            elif isinstance(value, StrEnum):
                value = value.value
            elif isinstance(value, tuple):
                value = list(value)
            if value is not None:
                out[key] = value
        return out


#: The defaults a proposal gets for fields it leaves out (others are computed by the validator).
STATIC_DEFAULTS: Mapping[str, Any] = {
    "timezone": "UTC",
    "params": {},
    "missed_run_policy": MissedRunPolicy.SKIP.value,
    "concurrency_policy": ConcurrencyPolicy.FORBID.value,
    "shutdown_policy": ShutdownPolicy.GRACEFUL_FINISH.value,
    "retry_backoff_s": DEFAULT_RETRY_BACKOFF.total_seconds(),
    "risk_estimate": RiskTier.LOW.value,
    "capabilities": [],
}


def parse_proposal(data: Any) -> tuple[ScheduleProposal | None, list[Finding], dict[str, Any]]:
    """``(proposal, schema findings, defaults applied)`` for any ``data``; never raises.

    The proposal is None whenever there is a finding. JSON ``null`` for an optional field
    means "not given".
    """
    checked, problems = check_proposal(data)
    if checked is None:
        return None, problems, {}
    defaults = {key: value for key, value in STATIC_DEFAULTS.items() if data.get(key) is None}
    return ScheduleProposal(**checked.given), [], defaults


# ---------------------------------------------------------------------- the report


@dataclass(frozen=True, slots=True, kw_only=True)
class Simulation:
    """What the schedule would do from now: its next fires, how often, and whether runs would overlap."""

    fires_24h: tuple[datetime, ...] = ()
    """The first fires within 24 hours (at most SHOWN_FIRES)."""
    count_24h: int | None = None
    """How many fires within 24 hours; None when not time-based."""
    fires_7d: tuple[datetime, ...] = ()
    """The fires within 7 days when there are at most SHOWN_FIRES; else the first fire of each day."""
    count_7d: int | None = None
    """How many fires within 7 days; None when not time-based."""
    runs_per_day: float | None = None
    """Average fires per day over the next week."""
    min_gap: timedelta | None = None
    """The smallest gap between two fires; None when it fires at most once or on events."""
    typical_duration: timedelta | None = None
    """How long a run typically takes, when the proposal or the host says."""
    overlap_risk: bool = False
    """True when a typical run outlasts the smallest gap."""
    note: str = ""
    """The simulation in words."""

    def to_dict(self) -> dict[str, Any]:
        """The simulation as JSON."""
        return {
            "fires_24h": [t.isoformat() for t in self.fires_24h],
            "count_24h": self.count_24h,
            "fires_7d": [t.isoformat() for t in self.fires_7d],
            "count_7d": self.count_7d,
            "runs_per_day": self.runs_per_day,
            "min_gap_s": None if self.min_gap is None else self.min_gap.total_seconds(),
            "typical_duration_s": None if self.typical_duration is None else self.typical_duration.total_seconds(),
            "overlap_risk": self.overlap_risk,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidationReport:
    """Everything the validator found about one proposal, and the decision that follows from it."""

    checked_at: datetime
    """When the validation ran."""
    schema_valid: bool
    """The proposal fits the proposal format."""
    semantic_valid: bool | None
    """It compiles to a schedule of a registered task; None when the schema was not valid."""
    schema_errors: tuple[Finding, ...] = ()
    semantic_errors: tuple[Finding, ...] = ()
    policy_violations: tuple[Finding, ...] = ()
    """Each breaks a policy rule (limits, scope, quota, name); any one rejects the proposal."""
    conflict_warnings: tuple[Finding, ...] = ()
    """Worth a look but not refused: overlap, the same work scheduled twice, no fire soon."""
    defaults_applied: Mapping[str, Any] = field(default_factory=dict)
    """Fields the proposal left out and the values they got."""
    simulation: Simulation | None = None
    bundle: str | None = None
    """The policy bundle it was judged under."""
    risk_tier: RiskTier | None = None
    """The effective tier, when the target task is known."""
    tier_reason: str | None = None
    """Why the tier is what it is."""
    decision: Outcome = Outcome.REJECT
    """approve, hold or reject."""
    decision_reason: str = ""
    hold_reasons: tuple[Finding, ...] = ()
    """Why it waits for a human, when it does."""
    schedule: Mapping[str, Any] | None = None
    """The schedule it compiles to, as JSON, for the human who reads the report."""
    definition: ScheduleDefinition | None = field(default=None, compare=False, repr=False)
    """The compiled schedule (not part of ``to_dict``); None unless valid."""
    proposal: ScheduleProposal | None = field(default=None, compare=False, repr=False)
    """The parsed proposal (not part of ``to_dict``); None when the schema was not valid."""

    @property
    def approved(self) -> bool:
        """True when the policy approves it without a human."""
        return self.decision is Outcome.APPROVE

    @property
    def valid(self) -> bool:
        """True when nothing rejects it (it is approved or waits for a human)."""
        return self.decision is not Outcome.REJECT

    @property
    def findings(self) -> tuple[Finding, ...]:
        """Every finding that rejects the proposal."""
        return self.schema_errors + self.semantic_errors + self.policy_violations

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON, as stored with the proposal."""
        return {
            "checked_at": self.checked_at.isoformat(),
            "schema_valid": self.schema_valid,
            "semantic_valid": self.semantic_valid,
            "schema_errors": [f.to_dict() for f in self.schema_errors],
            "semantic_errors": [f.to_dict() for f in self.semantic_errors],
            "policy_violations": [f.to_dict() for f in self.policy_violations],
            "conflict_warnings": [f.to_dict() for f in self.conflict_warnings],
            "defaults_applied": dict(self.defaults_applied),
            "simulation": None if self.simulation is None else self.simulation.to_dict(),
            "bundle": self.bundle,
            "risk_tier": None if self.risk_tier is None else self.risk_tier.value,
            "tier_reason": self.tier_reason,
            "decision": self.decision.value,
            "decision_reason": self.decision_reason,
            "hold_reasons": [f.to_dict() for f in self.hold_reasons],
            "approved": self.approved,
            "schedule": None if self.schedule is None else dict(self.schedule),
        }


# ---------------------------------------------------------------------- validation


class ProposalReads(Protocol):
    """What validation reads from storage; a ScheduleStore is one."""

    def list(
        self, *, enabled: bool | None = None, source: str | None = None, trigger_type: str | None = None
    ) -> builtins.list[ScheduleDefinition]:
        """Schedules, optionally filtered."""
        ...

    def proposals(self, status: str | None = None, *, proposed_by: str | None = None) -> builtins.list[ProposalRecord]:
        """Stored proposals, optionally by status and proposer."""
        ...


def simulate(definition: ScheduleDefinition, now: datetime, typical_duration: timedelta | None = None) -> Simulation:
    """The next fires of ``definition`` from ``now`` (as if activated now), how often, and the overlap risk."""
    kind = definition.trigger_type
    if not definition.is_time_based:
        note = (
            f"fires once per emitted event {definition.expression!r}: as often as it is emitted"
            if kind is TriggerType.EVENT
            else f"fires once at every engine {definition.expression}"
        )
        return Simulation(typical_duration=typical_duration, note=note)
    trigger = definition.trigger(now)
    day_end, week_end = now + DAY, now + WEEK
    count_7d = trigger.count(now, week_end)
    sample = list(trigger.occurrences(now, week_end, limit=GAP_SAMPLE))
    while len(sample) < 2:
        following = trigger.next_after(sample[-1] if sample else now)
        if following is None:
            break
        sample.append(following)
    gaps = [b - a for a, b in pairwise(sample)]
    if kind is TriggerType.CALENDAR and (not gaps or min(gaps) > limits.MIN_INTERVAL):
        gaps += _gaps_at_seams(trigger, definition.timezone, now)
    min_gap = min(gaps) if gaps else None
    if min_gap is not None and count_7d > len(sample):
        min_gap = min(min_gap, WEEK / count_7d)
    overlap = typical_duration is not None and min_gap is not None and typical_duration > min_gap
    per_day = round(count_7d / 7, 3)
    if count_7d == 0:
        note = "no fire within 7 days" + (f"; next at {sample[0].isoformat()}" if sample else "; none ever")
    else:
        gap = "" if min_gap is None else f", at least {describe_span(min_gap)} apart"
        note = f"{count_7d} fire(s) within 7 days ({per_day}/day){gap}"
    return Simulation(
        fires_24h=tuple(trigger.occurrences(now, day_end, limit=SHOWN_FIRES)),
        count_24h=trigger.count(now, day_end),
        fires_7d=tuple(
            trigger.occurrences(now, week_end) if count_7d <= SHOWN_FIRES else _daily_firsts(trigger, now, week_end)
        ),
        count_7d=count_7d,
        runs_per_day=per_day,
        min_gap=min_gap,
        typical_duration=typical_duration,
        overlap_risk=overlap,
        note=note,
    )


def _gaps_at_seams(trigger: triggers.Trigger, timezone: str, now: datetime) -> list[timedelta]:
    """The gaps between a calendar's fires around the seams of the coming year, where a week's sample
    can miss them: the zone's clock changes (a skipped or repeated hour can put two fires a second
    apart) and the turns of the months (the 31st's last minute beside the 1st's first)."""
    zone = triggers.parse_timezone(timezone)
    seams: list[datetime] = []
    day = now
    for _ in range(SEAM_DAYS):
        later = day + DAY
        if day.astimezone(zone).utcoffset() != later.astimezone(zone).utcoffset():
            hour = day
            while hour.astimezone(zone).utcoffset() == day.astimezone(zone).utcoffset():
                hour += SEAM_STEP
            seams.append(hour)
        local = later.astimezone(zone)
        if local.day == 1 and day.astimezone(zone).day != 1:
            seams.append(local.replace(hour=0, minute=0, second=0, microsecond=0).astimezone(UTC))
        day = later
    gaps: list[timedelta] = []
    for seam in seams:
        fires = trigger.occurrences(seam - SEAM_REACH, seam + SEAM_REACH, limit=GAP_SAMPLE)
        gaps += [b - a for a, b in pairwise(fires)]
    return gaps


def _daily_firsts(trigger: triggers.Trigger, now: datetime, end: datetime) -> list[datetime]:
    out: list[datetime] = []
    for day in range(7):
        found = trigger.occurrences(now + day * DAY, min(now + (day + 1) * DAY, end), limit=1)
        out += found
    return out


def _definition_rule(field_name: str) -> Rule:
    return {
        "expression": Rule.EXPRESSION_VALID,
        "trigger_type": Rule.EXPRESSION_VALID,
        "timezone": Rule.TIMEZONE_VALID,
        "name": Rule.NAME_VALID,
        "target": Rule.NAME_VALID,
        "params": Rule.PARAMS_JSON,
    }.get(field_name, Rule.DEFINITION_VALID)


def compile_definition(
    proposal: ScheduleProposal,
    *,
    max_retries: int | None = None,
    breaker_threshold: int | None = None,
    risk_tier: RiskTier = RiskTier.LOW,
) -> ScheduleDefinition:
    """The agent schedule ``proposal`` becomes; InvalidSchedule when it cannot. Activation sets ``proposal_id``.

    ``max_retries`` and ``breaker_threshold`` override the proposal's (the policy's defaults).
    """
    return ScheduleDefinition(
        name=proposal.name,
        trigger_type=proposal.trigger_type,
        expression=proposal.expression,
        target=proposal.target,
        timezone=proposal.timezone,
        params=proposal.params,
        description=proposal.objective,
        missed_run_policy=proposal.missed_run_policy,
        concurrency_policy=proposal.concurrency_policy,
        shutdown_policy=proposal.shutdown_policy,
        risk_tier=risk_tier,
        max_retries=_first(max_retries, proposal.max_retries, DEFAULT_MAX_RETRIES),
        retry_backoff=proposal.retry_backoff or DEFAULT_RETRY_BACKOFF,
        timeout=proposal.timeout,
        breaker_threshold=_first(breaker_threshold, proposal.breaker_threshold, DEFAULT_BREAKER_THRESHOLD),
        source=ScheduleSource.AGENT,
    )


def _first(*values: int | None) -> int:
    return next(v for v in values if v is not None)


def _pending(reads: ProposalReads, *, exclude: str | None) -> builtins.list[ProposalRecord]:
    return [r for status in PENDING_STATUSES for r in reads.proposals(status.value) if r.id != exclude]


def check_name_free(
    name: str, reads: ProposalReads, *, exclude: str | None = None, pending: Iterable[ProposalRecord] | None = None
) -> list[Finding]:
    """A finding when a schedule or another pending proposal already uses ``name``."""
    for s in reads.list():
        if name in (s.name, s.id):
            what = "named" if s.name == name else f"({s.name}) has the id"
            return [Finding(rule=Rule.NAME_FREE, field="name", message=f"a schedule {what} {name!r} exists")]
    for r in pending if pending is not None else _pending(reads, exclude=exclude):
        if r.name == name:
            return [
                Finding(
                    rule=Rule.NAME_FREE,
                    field="name",
                    message=f"proposal {r.id} ({r.status}) already claims the name {name!r}",
                )
            ]
    return []


def check_quota(
    proposer: str, reads: ProposalReads, rules: ProposalRules = DEFAULT_RULES, *, exclude: str | None = None
) -> list[Finding]:
    """A finding when ``proposer`` already holds its quota of active (or approved) agent schedules."""
    live = {s.id for s in reads.list(source=ScheduleSource.AGENT.value, enabled=True)}
    active = sum(1 for r in reads.proposals(ProposalStatus.ACTIVE.value, proposed_by=proposer) if r.schedule_id in live)
    approved = sum(1 for r in reads.proposals(ProposalStatus.APPROVED.value, proposed_by=proposer) if r.id != exclude)
    held = active + approved
    if held >= rules.max_active_per_proposer:
        return [
            Finding(
                rule=Rule.QUOTA,
                field="proposed_by",
                message=f"{proposer} already has {held} active agent schedule(s); "
                f"at most {rules.max_active_per_proposer}",
            )
        ]
    return []


def _same_work(
    proposal: ScheduleProposal, reads: ProposalReads, pending: Iterable[ProposalRecord]
) -> builtins.list[Finding]:
    out: builtins.list[Finding] = []
    for s in reads.list():
        if s.target == proposal.target and s.params == proposal.params:
            out.append(
                Finding(
                    rule=Rule.SAME_WORK,
                    field="target",
                    message=f"schedule {s.name} already runs {proposal.target} with the same params",
                )
            )
    for r in pending:
        payload = r.payload if isinstance(r.payload, dict) else {}
        if payload.get("target") == proposal.target and (payload.get("params") or {}) == proposal.params:
            out.append(
                Finding(
                    rule=Rule.SAME_WORK,
                    field="target",
                    message=f"proposal {r.id} ({r.status}) would run {proposal.target} with the same params",
                )
            )
    return out


def _split(findings: Iterable[Finding]) -> tuple[tuple[Finding, ...], tuple[Finding, ...]]:
    items = list(findings)
    return tuple(f for f in items if f.rule in _SEMANTIC_RULES), tuple(
        f for f in items if f.rule not in _SEMANTIC_RULES
    )


def validate_proposal(
    data: Any,
    *,
    tasks: TaskRegistry,
    reads: ProposalReads,
    now: datetime,
    rules: ProposalRules = DEFAULT_RULES,
    typical_durations: Mapping[str, timedelta] | None = None,
    proposal_id: str | None = None,
) -> ValidationReport:
    """Validate a raw proposal and decide it; never raises for anything in ``data``, never writes.

    ``typical_durations`` gives the host's knowledge of how long each task runs (the longer of it
    and the proposal's own ``typical_duration_s`` is used). ``proposal_id`` is the proposal's own
    stored id when it is validated again, so its own name does not count as taken.
    """
    proposal, schema_errors, defaults = parse_proposal(data)
    if proposal is None:
        return ValidationReport(
            checked_at=now,
            schema_valid=False,
            semantic_valid=None,
            schema_errors=tuple(schema_errors),
            decision=Outcome.REJECT,
            decision_reason="rejected: does not fit the proposal format: " + _listed(schema_errors),
        )
    spec = tasks.get(proposal.target) if proposal.target in tasks else None
    found = _check_task(proposal, spec, tasks) + _check_params(proposal, rules)
    side_effects = spec.side_effects if spec is not None else ()
    found += check_bundle(proposal.bundle, side_effects, rules)
    bundle_name = choose_bundle(proposal.bundle, side_effects, rules)
    bundle = rules.bundles.get(bundle_name)
    if bundle is not None and proposal.bundle is None:
        defaults["bundle"] = bundle_name
    definition, invalid = _compile(proposal, params_ok=not any(f.rule is Rule.PARAMS_JSON for f in found))
    found += invalid
    simulation = None if definition is None else simulate(definition, now, _typical(proposal, typical_durations))
    judged = None
    if spec is not None and bundle is not None:
        judged = _judge(proposal, spec, bundle, simulation, rules=rules, defaults=defaults)
        found += check_limits(bundle.limits, judged.shape)
        if definition is not None:
            definition = definition.with_changes(
                max_retries=judged.shape.max_retries,
                breaker_threshold=judged.shape.breaker_threshold,
                risk_tier=judged.tier,
            )
    pending = _pending(reads, exclude=proposal_id)
    if definition is not None:
        found += check_name_free(proposal.name, reads, pending=pending)
    found += check_quota(proposal.proposed_by, reads, rules, exclude=proposal_id)
    semantic, policy = _split(found)
    if judged is None or bundle is None:
        verdict = Verdict(Outcome.REJECT, "rejected: " + _listed((*semantic, *policy)), (*semantic, *policy))
    else:
        verdict = decide(judged.tier, bundle, judged.shape, (*semantic, *policy))
    compiled = definition if verdict.outcome is not Outcome.REJECT else None
    return ValidationReport(
        checked_at=now,
        schema_valid=True,
        semantic_valid=not semantic,
        semantic_errors=semantic,
        policy_violations=policy,
        conflict_warnings=tuple(_warnings(proposal, simulation, reads, pending)) if definition is not None else (),
        defaults_applied=defaults,
        simulation=simulation,
        bundle=bundle_name if bundle is not None else None,
        risk_tier=judged.tier if judged is not None else None,
        tier_reason=judged.reason if judged is not None else None,
        decision=verdict.outcome,
        decision_reason=verdict.reason,
        hold_reasons=verdict.findings if verdict.outcome is Outcome.HOLD else (),
        schedule=None if compiled is None else _schedule_dict(compiled),
        definition=compiled,
        proposal=proposal,
    )


def _listed(findings: Iterable[Finding]) -> str:
    return "; ".join(f"{f.rule} ({f.field}): {f.message}" for f in findings)


def _check_task(proposal: ScheduleProposal, spec: TaskSpec | None, tasks: TaskRegistry) -> list[Finding]:
    """The target must be registered, and the capabilities asked for declared by it."""
    if spec is None:
        known = ", ".join(tasks.names()[:20]) or "(none)"
        message = f"no task named {short(proposal.target)} is registered; known: {known}"
        return [Finding(rule=Rule.TARGET_REGISTERED, field="target", message=message)]
    extra = [c for c in proposal.capabilities if c not in spec.capabilities]
    if not extra:
        return []
    declared = ", ".join(spec.capabilities) or "(none)"
    message = f"{short(extra)} not declared by task {spec.name}; it declares: {declared}"
    return [Finding(rule=Rule.CAPABILITY_SCOPE, field="capabilities", message=message)]


def _check_params(proposal: ScheduleProposal, rules: ProposalRules) -> list[Finding]:
    """The params must be a JSON object both stores hold, within the size limit."""
    limit = min(rules.max_params_bytes, limits.MAX_PARAMS_BYTES)
    try:
        limits.params_bytes("params", proposal.params, limit=limit)
    except TooLong as exc:
        return [Finding(rule=Rule.PARAMS_SIZE, field="params", message=exc.allowed)]
    except InvalidSchedule as exc:
        return [Finding(rule=Rule.PARAMS_JSON, field="params", message=f"{short(proposal.params)}: {exc.allowed}")]
    return []


def _compile(proposal: ScheduleProposal, *, params_ok: bool) -> tuple[ScheduleDefinition | None, list[Finding]]:
    """The definition with provisional counts, or the finding naming the field it refused."""
    try:
        definition = compile_definition(
            proposal if params_ok else _without_params(proposal),
            max_retries=proposal.max_retries or 0,
            breaker_threshold=proposal.breaker_threshold or DEFAULT_BREAKER_THRESHOLD,
        )
    except InvalidSchedule as exc:
        message = f"{short(exc.value)}: {exc.allowed}"
        return None, [Finding(rule=_definition_rule(exc.field), field=exc.field, message=message)]
    return definition, []


@dataclass(frozen=True, slots=True)
class _Judged:
    tier: RiskTier
    reason: str
    shape: Shape


def _judge(
    proposal: ScheduleProposal,
    spec: TaskSpec,
    bundle: PolicyBundle,
    simulation: Simulation | None,
    *,
    rules: ProposalRules,
    defaults: dict[str, Any],
) -> _Judged:
    """The effective tier, and the shape the limits look at with the tier's defaults filled in.

    A default never exceeds the auto-approval limits of the tier, so leaving a field out never
    makes a proposal wait for a human.
    """
    min_gap = simulation.min_gap if simulation is not None else None
    assessment = assess_tier(
        declared=spec.risk_tier,
        estimate=proposal.risk_estimate,
        bundle=bundle,
        side_effects=spec.side_effects,
        trigger_type=proposal.trigger_type,
        min_gap=min_gap,
        rules=rules,
    )
    tighter = bundle.auto_approve.get(assessment.tier, bundle.limits)
    retries = proposal.max_retries
    if retries is None:
        retries = defaults["max_retries"] = min(DEFAULT_MAX_RETRIES, bundle.limits.max_retries, tighter.max_retries)
    threshold = proposal.breaker_threshold
    if threshold is None:
        threshold = defaults["breaker_threshold"] = min(
            DEFAULT_BREAKER_THRESHOLD, bundle.limits.max_breaker_threshold, tighter.max_breaker_threshold
        )
    shape = Shape(
        min_gap=min_gap,
        max_retries=retries,
        timeout=proposal.timeout,
        breaker_threshold=threshold,
        concurrency=proposal.concurrency_policy,
        overlap_risk=simulation.overlap_risk if simulation is not None else False,
    )
    return _Judged(assessment.tier, assessment.reason, shape)


def _without_params(proposal: ScheduleProposal) -> ScheduleProposal:
    # Bad params are reported on their own; the rest of the definition is still checked.
    values = {f.name: getattr(proposal, f.name) for f in fields(proposal)}
    values["params"] = {}
    return ScheduleProposal(**values)


def _typical(proposal: ScheduleProposal, known: Mapping[str, timedelta] | None) -> timedelta | None:
    spans = [s for s in (proposal.typical_duration, (known or {}).get(proposal.target)) if s is not None]
    return max(spans) if spans else None


def _warnings(
    proposal: ScheduleProposal,
    simulation: Simulation | None,
    reads: ProposalReads,
    pending: Iterable[ProposalRecord],
) -> list[Finding]:
    out = list(_same_work(proposal, reads, pending))
    if simulation is None:
        return out
    if simulation.overlap_risk and simulation.typical_duration is not None and simulation.min_gap is not None:
        effect = {
            ConcurrencyPolicy.FORBID: "occurrences due while a run is in flight are skipped",
            ConcurrencyPolicy.ENQUEUE_ONE: "one occurrence waits, later ones are skipped",
            ConcurrencyPolicy.REPLACE: "each occurrence stops the run in flight",
            ConcurrencyPolicy.ALLOW: "runs pile up",
        }[proposal.concurrency_policy]
        out.append(
            Finding(
                rule=Rule.OVERLAP,
                field="typical_duration_s",
                message=f"a typical run ({describe_span(simulation.typical_duration)}) outlasts the "
                f"{describe_span(simulation.min_gap)} between fires: {effect}",
            )
        )
    if simulation.count_7d == 0:
        out.append(Finding(rule=Rule.NO_FIRE_SOON, field="expression", message=simulation.note))
    return out


def _schedule_dict(d: ScheduleDefinition) -> dict[str, Any]:
    return {
        "name": d.name,
        "trigger_type": d.trigger_type.value,
        "expression": d.expression,
        "timezone": d.timezone,
        "target": d.target,
        "params": d.params,
        "description": d.description,
        "missed_run_policy": d.missed_run_policy.value,
        "concurrency_policy": d.concurrency_policy.value,
        "shutdown_policy": d.shutdown_policy.value,
        "risk_tier": d.risk_tier.value,
        "max_retries": d.max_retries,
        "retry_backoff_s": d.retry_backoff.total_seconds(),
        "timeout_s": None if d.timeout is None else d.timeout.total_seconds(),
        "breaker_threshold": d.breaker_threshold,
        "source": d.source.value,
    }


# ---------------------------------------------------------------------- storing and deciding


def new_proposal_id() -> str:
    """A fresh random proposal id."""
    return "prop_" + uuid.uuid4().hex[:20]


def storable_payload(data: Any) -> dict[str, Any]:
    """The raw proposal as kept in its record: itself when it is a small JSON object both stores hold,
    else a bounded stand-in whose excerpt is escaped text (no NUL, no lone surrogate reaches the store)."""
    try:
        text = json.dumps(data, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return {"unstorable": True, "excerpt": short(data)}
    if len(text.encode()) > MAX_STORED_PAYLOAD_BYTES:
        # ASCII JSON: NUL and surrogates are escapes in it, plain text to the store.
        return {"truncated": True, "bytes": len(text.encode()), "excerpt": text[:STORED_EXCERPT_CHARS]}
    loaded = json.loads(text)
    if not limits.json_storable(loaded):
        return {"unstorable": True, "excerpt": short(data)}
    if not isinstance(data, dict):
        return {"not_an_object": loaded}
    stored: dict[str, Any] = loaded
    return stored


def _payload(data: Any, report: ValidationReport) -> dict[str, Any]:
    """The raw proposal as stored; a valid one that is not plain JSON (timedeltas...) in its JSON form,
    so that it can be validated again when a human approves it."""
    stored = storable_payload(data)
    if "unstorable" in stored and report.definition is not None and report.proposal is not None:
        return report.proposal.to_dict()
    return stored


def _label(value: Any, fallback: str) -> str:
    return limits.escaped(value, NAME_CHARS) if isinstance(value, str) and value else fallback


def is_overdue(record: ProposalRecord, now: datetime) -> bool:
    """True when ``record`` waits for approval past its ``expires_at``."""
    return (
        record.status == ProposalStatus.AWAITING_APPROVAL.value
        and record.expires_at is not None
        and now >= record.expires_at
    )


class ProposalService:
    """Submit, decide, approve, reject and expire proposals over one store and one task registry.

    ``typical_durations`` tells the overlap check how long tasks run; ``rules`` are the
    policy's bundles and limits; ``approvers`` the humans who may approve or reject (default:
    nobody). Time comes from ``clock`` (default: the store's).
    """

    def __init__(
        self,
        store: ScheduleStore,
        tasks: TaskRegistry,
        clock: Clock | None = None,
        *,
        rules: ProposalRules = DEFAULT_RULES,
        typical_durations: Mapping[str, timedelta] | None = None,
        approvers: Approvers | None = None,
    ) -> None:
        self.store = store
        self.tasks = tasks
        self.clock = clock or store.clock
        self.rules = rules
        self.typical_durations = dict(typical_durations or {})
        self.approvers = approvers or Approvers()

    def validate(self, data: Any, *, proposal_id: str | None = None) -> ValidationReport:
        """The report for ``data`` now; writes nothing."""
        return validate_proposal(
            data,
            tasks=self.tasks,
            reads=self.store,
            now=self.clock.now(),
            rules=self.rules,
            typical_durations=self.typical_durations,
            proposal_id=proposal_id,
        )

    def submit(self, data: Any, *, by: Caller | None = None) -> ProposalRecord:
        """Validate ``data``, store it with its report, then reject, hold or approve and activate it.

        ``by`` is the caller as its door established it, and the proposer: ``proposed_by`` may be
        left out, and any other identity is refused (InvalidProposal naming ``proposed_by``, nothing
        stored), since nobody may approve their own proposal. Without ``by`` (host code using the
        Python API) the payload's ``proposed_by`` is taken as given. Every other submission is
        stored, the invalid ones too (as ``rejected``, with the report that says why). Returns the
        record in its final status.
        """
        if by is not None:
            data = self._as_proposed_by(data, by)
        report = self.validate(data)
        raw = data if isinstance(data, Mapping) else {}
        record = self.store.save_proposal(
            ProposalRecord(
                id=new_proposal_id(),
                name=_label(raw.get("name"), "(unnamed)"),
                status=ProposalStatus.SUBMITTED.value,
                proposed_by=report.proposal.proposed_by
                if report.proposal is not None
                else _label(raw.get("proposed_by"), "(unknown)"),
                payload=_payload(data, report),
                report=report.to_dict(),
                created_at=report.checked_at,
            )
        )
        return self._apply(record, report)

    @staticmethod
    def _as_proposed_by(data: Any, by: Caller) -> Any:
        if not isinstance(data, Mapping):
            return data
        claimed = data.get("proposed_by")
        if claimed is not None and not same_identity(claimed, by.id):
            raise InvalidProposal(
                [
                    Finding(
                        rule=Rule.WRONG_TYPE,
                        field="proposed_by",
                        message=f"{short(claimed)} is not the caller {by.id!r}; leave it out: the caller proposes",
                    )
                ]
            )
        return {**data, "proposed_by": by.id}

    def decide(self, proposal_id: str) -> ProposalRecord:
        """Decide a proposal left ``submitted`` (a crash between storing and deciding): validate it again and apply."""
        record = self.get(proposal_id)
        if record.status != ProposalStatus.SUBMITTED.value:
            raise DecisionRefused(
                proposal_id, f"only a submitted proposal is decided by the policy; it is {record.status}"
            )
        report = self.validate(record.payload, proposal_id=record.id)
        return self._apply(record, report, store_report=True)

    def _apply(self, record: ProposalRecord, report: ValidationReport, *, store_report: bool = False) -> ProposalRecord:
        now = report.checked_at
        extra: dict[str, Any] = {"report": report.to_dict()} if store_report else {}
        log.info("proposal %s (%s by %s): %s", record.id, record.name, record.proposed_by, report.decision_reason)
        if report.decision is Outcome.REJECT:
            return self.store.transition_proposal(
                record, "reject", now=now, **_decided(POLICY, now), decision_reason=report.decision_reason, **extra
            )
        if report.decision is Outcome.HOLD:
            return self.store.transition_proposal(
                record,
                "hold",
                now=now,
                decision_reason=report.decision_reason,
                expires_at=now + self.rules.approval_ttl,
                **extra,
            )
        approved = self.store.transition_proposal(
            record, "approve", now=now, **_decided(POLICY, now), decision_reason=report.decision_reason, **extra
        )
        assert report.definition is not None
        return self._activate(approved, report.definition)

    def _activate(self, record: ProposalRecord, definition: ScheduleDefinition) -> ProposalRecord:
        try:
            schedule = self.store.activate_proposal(record, definition)
        except DuplicateSchedule:
            # Another schedule took the name between validation and activation; the proposal stays
            # approved without a schedule, visible in its row (``activate`` may be retried).
            log.warning(
                "proposal %s approved but not activated: the name %s was taken meanwhile", record.id, record.name
            )
            return self.get(record.id)
        log.info("proposal %s active as schedule %s (%s)", record.id, schedule.name, schedule.id)
        return self.get(record.id)

    def approve(self, proposal_id: str, *, by: Caller, reason: str = "") -> ProposalRecord:
        """A configured human approves a proposal waiting for approval; its schedule is created at once.

        Refused (DecisionRefused, nothing changed, one WARNING line) when ``by`` is not one of the
        ``approvers`` (an agent never is), when ``by`` proposed it (identities compared
        normalised), when a high-risk proposal is approved by an identity that proposes schedules
        itself, when the proposal no longer validates (a name taken meanwhile, a quota reached), and
        when it is not awaiting approval. An overdue one is expired and refused. The record names
        the approver, the door and the time.
        """
        self._entitled(proposal_id, by, "approve")
        _check_reason(reason)
        record = self.get(proposal_id)
        now = self.clock.now()
        if is_overdue(record, now):
            self._expire(record, now)
            raise DecisionRefused(proposal_id, f"it expired at {_iso(record.expires_at)}: propose it again")
        if record.status != ProposalStatus.AWAITING_APPROVAL.value:
            raise DecisionRefused(
                proposal_id, f"only a proposal awaiting approval can be approved; it is {record.status}"
            )
        if same_identity(by.id, record.proposed_by):
            self._refused(proposal_id, by, "approve", f"{by.id} proposed it and cannot approve it: it needs a human")
        report = self.validate(record.payload, proposal_id=record.id)
        high = RiskTier.HIGH in (report.risk_tier, (record.report or {}).get("risk_tier"))
        if high and self.store.proposals(proposed_by=by.id):  # stored proposers are normalised
            self._refused(
                proposal_id, by, "approve", f"{by.id} proposes schedules itself: a high-risk proposal needs a human"
            )
        if report.definition is None:
            raise DecisionRefused(proposal_id, "it no longer validates: " + _listed(report.findings))
        approved = self.store.transition_proposal(
            record, "approve", now=now, **_decided(by, now), decision_reason=reason or f"approved by {by.id}"
        )
        log.info("proposal %s approved by %s via %s: %s", record.id, by.id, by.door, reason or "no reason given")
        return self._activate(approved, report.definition)

    def _entitled(self, proposal_id: str, by: Caller, action: str) -> None:
        refusal = self.approvers.refusal(by)
        if refusal is not None:
            self._refused(proposal_id, by, action, refusal)

    def _refused(self, proposal_id: str, by: Caller, action: str, why: str) -> None:
        who = by.id if isinstance(by, Caller) else short(by)
        door = by.door.value if isinstance(by, Caller) else "?"
        log.warning("%s of proposal %s by %s via %s refused: %s", action, short(proposal_id), who, door, why)
        raise DecisionRefused(proposal_id, why)

    def activate(self, proposal_id: str) -> ProposalRecord:
        """Create the schedule of an approved proposal whose activation failed (a name taken meanwhile)."""
        record = self.get(proposal_id)
        if record.status != ProposalStatus.APPROVED.value:
            raise DecisionRefused(proposal_id, f"only an approved proposal can be activated; it is {record.status}")
        report = self.validate(record.payload, proposal_id=record.id)
        if report.definition is None:
            raise DecisionRefused(proposal_id, "it no longer validates: " + _listed(report.findings))
        return self._activate(record, report.definition)

    def reject(self, proposal_id: str, *, by: Caller, reason: str) -> ProposalRecord:
        """A configured human refuses a proposal that is submitted or awaiting approval, saying why.

        Refused like :meth:`approve` when ``by`` is not one of the approvers. The record names
        who rejected it, the door and the time.
        """
        self._entitled(proposal_id, by, "reject")
        _check_reason(reason)
        if not isinstance(reason, str) or not reason.strip():
            raise DecisionRefused(proposal_id, "say why it is rejected (reason)")
        record = self.get(proposal_id)
        now = self.clock.now()
        rejected = self.store.transition_proposal(
            record, "reject", now=now, **_decided(by, now), decision_reason=reason
        )
        log.info("proposal %s rejected by %s via %s: %s", record.id, by.id, by.door, reason)
        return rejected

    def expire_overdue(self, now: datetime | None = None) -> builtins.list[ProposalRecord]:
        """Expire every proposal that waited for approval past its ``expires_at``; returns them."""
        at = now or self.clock.now()
        out = []
        for record in self.store.proposals(ProposalStatus.AWAITING_APPROVAL.value):
            if is_overdue(record, at):
                expired = self._expire(record, at)
                if expired is not None:
                    out.append(expired)
        return out

    def _expire(self, record: ProposalRecord, now: datetime) -> ProposalRecord | None:
        try:
            expired = self.store.transition_proposal(
                record,
                "expire",
                now=now,
                **_decided(POLICY, now),
                decision_reason=f"expired: not approved by {_iso(record.expires_at)}",
            )
        except StaleState:
            return None  # decided by someone else meanwhile
        log.info("proposal %s expired: not approved by %s", record.id, _iso(record.expires_at))
        return expired

    def get(self, proposal_id: str) -> ProposalRecord:
        """The stored proposal; ProposalNotFound when there is none."""
        try:
            return self.store.get_proposal(proposal_id)
        except LookupError:
            raise ProposalNotFound(proposal_id) from None

    def list(self, status: str | None = None, *, proposed_by: str | None = None) -> builtins.list[ProposalRecord]:
        """Stored proposals, oldest first."""
        return self.store.proposals(status, proposed_by=proposed_by)


def _decided(by: Caller, now: datetime) -> dict[str, Any]:
    """The fields a decision records: who, through which door, when."""
    return {"decided_by": by.id, "decided_via": by.door.value, "decided_at": now}


def _check_reason(reason: Any) -> None:
    """InvalidSchedule naming ``reason`` when a given string cannot be stored (too long, control
    characters, NUL, lone surrogates); a missing or blank one is DecisionRefused's to say."""
    if isinstance(reason, str):
        limits.check_text("reason", reason, limits.REASON_CHARS)


def _iso(instant: datetime | None) -> str:
    return "-" if instant is None else instant.isoformat()
