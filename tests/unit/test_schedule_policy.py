"""Risk tiers, bundles and the auto-approval decision: pure tables, no store."""

from __future__ import annotations

from dataclasses import fields, replace
from datetime import timedelta

import pytest

from agent.scheduler.enums import ConcurrencyPolicy, RiskTier, TriggerType
from agent.scheduler.schedule_policy import (
    BUNDLES,
    DEFAULT_RULES,
    TIER_ORDER,
    Limits,
    Outcome,
    PolicyBundle,
    ProposalRules,
    Rule,
    Shape,
    assess_tier,
    check_bundle,
    check_limits,
    choose_bundle,
    decide,
    describe_span,
    highest,
)

LOW, MEDIUM, HIGH = RiskTier.LOW, RiskTier.MEDIUM, RiskTier.HIGH
MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)
MAINTENANCE, RECOVERY, MESSAGING = BUNDLES["maintenance"], BUNDLES["recovery"], BUNDLES["messaging"]


def shape(**overrides: object) -> Shape:
    """A shape inside every bundle's auto-approval limits: hourly, 1 retry, 5 minutes, breaker 3, forbid."""
    values: dict[str, object] = {
        "min_gap": HOUR,
        "max_retries": 1,
        "timeout": 5 * MIN,
        "breaker_threshold": 3,
        "concurrency": ConcurrencyPolicy.FORBID,
    }
    values.update(overrides)
    return Shape(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("declared", "estimate", "bundle", "side_effects", "trigger", "gap", "tier", "because"),
    [
        (LOW, LOW, MAINTENANCE, (), TriggerType.INTERVAL, HOUR, LOW, "the task declares low"),
        (MEDIUM, LOW, MAINTENANCE, (), TriggerType.INTERVAL, HOUR, MEDIUM, "the task declares medium"),
        (HIGH, LOW, MAINTENANCE, (), TriggerType.INTERVAL, HOUR, HIGH, "the task declares high"),
        (LOW, MEDIUM, MAINTENANCE, (), TriggerType.INTERVAL, HOUR, MEDIUM, "the proposer estimates medium"),
        (LOW, HIGH, MAINTENANCE, (), TriggerType.INTERVAL, HOUR, HIGH, "the proposer estimates high"),
        (LOW, LOW, MESSAGING, (), TriggerType.INTERVAL, HOUR, MEDIUM, "bundle messaging is at least medium"),
        (LOW, LOW, RECOVERY, (), TriggerType.INTERVAL, HOUR, MEDIUM, "bundle recovery is at least medium"),
        (LOW, LOW, MAINTENANCE, ("filesystem",), TriggerType.INTERVAL, HOUR, LOW, "the task declares low"),
        (LOW, LOW, MAINTENANCE, ("network",), TriggerType.INTERVAL, HOUR, MEDIUM, "side effect 'network' is medium"),
        (LOW, LOW, MAINTENANCE, ("payments",), TriggerType.INTERVAL, HOUR, HIGH, "side effect 'payments' is high"),
        (LOW, LOW, MAINTENANCE, ("teleport",), TriggerType.INTERVAL, HOUR, MEDIUM, "'teleport' is not known"),
        (LOW, LOW, MAINTENANCE, (), TriggerType.EVENT, None, MEDIUM, "event-triggered"),
        (LOW, LOW, MAINTENANCE, (), TriggerType.INTERVAL, 2 * MIN, MEDIUM, "fires every 2m"),
        (LOW, LOW, MAINTENANCE, (), TriggerType.INTERVAL, 5 * MIN, LOW, "the task declares low"),
        (LOW, LOW, MAINTENANCE, (), TriggerType.DELAY, None, LOW, "the task declares low"),
        # The estimate can raise the tier, never lower it.
        (HIGH, LOW, MAINTENANCE, (), TriggerType.INTERVAL, HOUR, HIGH, "the task declares high"),
        (MEDIUM, LOW, MESSAGING, ("payments",), TriggerType.EVENT, MIN, HIGH, "side effect 'payments' is high"),
    ],
)
def test_the_effective_tier_is_the_highest_contribution_and_says_why(
    declared: RiskTier,
    estimate: RiskTier,
    bundle: PolicyBundle,
    side_effects: tuple[str, ...],
    trigger: TriggerType,
    gap: timedelta | None,
    tier: RiskTier,
    because: str,
) -> None:
    assessment = assess_tier(
        declared=declared,
        estimate=estimate,
        bundle=bundle,
        side_effects=side_effects,
        trigger_type=trigger,
        min_gap=gap,
    )
    assert assessment.tier is tier
    assert assessment.reason.startswith(f"{tier}: ")
    assert because in assessment.reason
    assert len(assessment.contributions) >= 3


@pytest.mark.parametrize(
    ("tier", "bundle", "overrides", "outcome", "rules"),
    [
        # low: auto-approved within the bundle's low limits, else it waits.
        (LOW, MAINTENANCE, {}, Outcome.APPROVE, []),
        (LOW, MAINTENANCE, {"min_gap": 5 * MIN, "max_retries": 5}, Outcome.APPROVE, []),
        (LOW, MAINTENANCE, {"min_gap": 2 * MIN}, Outcome.HOLD, [Rule.MIN_INTERVAL]),
        (LOW, MAINTENANCE, {"timeout": 3 * HOUR}, Outcome.HOLD, [Rule.MAX_TIMEOUT]),
        (LOW, MAINTENANCE, {"min_gap": None}, Outcome.APPROVE, []),
        # medium: auto-approved only within the stricter limits.
        (MEDIUM, MAINTENANCE, {}, Outcome.APPROVE, []),
        (MEDIUM, MAINTENANCE, {"min_gap": 30 * MIN}, Outcome.HOLD, [Rule.MIN_INTERVAL]),
        (MEDIUM, MAINTENANCE, {"max_retries": 4}, Outcome.HOLD, [Rule.MAX_RETRIES]),
        (MEDIUM, MAINTENANCE, {"timeout": None}, Outcome.HOLD, [Rule.TIMEOUT_REQUIRED]),
        (MEDIUM, MAINTENANCE, {"breaker_threshold": 5}, Outcome.HOLD, [Rule.BREAKER]),
        (
            MEDIUM,
            MAINTENANCE,
            {"concurrency": ConcurrencyPolicy.ENQUEUE_ONE, "max_retries": 4},
            Outcome.HOLD,
            [Rule.MAX_RETRIES, Rule.CONCURRENCY],
        ),
        (MEDIUM, MESSAGING, {}, Outcome.APPROVE, []),
        (MEDIUM, MESSAGING, {"max_retries": 2}, Outcome.HOLD, [Rule.MAX_RETRIES]),
        (MEDIUM, RECOVERY, {"min_gap": 15 * MIN}, Outcome.APPROVE, []),
        # A tier a bundle does not auto-approve waits; high always waits.
        (LOW, RECOVERY, {}, Outcome.HOLD, [Rule.NO_AUTO_APPROVAL]),
        (HIGH, MAINTENANCE, {}, Outcome.HOLD, [Rule.HIGH_RISK]),
        (HIGH, MESSAGING, {"min_gap": 10 * HOUR}, Outcome.HOLD, [Rule.HIGH_RISK]),
    ],
)
def test_the_decision_for_each_tier(
    tier: RiskTier, bundle: PolicyBundle, overrides: dict[str, object], outcome: Outcome, rules: list[Rule]
) -> None:
    verdict = decide(tier, bundle, shape(**overrides))
    assert verdict.outcome is outcome
    assert [f.rule for f in verdict.findings] == rules
    if outcome is Outcome.APPROVE:
        assert verdict.reason == f"auto-approved: {tier} risk within the limits of bundle {bundle.name}"
    else:
        assert verdict.reason.startswith("waits for a human")
        assert all(r.value in verdict.reason for r in rules) or tier is HIGH


def test_any_violation_rejects_whatever_the_tier_and_names_the_rule() -> None:
    [violation] = check_limits(MAINTENANCE.limits, shape(max_retries=9))
    for tier in TIER_ORDER:
        verdict = decide(tier, MAINTENANCE, shape(max_retries=9), [violation])
        assert verdict.outcome is Outcome.REJECT
        assert verdict.findings == (violation,)
        assert verdict.reason == "rejected: max_retries (max_retries): 9 retries; at most 5 allowed"


LIMITS = Limits(
    min_interval=HOUR,
    max_retries=3,
    max_timeout=HOUR,
    max_breaker_threshold=3,
    concurrency=frozenset({ConcurrencyPolicy.FORBID, ConcurrencyPolicy.ALLOW}),
)


@pytest.mark.parametrize(
    ("overrides", "rule", "field", "message"),
    [
        ({"min_gap": 59 * MIN}, Rule.MIN_INTERVAL, "expression", "fires every 59m; at most every 1h allowed"),
        ({"max_retries": 4}, Rule.MAX_RETRIES, "max_retries", "4 retries; at most 3 allowed"),
        ({"timeout": None}, Rule.TIMEOUT_REQUIRED, "timeout_s", "a timeout is required (at most 1h)"),
        ({"timeout": HOUR + MIN}, Rule.MAX_TIMEOUT, "timeout_s", "timeout 1h1m; at most 1h allowed"),
        ({"breaker_threshold": 4}, Rule.BREAKER, "breaker_threshold", "the breaker opens after 4 failures"),
        (
            {"concurrency": ConcurrencyPolicy.REPLACE},
            Rule.CONCURRENCY,
            "concurrency_policy",
            "concurrency replace not allowed; one of: allow, forbid",
        ),
        (
            {"concurrency": ConcurrencyPolicy.ALLOW, "overlap_risk": True},
            Rule.OVERLAP,
            "concurrency_policy",
            "allow lets runs pile up",
        ),
    ],
)
def test_each_limit_names_its_rule_and_field(
    overrides: dict[str, object], rule: Rule, field: str, message: str
) -> None:
    [finding] = check_limits(LIMITS, shape(**overrides))
    assert (finding.rule, finding.field) == (rule, field)
    assert message in finding.message
    assert finding.to_dict() == {"rule": rule.value, "field": field, "message": finding.message}


def test_limits_on_the_boundary_pass() -> None:
    edge = shape(min_gap=HOUR, max_retries=3, timeout=HOUR, breaker_threshold=3)
    assert check_limits(LIMITS, edge) == []
    assert check_limits(LIMITS, shape(concurrency=ConcurrencyPolicy.FORBID, overlap_risk=True)) == []


@pytest.mark.parametrize(
    ("named", "side_effects", "chosen", "rules"),
    [
        (None, (), "maintenance", []),
        (None, ("filesystem",), "maintenance", []),
        (None, ("messaging",), "messaging", []),
        (None, ("network", "restart"), "recovery", []),
        ("recovery", (), "recovery", []),
        ("messaging", ("email",), "messaging", []),
        ("maintenance", ("messaging",), "maintenance", [Rule.BUNDLE_SCOPE]),
        ("lenient", (), "lenient", [Rule.BUNDLE_KNOWN]),
    ],
)
def test_the_bundle_is_named_or_implied_by_side_effects_and_cannot_be_dodged(
    named: str | None, side_effects: tuple[str, ...], chosen: str, rules: list[Rule]
) -> None:
    assert choose_bundle(named, side_effects) == chosen
    assert [f.rule for f in check_bundle(named, side_effects)] == rules
    assert all(f.field == "bundle" for f in check_bundle(named, side_effects))


def test_the_bundles_are_one_readable_table_and_auto_approval_is_never_looser_than_the_hard_limits() -> None:
    assert set(BUNDLES) == {"maintenance", "recovery", "messaging"}
    for bundle in BUNDLES.values():
        assert bundle.purpose and RiskTier.HIGH not in bundle.auto_approve
        for tier, auto in bundle.auto_approve.items():
            assert TIER_ORDER.index(tier) >= TIER_ORDER.index(bundle.floor) or tier is LOW
            assert auto.min_interval >= bundle.limits.min_interval
            assert auto.max_retries <= bundle.limits.max_retries
            assert auto.max_timeout <= bundle.limits.max_timeout
            assert auto.max_breaker_threshold <= bundle.limits.max_breaker_threshold
            assert auto.concurrency <= bundle.limits.concurrency
            assert ConcurrencyPolicy.ALLOW not in bundle.limits.concurrency
        medium = bundle.auto_approve.get(MEDIUM)
        low = bundle.auto_approve.get(LOW)
        if medium is not None and low is not None:
            assert medium.min_interval >= low.min_interval and medium.max_retries <= low.max_retries
        if medium is not None:
            # "at most hourly, at most 3 retries, a timeout, a circuit breaker" or stricter, per bundle
            assert medium.max_retries <= 3 and medium.max_breaker_threshold <= 3
    assert BUNDLES["maintenance"].auto_approve[MEDIUM].min_interval == HOUR
    assert BUNDLES["messaging"].auto_approve[MEDIUM].min_interval == HOUR
    # every field of the config types carries a docstring in the source
    import inspect

    import agent.scheduler.schedule_policy as module

    source = inspect.getsource(module)
    for cls in (Limits, PolicyBundle, ProposalRules):
        for f in fields(cls):
            after = source.split(f"    {f.name}: ", 1)[1].splitlines()[1:4]
            assert any(line.strip().startswith('"""') for line in after), f"{cls.__name__}.{f.name} has no docstring"


def test_high_risk_can_never_be_configured_to_auto_approve_and_rules_name_only_real_bundles() -> None:
    with pytest.raises(ValueError, match="high risk always waits for a human"):
        replace(MAINTENANCE, auto_approve={HIGH: MAINTENANCE.limits})
    with pytest.raises(ValueError, match="bundles that do not exist: nowhere"):
        ProposalRules(default_bundle="nowhere")
    with pytest.raises(TypeError):
        MAINTENANCE.auto_approve[HIGH] = MAINTENANCE.limits  # type: ignore[index]
    assert DEFAULT_RULES.approval_ttl == timedelta(hours=24)


def test_helpers() -> None:
    assert highest([]) is LOW
    assert highest([MEDIUM, LOW]) is MEDIUM
    assert highest([LOW, HIGH, MEDIUM]) is HIGH
    assert [describe_span(timedelta(seconds=s)) for s in (0.5, 90, 3600, 5400, 86400)] == [
        "0.5s",
        "1m30s",
        "1h",
        "1h30m",
        "1d",
    ]
