"""Proposal validation without a database: every rule by a table, the report, and random junk thrown at it."""

from __future__ import annotations

import builtins
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from agent.scheduler import ScheduleDefinition
from agent.scheduler.enums import RiskTier, ScheduleSource
from agent.scheduler.proposals import (
    InvalidProposal,
    ScheduleProposal,
    ValidationReport,
    compile_definition,
    parse_proposal,
    storable_payload,
    validate_proposal,
)
from agent.scheduler.records import ProposalRecord
from agent.scheduler.schedule_policy import Outcome, ProposalRules, Rule
from agent.scheduler.tasks import RunContext, TaskRegistry

NOW = datetime(2027, 3, 13, 12, 0, tzinfo=UTC)
DROP = object()


def noop(ctx: RunContext) -> str:
    return "ok"


def registry() -> TaskRegistry:
    tasks = TaskRegistry()
    tasks.add("sweep", noop, capabilities=["fs:tmp", "fs:cache"])
    tasks.add("compact", noop, risk_tier="medium", side_effects=["database"])
    tasks.add("notify", noop, side_effects=["messaging"], capabilities=["telegram:send"])
    tasks.add("requeue_stuck", noop, side_effects=["requeue"])
    tasks.add("payout", noop, risk_tier="high", side_effects=["payments"])
    return tasks


@dataclass
class FakeReads:
    """The store's read side in memory; records every call, so a test can see nothing else was asked."""

    schedules: builtins.list[ScheduleDefinition] = field(default_factory=builtins.list)
    records: builtins.list[ProposalRecord] = field(default_factory=builtins.list)
    calls: builtins.list[str] = field(default_factory=builtins.list)

    def list(
        self, *, enabled: bool | None = None, source: str | None = None, trigger_type: str | None = None
    ) -> builtins.list[ScheduleDefinition]:
        self.calls.append("list")
        return [
            s
            for s in self.schedules
            if (enabled is None or s.enabled == enabled) and (source is None or s.source == source)
        ]

    def proposals(self, status: str | None = None, *, proposed_by: str | None = None) -> builtins.list[ProposalRecord]:
        self.calls.append("proposals")
        return [
            r
            for r in self.records
            if (status is None or r.status == status) and (proposed_by is None or r.proposed_by == proposed_by)
        ]


def proposal(**overrides: Any) -> dict[str, Any]:
    """A valid low-risk proposal: sweep every 30 minutes with a 5-minute timeout; DROP removes a key."""
    data: dict[str, Any] = {
        "name": "tmp_sweep",
        "trigger_type": "interval",
        "expression": "30m",
        "target": "sweep",
        "objective": "keep /tmp small",
        "proposed_by": "agent-7",
        "timeout_s": 300,
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not DROP}


def validate(data: Any, reads: FakeReads | None = None, **kw: Any) -> ValidationReport:
    return validate_proposal(data, tasks=registry(), reads=reads or FakeReads(), now=NOW, **kw)


def agent_schedule(name: str, **kw: Any) -> ScheduleDefinition:
    kw.setdefault("target", "sweep")
    return ScheduleDefinition(name=name, trigger_type="interval", expression="1h", source="agent", **kw)


def record(pid: str, name: str, status: str, proposed_by: str = "agent-7", **kw: Any) -> ProposalRecord:
    return ProposalRecord(
        id=pid, name=name, status=status, proposed_by=proposed_by, payload=kw.pop("payload", {}), **kw
    )


def quota_full() -> FakeReads:
    schedules = [agent_schedule(f"s{i}", id=f"sch_{i}") for i in range(10)]
    records = [record(f"p{i}", f"s{i}", "active", schedule_id=f"sch_{i}") for i in range(10)]
    return FakeReads(schedules=schedules, records=records)


def test_a_valid_low_risk_proposal_is_auto_approved_with_a_complete_report() -> None:
    report = validate(proposal())
    assert (report.schema_valid, report.semantic_valid, report.decision, report.approved) == (
        True,
        True,
        Outcome.APPROVE,
        True,
    )
    assert report.findings == () and report.conflict_warnings == () and report.hold_reasons == ()
    assert (report.bundle, report.risk_tier) == ("maintenance", RiskTier.LOW)
    assert report.decision_reason == "auto-approved: low risk within the limits of bundle maintenance"
    assert report.defaults_applied == {
        "timezone": "UTC",
        "params": {},
        "missed_run_policy": "skip",
        "concurrency_policy": "forbid",
        "shutdown_policy": "graceful_finish",
        "retry_backoff_s": 30.0,
        "risk_estimate": "low",
        "capabilities": [],
        "bundle": "maintenance",
        "max_retries": 3,
        "breaker_threshold": 3,
    }
    sim = report.simulation
    assert sim is not None
    assert (sim.count_24h, sim.count_7d, sim.runs_per_day, sim.min_gap) == (48, 336, 48.0, timedelta(minutes=30))
    assert sim.fires_24h[:2] == (NOW + timedelta(minutes=30), NOW + timedelta(hours=1))
    assert len(sim.fires_24h) == 24 and len(sim.fires_7d) == 7  # the first fire of each day
    d = report.definition
    assert d is not None
    assert (d.source, d.risk_tier, d.timeout, d.max_retries, d.description) == (
        ScheduleSource.AGENT,
        RiskTier.LOW,
        timedelta(minutes=5),
        3,
        "keep /tmp small",
    )
    data = report.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["schedule"]["name"] == "tmp_sweep" and data["approved"] is True
    assert set(data) >= {
        "schema_valid",
        "semantic_valid",
        "policy_violations",
        "conflict_warnings",
        "defaults_applied",
        "simulation",
        "risk_tier",
        "approved",
    }


HUGE = "x" * 100_000


def deep(levels: int = 3000) -> dict[str, Any]:
    """A dict nested deeper than the interpreter's recursion limit."""
    top: dict[str, Any] = {}
    cursor = top
    for _ in range(levels):
        cursor["a"] = {}
        cursor = cursor["a"]
    return top


DEEP = deep()

#: Each table: (case, rule, field, the proposal[, what the store holds]), by where the finding is reported.
SCHEMA_CASES: list[tuple[Any, ...]] = [
    ("not an object", Rule.NOT_AN_OBJECT, "", ["name", "x"]),
    ("not an object either", Rule.NOT_AN_OBJECT, "", "propose me"),
    ("missing name", Rule.REQUIRED, "name", proposal(name=DROP)),
    ("missing objective", Rule.REQUIRED, "objective", proposal(objective=DROP)),
    ("blank objective", Rule.WRONG_TYPE, "objective", proposal(objective="  ")),
    ("null proposer", Rule.REQUIRED, "proposed_by", proposal(proposed_by=None)),
    ("typo", Rule.UNKNOWN_FIELD, "max_retry", proposal(max_retry=2)),
    ("non-string key", Rule.UNKNOWN_FIELD, "7", {**proposal(), 7: "x"}),
    ("trigger type", Rule.WRONG_TYPE, "trigger_type", proposal(trigger_type="hourly")),
    ("name type", Rule.WRONG_TYPE, "name", proposal(name=["a"])),
    ("params type", Rule.WRONG_TYPE, "params", proposal(params=[1, 2])),
    ("timeout text", Rule.WRONG_TYPE, "timeout_s", proposal(timeout_s="soon")),
    ("timeout zero", Rule.WRONG_TYPE, "timeout_s", proposal(timeout_s=0)),
    ("timeout bool", Rule.WRONG_TYPE, "timeout_s", proposal(timeout_s=True)),
    ("timeout nan", Rule.WRONG_TYPE, "timeout_s", proposal(timeout_s=math.nan)),
    ("timeout huge int", Rule.WRONG_TYPE, "timeout_s", proposal(timeout_s=10**5000)),
    ("retries negative", Rule.WRONG_TYPE, "max_retries", proposal(max_retries=-1)),
    ("retries float", Rule.WRONG_TYPE, "max_retries", proposal(max_retries=2.5)),
    ("breaker zero", Rule.WRONG_TYPE, "breaker_threshold", proposal(breaker_threshold=0)),
    ("estimate", Rule.WRONG_TYPE, "risk_estimate", proposal(risk_estimate="tiny")),
    ("policy", Rule.WRONG_TYPE, "missed_run_policy", proposal(missed_run_policy="later")),
    ("capabilities", Rule.WRONG_TYPE, "capabilities", proposal(capabilities="fs:tmp")),
    ("proposer id", Rule.WRONG_TYPE, "proposed_by", proposal(proposed_by="agent 7!")),
    ("huge expression", Rule.TOO_LONG, "expression", proposal(expression=HUGE)),
    ("huge name", Rule.TOO_LONG, "name", proposal(name=HUGE)),
    ("huge objective", Rule.TOO_LONG, "objective", proposal(objective=HUGE)),
]
SEMANTIC_CASES: list[tuple[Any, ...]] = [
    ("name pattern", Rule.NAME_VALID, "name", proposal(name="no spaces allowed")),
    ("bad cron", Rule.EXPRESSION_VALID, "expression", proposal(trigger_type="calendar", expression="61 * * * *")),
    ("bad interval", Rule.EXPRESSION_VALID, "expression", proposal(expression="every 5 minutes")),
    ("bad delay", Rule.EXPRESSION_VALID, "expression", proposal(trigger_type="delay", expression="tomorrow")),
    (
        "bad zone",
        Rule.TIMEZONE_VALID,
        "timezone",
        proposal(trigger_type="calendar", expression="@daily", timezone="Mars/X"),
    ),
    ("unknown task", Rule.TARGET_REGISTERED, "target", proposal(target="os.system")),
    ("unknown bundle", Rule.BUNDLE_KNOWN, "bundle", proposal(bundle="lenient")),
    ("params set", Rule.PARAMS_JSON, "params", proposal(params={"x": {1, 2}})),
    ("params nan", Rule.PARAMS_JSON, "params", proposal(params={"x": math.nan})),
    ("params int keys", Rule.PARAMS_JSON, "params", proposal(params={1: "x"})),
    ("params too deep", Rule.PARAMS_JSON, "params", proposal(params=DEEP)),
]
POLICY_CASES: list[tuple[Any, ...]] = [
    ("params too big", Rule.PARAMS_SIZE, "params", proposal(params={"blob": "x" * 9000})),
    ("capability scope", Rule.CAPABILITY_SCOPE, "capabilities", proposal(capabilities=["fs:tmp", "net:any"])),
    ("bundle dodge", Rule.BUNDLE_SCOPE, "bundle", proposal(target="notify", bundle="maintenance")),
    ("too often", Rule.MIN_INTERVAL, "expression", proposal(expression="30s")),
    ("too often cron", Rule.MIN_INTERVAL, "expression", proposal(trigger_type="calendar", expression="*/20 * * * * *")),
    ("retries unbounded", Rule.MAX_RETRIES, "max_retries", proposal(max_retries=50)),
    ("no timeout", Rule.TIMEOUT_REQUIRED, "timeout_s", proposal(timeout_s=DROP)),
    ("timeout too long", Rule.MAX_TIMEOUT, "timeout_s", proposal(timeout_s="1d")),
    ("breaker too lax", Rule.BREAKER, "breaker_threshold", proposal(breaker_threshold=50)),
    ("piling up", Rule.CONCURRENCY, "concurrency_policy", proposal(concurrency_policy="allow")),
    ("overlap", Rule.OVERLAP, "concurrency_policy", proposal(concurrency_policy="allow", typical_duration_s="2h")),
    ("schedule has the name", Rule.NAME_FREE, "name", proposal(), FakeReads(schedules=[agent_schedule("tmp_sweep")])),
    (
        "proposal claims the name",
        Rule.NAME_FREE,
        "name",
        proposal(),
        FakeReads(records=[record("p1", "tmp_sweep", "awaiting_approval", "agent-9")]),
    ),
    ("quota", Rule.QUOTA, "proposed_by", proposal(), quota_full()),
]
RULE_CASES = [
    pytest.param(*case[3:], *([None] * (5 - len(case))), case[1], case[2], where, id=case[0])
    for where, table in (("schema", SCHEMA_CASES), ("semantic", SEMANTIC_CASES), ("policy", POLICY_CASES))
    for case in table
]


@pytest.mark.parametrize(
    ("data", "reads", "rule", "field", "where"),
    RULE_CASES,
)
def test_every_rule_rejects_naming_itself_and_the_field(
    data: Any, reads: FakeReads | None, rule: Rule, field: str, where: str
) -> None:
    report = validate(data, reads)
    assert report.decision is Outcome.REJECT and not report.approved and not report.valid
    assert report.definition is None and report.schedule is None
    found = {
        "schema": report.schema_errors,
        "semantic": report.semantic_errors,
        "policy": report.policy_violations,
    }[where]
    assert (rule, field) in [(f.rule, f.field) for f in found], report.findings
    assert f"{rule.value} ({field})" in report.decision_reason
    assert report.schema_valid is (where != "schema")
    assert report.semantic_valid is (None if where == "schema" else where != "semantic")
    assert all(len(f.message) < 600 for f in report.findings)
    json.dumps(report.to_dict())


def test_every_rule_that_can_reject_has_a_case() -> None:
    covered = {case[1] for table in (SCHEMA_CASES, SEMANTIC_CASES, POLICY_CASES) for case in table}
    never_reject = {Rule.HIGH_RISK, Rule.NO_AUTO_APPROVAL, Rule.SAME_WORK, Rule.NO_FIRE_SOON}
    # DEFINITION_VALID guards fields the schema already checks; it stays as a safety net.
    assert set(Rule) - never_reject - {Rule.DEFINITION_VALID} == covered


def test_a_schema_error_stops_before_semantics_and_lists_every_bad_field() -> None:
    report = validate(proposal(name=DROP, timeout_s="soon", risk_estimate=3, junk=1))
    assert report.semantic_valid is None and report.simulation is None and report.risk_tier is None
    assert sorted((f.rule.value, f.field) for f in report.schema_errors) == [
        ("required", "name"),
        ("unknown_field", "junk"),
        ("wrong_type", "risk_estimate"),
        ("wrong_type", "timeout_s"),
    ]


@pytest.mark.parametrize(
    ("data", "outcome", "tier", "hold_rules"),
    [
        (proposal(), Outcome.APPROVE, "low", []),
        (proposal(risk_estimate="medium", expression="1h", max_retries=3), Outcome.APPROVE, "medium", []),
        (proposal(risk_estimate="medium"), Outcome.HOLD, "medium", [Rule.MIN_INTERVAL]),
        (proposal(target="compact", expression="2h"), Outcome.APPROVE, "medium", []),
        (proposal(expression="2m"), Outcome.HOLD, "medium", [Rule.MIN_INTERVAL]),
        (proposal(target="notify", expression="1h", max_retries=1), Outcome.APPROVE, "medium", []),
        (proposal(target="notify", expression="20m", max_retries=1), Outcome.HOLD, "medium", [Rule.MIN_INTERVAL]),
        (proposal(target="notify", trigger_type="calendar", expression="0 9 * * *"), Outcome.APPROVE, "medium", []),
        (proposal(target="requeue_stuck", expression="15m"), Outcome.APPROVE, "medium", []),
        (proposal(target="payout", expression="1d"), Outcome.HOLD, "high", [Rule.HIGH_RISK]),
        (proposal(risk_estimate="high"), Outcome.HOLD, "high", [Rule.HIGH_RISK]),
        (proposal(trigger_type="event", expression="file.uploaded"), Outcome.APPROVE, "medium", []),
        (proposal(trigger_type="lifecycle", expression="startup"), Outcome.APPROVE, "low", []),
    ],
)
def test_the_decision_follows_the_effective_tier(
    data: dict[str, Any], outcome: Outcome, tier: str, hold_rules: list[Rule]
) -> None:
    report = validate(data)
    assert (report.decision, report.risk_tier) == (outcome, RiskTier(tier)), report.decision_reason
    assert [f.rule for f in report.hold_reasons] == hold_rules
    assert report.definition is not None and report.definition.risk_tier is RiskTier(tier)
    assert report.tier_reason is not None and report.tier_reason.startswith(f"{tier}: ")


def test_defaults_follow_the_tier_so_a_default_never_causes_a_hold() -> None:
    report = validate(proposal(target="notify", expression="1h"))
    assert report.defaults_applied["max_retries"] == 1  # messaging's medium auto-approval allows 1
    assert report.defaults_applied["bundle"] == "messaging"
    assert report.decision is Outcome.APPROVE


def test_the_simulation_finds_the_smallest_gap_and_the_overlap() -> None:
    uneven = validate(proposal(trigger_type="calendar", expression="0,10 * * * *", typical_duration_s="12m"))
    sim = uneven.simulation
    assert sim is not None
    assert (sim.count_24h, sim.count_7d, sim.min_gap, sim.overlap_risk) == (48, 336, timedelta(minutes=10), True)
    assert uneven.risk_tier is RiskTier.LOW and uneven.decision is Outcome.APPROVE
    [overlap] = [w for w in uneven.conflict_warnings if w.rule is Rule.OVERLAP]
    assert "12m" in overlap.message and "skipped" in overlap.message
    host = validate(proposal(), typical_durations={"sweep": timedelta(minutes=45)})
    assert host.simulation is not None and host.simulation.overlap_risk
    assert host.decision is Outcome.APPROVE  # forbid: overlap is a warning, runs are skipped not piled up
    berlin = validate(proposal(trigger_type="calendar", expression="30 2 * * *", timezone="Europe/Berlin"))
    assert berlin.simulation is not None and berlin.simulation.min_gap == timedelta(days=1)
    delay = validate(proposal(trigger_type="delay", expression="+90m"))
    assert delay.simulation is not None
    assert (delay.simulation.fires_24h, delay.simulation.min_gap) == ((NOW + timedelta(minutes=90),), None)
    event = validate(proposal(trigger_type="event", expression="file.uploaded"))
    assert event.simulation is not None and event.simulation.count_7d is None
    assert "as often as it is emitted" in event.simulation.note


def test_conflict_warnings_do_not_reject() -> None:
    same = FakeReads(schedules=[agent_schedule("other_sweep")])
    report = validate(proposal(), same)
    assert report.decision is Outcome.APPROVE
    assert [(w.rule, w.field) for w in report.conflict_warnings] == [(Rule.SAME_WORK, "target")]
    assert "schedule other_sweep already runs sweep" in report.conflict_warnings[0].message
    pending = FakeReads(records=[record("p9", "x", "awaiting_approval", payload={"target": "sweep"})])
    assert [w.rule for w in validate(proposal(), pending).conflict_warnings] == [Rule.SAME_WORK]
    past = validate(proposal(trigger_type="delay", expression="2020-01-01T00:00:00Z"))
    assert [w.rule for w in past.conflict_warnings] == [Rule.NO_FIRE_SOON]
    assert past.decision is Outcome.APPROVE


def test_names_and_quota_count_only_what_still_claims_them() -> None:
    freed = FakeReads(records=[record("p1", "tmp_sweep", status) for status in ("rejected", "expired")])
    assert validate(proposal(), freed).decision is Outcome.APPROVE
    itself = FakeReads(records=[record("p1", "tmp_sweep", "submitted")])
    assert validate(proposal(), itself, proposal_id="p1").decision is Outcome.APPROVE
    gone = quota_full()
    gone.schedules = gone.schedules[:9]  # one of the ten was removed
    assert validate(proposal(), gone).decision is Outcome.APPROVE
    other = quota_full()
    assert validate(proposal(proposed_by="agent-8"), other).decision is Outcome.APPROVE
    tight = ProposalRules(max_active_per_proposer=1)
    one = FakeReads(records=[record("p1", "x", "approved")])
    assert [f.rule for f in validate(proposal(), one, rules=tight).policy_violations] == [Rule.QUOTA]


def test_validation_only_reads() -> None:
    reads = FakeReads(schedules=[agent_schedule("a")], records=[record("p1", "b", "active")])
    before = (list(reads.schedules), list(reads.records))
    validate(proposal(), reads)
    assert set(reads.calls) <= {"list", "proposals"}
    assert (reads.schedules, reads.records) == before


def test_the_proposal_type_round_trips_and_refuses_bad_fields_with_our_error() -> None:
    p = ScheduleProposal.from_dict(proposal(capabilities=["fs:tmp"], params={"path": "/tmp"}, retry_backoff_s="1m"))
    assert p.timeout == timedelta(minutes=5) and p.retry_backoff == timedelta(minutes=1)
    assert ScheduleProposal.from_dict(p.to_dict()) == p
    assert p.capabilities == ("fs:tmp",)
    with pytest.raises(InvalidProposal) as caught:
        ScheduleProposal.from_dict(proposal(name=DROP, max_retries="3"))
    assert [(f.rule.value, f.field) for f in caught.value.findings] == [
        ("required", "name"),
        ("wrong_type", "max_retries"),
    ]
    assert "required (name)" in str(caught.value)
    with pytest.raises(InvalidProposal, match="timeout_s"):
        ScheduleProposal(
            name="n",
            trigger_type="interval",  # type: ignore[arg-type]
            expression="1h",
            target="sweep",
            objective="o",
            proposed_by="a",
            timeout=-5,  # type: ignore[arg-type]
        )
    with pytest.raises(InvalidProposal, match="not_an_object"):
        ScheduleProposal.from_dict(None)
    definition = compile_definition(p)
    assert (definition.source, definition.max_retries, definition.breaker_threshold) == (ScheduleSource.AGENT, 3, 3)


# ---------------------------------------------------------------------- random and malformed proposals

JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.sampled_from(["30m", "1h", "0 9 * * *", "*/5 * * * *", "+15m", "startup", "UTC", "Europe/Berlin", "low"])
)
JUNK = st.recursive(
    JSON_LEAVES
    | st.binary(max_size=8)
    | st.integers(100_000, 200_000).map(lambda n: "x" * n)
    | st.builds(deep)
    | st.integers(4400, 4500).map(lambda digits: 10**digits)
    | st.builds(object)
    | st.datetimes(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=4)
        | st.tuples(inner)
        | st.frozensets(st.integers(), max_size=3)
    ),
    max_leaves=12,
)
FIELD_VALUES: dict[str, Any] = {
    "name": st.sampled_from(["tmp_sweep", "a", "has space", "", HUGE]),
    "trigger_type": st.sampled_from(["interval", "calendar", "delay", "event", "lifecycle", "reconciliation", "x"]),
    "expression": st.sampled_from(["30m", "1s", "0 9 * * *", "* * * * * *", "+15m", "startup", "boom", "61 * * * *"]),
    "target": st.sampled_from(["sweep", "notify", "payout", "compact", "os.system"]),
    "objective": st.text(max_size=20),
    "proposed_by": st.sampled_from(["agent-7", "agent-8", "bad id"]),
    "timeout_s": st.sampled_from([1, 300, "5m", "1d", 0, -1]),
    "max_retries": st.integers(min_value=-2, max_value=12),
    "params": st.dictionaries(st.text(max_size=5), JSON_LEAVES, max_size=3),
    "capabilities": st.lists(st.sampled_from(["fs:tmp", "telegram:send", "root"]), max_size=3),
    "concurrency_policy": st.sampled_from(["forbid", "allow", "replace", "enqueue_one", "sometimes"]),
    "risk_estimate": st.sampled_from(["low", "medium", "high", "none"]),
    "bundle": st.sampled_from(["maintenance", "messaging", "recovery", "lenient"]),
    "typical_duration_s": st.sampled_from([1, 3600, "10m", "x"]),
}


@st.composite
def mutated_proposals(draw: st.DrawFn, *, dirty: bool) -> Any:
    """A valid proposal with fields replaced by plausible values; ``dirty``: also dropped, junk and stray keys."""
    data: dict[Any, Any] = proposal()
    for key in draw(st.lists(st.sampled_from(sorted(FIELD_VALUES)), max_size=5 if dirty else 3, unique=True)):
        data[key] = draw(FIELD_VALUES[key])
    if not dirty:
        return data
    for key in draw(st.lists(st.sampled_from(sorted(data)), max_size=2, unique=True)):
        del data[key]
    for key in draw(st.lists(st.sampled_from(sorted(data)), max_size=2, unique=True)):
        data[key] = draw(JUNK)
    data.update(draw(st.dictionaries(st.text(max_size=6) | st.integers(), JUNK, max_size=2)))
    return data


ANY_PROPOSAL = (
    mutated_proposals(dirty=False)
    | mutated_proposals(dirty=True)
    | JUNK
    | st.dictionaries(st.sampled_from(sorted(FIELD_VALUES)), JUNK, max_size=8)
)


def _iter_findings(report: ValidationReport) -> Iterator[Any]:
    yield from report.findings
    yield from report.conflict_warnings
    yield from report.hold_reasons


@settings(max_examples=200)
@given(data=ANY_PROPOSAL)
def test_validation_of_anything_returns_a_report_and_only_a_valid_one_compiles(data: Any) -> None:
    report = validate(data)
    assert isinstance(report, ValidationReport)
    event(report.decision.value)
    stored = report.to_dict()
    assert json.loads(json.dumps(stored)) == stored
    assert all(isinstance(f.rule, Rule) and len(f.message) < 600 for f in _iter_findings(report))
    if report.findings:
        assert report.decision is Outcome.REJECT and report.definition is None and not report.approved
    else:
        assert report.schema_valid and report.semantic_valid
        assert report.decision in (Outcome.APPROVE, Outcome.HOLD)
        assert report.definition is not None and report.definition.source is ScheduleSource.AGENT
        assert report.definition.timeout is not None
    if report.approved:
        assert report.risk_tier is not RiskTier.HIGH
    payload = storable_payload(data)
    assert isinstance(payload, dict) and len(json.dumps(payload)) < 300_000
    proposal_obj, problems, _ = parse_proposal(data)
    assert (proposal_obj is None) == bool(problems)


@pytest.mark.parametrize(
    ("expression", "zone", "gap"),
    [
        # 01:59:59 and 02:59:59 local, a day apart; on 2027-03-28 the second does not exist and fires at
        # 03:00:00 CEST, one second after the first.
        ("59 59 1,2 * * *", "Europe/Berlin", timedelta(seconds=1)),
        # Hourly apart within a day; 23:59 on the 31st and 00:00 on the 1st are a minute apart.
        ("0,59 0,23 1,31 * *", "UTC", timedelta(minutes=1)),
    ],
)
def test_a_calendar_that_fires_closer_at_a_seam_of_the_year_is_judged_by_that_gap(
    expression: str, zone: str, gap: timedelta
) -> None:
    report = validate(proposal(trigger_type="calendar", expression=expression, timezone=zone))
    assert report.simulation is not None and report.simulation.min_gap == gap
    assert report.decision is not Outcome.APPROVE  # what runs is what was judged
