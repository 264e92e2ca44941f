"""Risk tiers, policy bundles and the auto-approval decision for agent-proposed schedules.

Every limit an agent's schedule must respect lives in :data:`BUNDLES` and :data:`DEFAULT_RULES`,
here and nowhere else. The functions are pure: they take what they judge as arguments and
return their verdict with its reason, which ends up in the proposal's report and row.

How a proposal is judged:

1. Its *effective tier* is the highest of the task's declared tier, the proposer's estimate,
   the bundle's floor, the tiers of the task's side effects and what its frequency implies
   (:func:`assess_tier`).
2. Anything beyond the bundle's hard ``limits`` is a violation: the proposal is rejected.
3. ``high`` always waits for a human. ``low`` and ``medium`` are approved without one only
   within the bundle's ``auto_approve`` limits for their tier; otherwise they wait
   (:func:`decide`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from types import MappingProxyType

from .enums import ConcurrencyPolicy, RiskTier, TriggerType

#: The tiers from least to most harmful.
TIER_ORDER: tuple[RiskTier, ...] = (RiskTier.LOW, RiskTier.MEDIUM, RiskTier.HIGH)


def highest(tiers: Iterable[RiskTier]) -> RiskTier:
    """The most harmful of ``tiers`` (``low`` for none)."""
    return max(tiers, key=TIER_ORDER.index, default=RiskTier.LOW)


class Rule(StrEnum):
    """The name of every check a proposal goes through; each finding names the one it broke."""

    #: The proposal is not a JSON object.
    NOT_AN_OBJECT = "not_an_object"
    #: A required field is missing.
    REQUIRED = "required"
    #: A field the proposal format does not have (a typo?).
    UNKNOWN_FIELD = "unknown_field"
    #: A field has the wrong type, or a value outside its allowed set.
    WRONG_TYPE = "wrong_type"
    #: A text field is longer than allowed.
    TOO_LONG = "too_long"
    #: The schedule name or target is not a valid name.
    NAME_VALID = "name_valid"
    #: The expression is not valid for the trigger type.
    EXPRESSION_VALID = "expression_valid"
    #: The timezone is not an IANA timezone.
    TIMEZONE_VALID = "timezone_valid"
    #: Another field the ScheduleDefinition refuses.
    DEFINITION_VALID = "definition_valid"
    #: The target must be a task registered in the TaskRegistry: agents cannot name arbitrary code.
    TARGET_REGISTERED = "target_registered"
    #: The capability scope asked for must be within what the target task declares.
    CAPABILITY_SCOPE = "capability_scope"
    #: The named policy bundle must exist.
    BUNDLE_KNOWN = "bundle_known"
    #: A task whose side effects imply a bundle must be proposed under that bundle.
    BUNDLE_SCOPE = "bundle_scope"
    #: The params must be a JSON object.
    PARAMS_JSON = "params_json"
    #: The params must stay under the size limit.
    PARAMS_SIZE = "params_size"
    #: The schedule may not fire more often than the minimum interval.
    MIN_INTERVAL = "min_interval"
    #: Retries are bounded.
    MAX_RETRIES = "max_retries"
    #: Every agent schedule needs a timeout.
    TIMEOUT_REQUIRED = "timeout_required"
    #: The timeout is bounded.
    MAX_TIMEOUT = "max_timeout"
    #: The circuit breaker must open after few enough consecutive failures.
    BREAKER = "breaker"
    #: Only some concurrency policies are allowed.
    CONCURRENCY = "concurrency"
    #: Runs that last longer than the interval must not pile up (warning, or violation with ``allow``).
    OVERLAP = "overlap"
    #: The name is not taken by a schedule or by a pending proposal.
    NAME_FREE = "name_free"
    #: A proposer holds at most so many active agent schedules.
    QUOTA = "quota"
    #: High risk: always waits for a human approval.
    HIGH_RISK = "high_risk"
    #: The tier has no auto-approval in this bundle.
    NO_AUTO_APPROVAL = "no_auto_approval"
    #: Another schedule or pending proposal already runs the same task with the same params (warning).
    SAME_WORK = "same_work"
    #: A time-based schedule that would not fire within the next 7 days (warning).
    NO_FIRE_SOON = "no_fire_soon"


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One broken rule (or warning): which rule, which field to fix, and what is wrong in words."""

    rule: Rule
    field: str
    message: str

    def to_dict(self) -> dict[str, str]:
        """The finding as JSON."""
        return {"rule": self.rule.value, "field": self.field, "message": self.message}


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Bounds on a proposed schedule; the same shape serves hard limits and auto-approval limits."""

    min_interval: timedelta
    """The shortest gap allowed between two fires (the smallest gap over the next week)."""
    max_retries: int
    """The most retries after a failed attempt."""
    max_timeout: timedelta
    """The longest timeout a run may have; a timeout is always required."""
    max_breaker_threshold: int
    """The circuit breaker must open after at most this many consecutive failed runs."""
    concurrency: frozenset[ConcurrencyPolicy]
    """The concurrency policies allowed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyBundle:
    """Named limits for one kind of work; a proposal names its bundle or gets one by its task."""

    name: str
    """How a proposal names it (``"bundle": "maintenance"``)."""
    purpose: str
    """What kind of work it is for, in words."""
    floor: RiskTier
    """The least tier work under this bundle has, whatever the task and the proposer say."""
    limits: Limits
    """Bounds for every proposal under the bundle, whatever its tier; beyond them it is rejected."""
    auto_approve: Mapping[RiskTier, Limits]
    """Per tier, the bounds within which a proposal is approved without a human. A tier that is
    missing always waits for a human; ``high`` may never be here."""

    def __post_init__(self) -> None:
        if RiskTier.HIGH in self.auto_approve:
            raise ValueError(f"bundle {self.name!r}: high risk always waits for a human, it has no auto-approval")
        object.__setattr__(self, "auto_approve", MappingProxyType(dict(self.auto_approve)))


_QUEUEING = frozenset({ConcurrencyPolicy.FORBID, ConcurrencyPolicy.ENQUEUE_ONE, ConcurrencyPolicy.REPLACE})
_FORBID = frozenset({ConcurrencyPolicy.FORBID})
_MIN = timedelta(minutes=1)
_HOUR = timedelta(hours=1)

#: The policy bundles, by name. ``allow`` concurrency is never in them: agent schedules may not pile up runs.
BUNDLES: Mapping[str, PolicyBundle] = MappingProxyType(
    {
        b.name: b
        for b in (
            PolicyBundle(
                name="maintenance",
                purpose="local, reversible housekeeping: cleanup, compaction, syncs of our own data",
                floor=RiskTier.LOW,
                limits=Limits(
                    min_interval=_MIN,
                    max_retries=5,
                    max_timeout=6 * _HOUR,
                    max_breaker_threshold=5,
                    concurrency=_QUEUEING,
                ),
                auto_approve={
                    RiskTier.LOW: Limits(
                        min_interval=5 * _MIN,
                        max_retries=5,
                        max_timeout=2 * _HOUR,
                        max_breaker_threshold=5,
                        concurrency=_QUEUEING,
                    ),
                    RiskTier.MEDIUM: Limits(
                        min_interval=_HOUR,
                        max_retries=3,
                        max_timeout=_HOUR,
                        max_breaker_threshold=3,
                        concurrency=_FORBID,
                    ),
                },
            ),
            PolicyBundle(
                name="recovery",
                purpose="re-driving stuck or failed work: requeues, restarts, reconciliation sweeps",
                floor=RiskTier.MEDIUM,
                limits=Limits(
                    min_interval=_MIN,
                    max_retries=3,
                    max_timeout=_HOUR,
                    max_breaker_threshold=3,
                    concurrency=frozenset({ConcurrencyPolicy.FORBID, ConcurrencyPolicy.ENQUEUE_ONE}),
                ),
                auto_approve={
                    RiskTier.MEDIUM: Limits(
                        min_interval=15 * _MIN,
                        max_retries=2,
                        max_timeout=30 * _MIN,
                        max_breaker_threshold=3,
                        concurrency=_FORBID,
                    ),
                },
            ),
            PolicyBundle(
                name="messaging",
                purpose="reaching people or outside systems: Telegram, email, webhooks",
                floor=RiskTier.MEDIUM,
                limits=Limits(
                    min_interval=15 * _MIN,
                    max_retries=2,
                    max_timeout=15 * _MIN,
                    max_breaker_threshold=3,
                    concurrency=_FORBID,
                ),
                auto_approve={
                    RiskTier.MEDIUM: Limits(
                        min_interval=_HOUR,
                        max_retries=1,
                        max_timeout=5 * _MIN,
                        max_breaker_threshold=3,
                        concurrency=_FORBID,
                    ),
                },
            ),
        )
    }
)


#: A task's declared side effect -> the bundle its proposals fall under (the first match wins).
BUNDLE_BY_SIDE_EFFECT: Mapping[str, str] = MappingProxyType(
    {
        "messaging": "messaging",
        "notification": "messaging",
        "email": "messaging",
        "webhook": "messaging",
        "recovery": "recovery",
        "restart": "recovery",
        "requeue": "recovery",
    }
)

#: The tier a declared side effect implies; one not listed here gets ``unknown_side_effect_tier``.
TIER_BY_SIDE_EFFECT: Mapping[str, RiskTier] = MappingProxyType(
    {
        "filesystem": RiskTier.LOW,
        "database": RiskTier.LOW,
        "network": RiskTier.MEDIUM,
        "messaging": RiskTier.MEDIUM,
        "notification": RiskTier.MEDIUM,
        "email": RiskTier.MEDIUM,
        "webhook": RiskTier.MEDIUM,
        "recovery": RiskTier.MEDIUM,
        "restart": RiskTier.MEDIUM,
        "requeue": RiskTier.MEDIUM,
        "payments": RiskTier.HIGH,
        "deletion": RiskTier.HIGH,
        "deploy": RiskTier.HIGH,
        "credentials": RiskTier.HIGH,
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProposalRules:
    """Everything that governs agent proposals: the bundles and the rules common to all of them."""

    bundles: Mapping[str, PolicyBundle] = field(default_factory=lambda: BUNDLES)
    """The bundles a proposal may name."""
    default_bundle: str = "maintenance"
    """The bundle of a proposal that names none and whose task's side effects imply none."""
    bundle_by_side_effect: Mapping[str, str] = field(default_factory=lambda: BUNDLE_BY_SIDE_EFFECT)
    """A task's declared side effect -> the bundle its proposals fall under (the first match wins)."""
    tier_by_side_effect: Mapping[str, RiskTier] = field(default_factory=lambda: TIER_BY_SIDE_EFFECT)
    """The tier a declared side effect implies."""
    unknown_side_effect_tier: RiskTier = RiskTier.MEDIUM
    """The tier of a side effect not in ``tier_by_side_effect``: what we cannot name, we do not wave through."""
    frequent: timedelta = timedelta(minutes=5)
    """Firing more often than this makes the work at least ``medium``."""
    unbounded_frequency_tier: RiskTier = RiskTier.MEDIUM
    """The least tier of event-triggered work, which fires as often as its event is emitted."""
    max_active_per_proposer: int = 10
    """Active (or approved, about to be active) agent schedules one proposer may hold."""
    max_params_bytes: int = 8 * 1024
    """The largest ``params`` of a proposal, as JSON."""
    approval_ttl: timedelta = timedelta(hours=24)
    """How long a proposal waits for a human; then it expires and can no longer be approved."""

    def __post_init__(self) -> None:
        named = [self.default_bundle, *self.bundle_by_side_effect.values()]
        missing = sorted({n for n in named if n not in self.bundles})
        if missing:
            raise ValueError(f"proposal rules name bundles that do not exist: {', '.join(missing)}")


#: The rules in force unless a host passes its own.
DEFAULT_RULES = ProposalRules()


@dataclass(frozen=True, slots=True, kw_only=True)
class Shape:
    """What the limits look at in a compiled proposal."""

    min_gap: timedelta | None
    """The smallest gap between two fires over the next week; None when it fires at most once or on events."""
    max_retries: int
    timeout: timedelta | None
    breaker_threshold: int
    concurrency: ConcurrencyPolicy
    overlap_risk: bool = False
    """True when a typical run lasts longer than ``min_gap``."""


def choose_bundle(named: str | None, side_effects: Iterable[str], rules: ProposalRules = DEFAULT_RULES) -> str:
    """The bundle of a proposal: the one it names, else the one its task's side effects imply, else the default."""
    if named is not None:
        return named
    implied = implied_bundle(side_effects, rules)
    return implied if implied is not None else rules.default_bundle


def implied_bundle(side_effects: Iterable[str], rules: ProposalRules = DEFAULT_RULES) -> str | None:
    """The bundle the first mapped side effect implies, or None."""
    for effect in side_effects:
        if effect in rules.bundle_by_side_effect:
            return rules.bundle_by_side_effect[effect]
    return None


def check_bundle(named: str | None, side_effects: Iterable[str], rules: ProposalRules = DEFAULT_RULES) -> list[Finding]:
    """Findings for a named bundle that does not exist or does not fit the task's side effects."""
    if named is None:
        return []
    if named not in rules.bundles:
        known = ", ".join(sorted(rules.bundles))
        return [Finding(rule=Rule.BUNDLE_KNOWN, field="bundle", message=f"no bundle {named!r}; known: {known}")]
    implied = implied_bundle(side_effects, rules)
    if implied is not None and implied != named:
        return [
            Finding(
                rule=Rule.BUNDLE_SCOPE,
                field="bundle",
                message=f"the task's side effects put it under bundle {implied!r}, not {named!r}",
            )
        ]
    return []


@dataclass(frozen=True, slots=True)
class TierAssessment:
    """The effective tier and what contributed to it, in words."""

    tier: RiskTier
    reason: str
    contributions: tuple[str, ...]


def assess_tier(
    *,
    declared: RiskTier,
    estimate: RiskTier,
    bundle: PolicyBundle,
    side_effects: Iterable[str],
    trigger_type: TriggerType,
    min_gap: timedelta | None,
    rules: ProposalRules = DEFAULT_RULES,
) -> TierAssessment:
    """The highest of the task's declared tier, the proposer's estimate and what the policy derives."""
    parts: list[tuple[RiskTier, str]] = [
        (declared, f"the task declares {declared}"),
        (estimate, f"the proposer estimates {estimate}"),
        (bundle.floor, f"bundle {bundle.name} is at least {bundle.floor}"),
    ]
    for effect in side_effects:
        tier = rules.tier_by_side_effect.get(effect)
        if tier is None:
            parts.append((rules.unknown_side_effect_tier, f"side effect {effect!r} is not known to the policy"))
        else:
            parts.append((tier, f"side effect {effect!r} is {tier}"))
    if trigger_type is TriggerType.EVENT:
        parts.append((rules.unbounded_frequency_tier, "event-triggered: fires as often as the event is emitted"))
    if min_gap is not None and min_gap < rules.frequent:
        parts.append(
            (
                RiskTier.MEDIUM,
                f"fires every {describe_span(min_gap)}, more often than every {describe_span(rules.frequent)}",
            )
        )
    tier = highest(t for t, _ in parts)
    why = [text for t, text in parts if t is tier]
    return TierAssessment(tier, f"{tier}: " + "; ".join(why), tuple(f"{t}: {text}" for t, text in parts))


def check_limits(limits: Limits, shape: Shape) -> list[Finding]:
    """Each bound of ``limits`` that ``shape`` exceeds, naming its rule and field."""
    out: list[Finding] = []
    if shape.min_gap is not None and shape.min_gap < limits.min_interval:
        out.append(
            Finding(
                rule=Rule.MIN_INTERVAL,
                field="expression",
                message=f"fires every {describe_span(shape.min_gap)}; "
                f"at most every {describe_span(limits.min_interval)} allowed",
            )
        )
    if shape.max_retries > limits.max_retries:
        out.append(
            Finding(
                rule=Rule.MAX_RETRIES,
                field="max_retries",
                message=f"{shape.max_retries} retries; at most {limits.max_retries} allowed",
            )
        )
    if shape.timeout is None:
        out.append(
            Finding(
                rule=Rule.TIMEOUT_REQUIRED,
                field="timeout_s",
                message=f"a timeout is required (at most {describe_span(limits.max_timeout)})",
            )
        )
    elif shape.timeout > limits.max_timeout:
        out.append(
            Finding(
                rule=Rule.MAX_TIMEOUT,
                field="timeout_s",
                message=f"timeout {describe_span(shape.timeout)}; at most {describe_span(limits.max_timeout)} allowed",
            )
        )
    if shape.breaker_threshold > limits.max_breaker_threshold:
        out.append(
            Finding(
                rule=Rule.BREAKER,
                field="breaker_threshold",
                message=f"the breaker opens after {shape.breaker_threshold} failures; "
                f"at most {limits.max_breaker_threshold} allowed",
            )
        )
    if shape.concurrency not in limits.concurrency:
        allowed = ", ".join(sorted(p.value for p in limits.concurrency))
        out.append(
            Finding(
                rule=Rule.CONCURRENCY,
                field="concurrency_policy",
                message=f"concurrency {shape.concurrency.value} not allowed; one of: {allowed}",
            )
        )
    if shape.overlap_risk and shape.concurrency is ConcurrencyPolicy.ALLOW:
        out.append(
            Finding(
                rule=Rule.OVERLAP,
                field="concurrency_policy",
                message="a typical run outlasts the interval and allow lets runs pile up",
            )
        )
    return out


class Outcome(StrEnum):
    """What becomes of a proposal: the proposal machine's trigger that follows submission."""

    #: Approved without a human; activation follows.
    APPROVE = "approve"
    #: Waits for a human approval.
    HOLD = "hold"
    #: Refused; the findings say why.
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The decision on a proposal, its reason, and the findings behind a hold or a rejection."""

    outcome: Outcome
    reason: str
    findings: tuple[Finding, ...] = ()


def decide(tier: RiskTier, bundle: PolicyBundle, shape: Shape, violations: Iterable[Finding] = ()) -> Verdict:
    """Reject with violations; hold ``high``, and any tier outside its auto-approval limits; else approve."""
    broken = tuple(violations)
    if broken:
        return Verdict(Outcome.REJECT, "rejected: " + _listed(broken), broken)
    if tier is RiskTier.HIGH:
        finding = Finding(rule=Rule.HIGH_RISK, field="risk_tier", message="high risk always waits for a human")
        return Verdict(Outcome.HOLD, "waits for a human: " + _listed([finding]), (finding,))
    auto = bundle.auto_approve.get(tier)
    if auto is None:
        finding = Finding(
            rule=Rule.NO_AUTO_APPROVAL,
            field="risk_tier",
            message=f"bundle {bundle.name} auto-approves no {tier} work",
        )
        return Verdict(Outcome.HOLD, "waits for a human: " + _listed([finding]), (finding,))
    beyond = tuple(check_limits(auto, shape))
    if beyond:
        return Verdict(
            Outcome.HOLD,
            f"waits for a human: {tier} risk outside the auto-approval limits of bundle {bundle.name}: "
            + _listed(beyond),
            beyond,
        )
    return Verdict(Outcome.APPROVE, f"auto-approved: {tier} risk within the limits of bundle {bundle.name}")


def _listed(findings: Iterable[Finding]) -> str:
    return "; ".join(f"{f.rule} ({f.field}): {f.message}" for f in findings)


def describe_span(delta: timedelta) -> str:
    """``90s``, ``15m``, ``2h``, ``1d`` or a mix such as ``1h30m``; under a second as ``0.5s``."""
    seconds = delta.total_seconds()
    if seconds < 1:
        return f"{seconds:g}s"
    whole = int(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return "".join(parts)
