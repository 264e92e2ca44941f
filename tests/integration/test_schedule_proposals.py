"""Agent proposals on a real SQLite file: submit, hold, approve, expire, activate, and the engine running the result."""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.scheduler import FakeClock, RunStatus, ScheduleDefinition, ScheduleStore
from agent.scheduler.cli import main, operator_caller
from agent.scheduler.engine import ScheduleEngine
from agent.scheduler.enums import ProposalStatus, RiskTier, ScheduleSource
from agent.scheduler.errors import InvalidTransition, ScheduleNotFound
from agent.scheduler.identity import Approvers, Caller
from agent.scheduler.proposals import DecisionRefused, ProposalNotFound, ProposalService
from agent.scheduler.tasks import RunContext, TaskRegistry
from tests.conftest import T0, run_async
from tests.unit.test_schedule_proposals_validation import ANY_PROPOSAL

MODULE = __name__
CALLS: list[str] = []


async def sweep(ctx: RunContext) -> str:
    CALLS.append(f"sweep {ctx.schedule.name} {ctx.intended_run_at.isoformat()}")
    return "swept"


async def notify(ctx: RunContext) -> str:
    CALLS.append(f"notify {ctx.schedule.name} {ctx.intended_run_at.isoformat()}")
    return "sent"


async def payout(ctx: RunContext) -> str:
    CALLS.append(f"payout {ctx.schedule.name}")
    return "paid"


def register(tasks: TaskRegistry, store: ScheduleStore) -> None:
    """The tasks module of these tests, as ``--tasks`` loads it for the worker and the CLI."""
    tasks.add("sweep", sweep, capabilities=["fs:tmp"])
    tasks.add("notify", notify, side_effects=["messaging"], capabilities=["telegram:send"])
    tasks.add("payout", payout, risk_tier="high", side_effects=["payments"])


def registry() -> TaskRegistry:
    tasks = TaskRegistry()
    register(tasks, None)  # type: ignore[arg-type]  # register() does not touch the store
    return tasks


#: The humans these tests configure as approvers: an operator at the command line and a Telegram chat.
ALICE = Caller.operator("alice")
BOB = Caller.operator("bob")
APPROVERS = Approvers.of(telegram_chats=[42], operators=["alice", "bob"])


def service(store: ScheduleStore) -> ProposalService:
    return ProposalService(store, registry(), approvers=APPROVERS)


def engine(store: ScheduleStore, clock: FakeClock) -> ScheduleEngine:
    return ScheduleEngine(store, registry(), clock=clock, tick_seconds=3600, worker_id="w")


def proposal(**overrides: Any) -> dict[str, Any]:
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
    return data


def succeeded(store: ScheduleStore, name: str) -> list[str]:
    return [r.intended_run_at.isoformat() for r in store.runs(schedule=name) if r.status is RunStatus.SUCCEEDED]


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    CALLS.clear()


@run_async
async def test_a_low_risk_proposal_activates_at_once_and_its_schedule_fires_on_the_engine(
    store: ScheduleStore, clock: FakeClock
) -> None:
    record = service(store).submit(proposal())
    assert (record.status, record.decided_by) == ("active", "policy")
    assert record.decision_reason == "auto-approved: low risk within the limits of bundle maintenance"
    assert record.report is not None and record.report["approved"] is True
    assert record.payload == proposal()  # the raw proposal, as the agent sent it
    schedule = store.get("tmp_sweep")
    assert (schedule.source, schedule.proposal_id, schedule.id) == (ScheduleSource.AGENT, record.id, record.schedule_id)
    assert (schedule.risk_tier, schedule.timeout, schedule.description) == (
        RiskTier.LOW,
        timedelta(minutes=5),
        "keep /tmp small",
    )
    e = engine(store, clock)
    await e.start()
    await e.run_until(T0 + timedelta(hours=1))
    await e.wait_idle()
    await e.stop()
    assert succeeded(store, "tmp_sweep") == [
        (T0 + timedelta(minutes=30)).isoformat(),
        (T0 + timedelta(hours=1)).isoformat(),
    ]
    assert [f"sweep tmp_sweep {t}" for t in succeeded(store, "tmp_sweep")] == CALLS


@run_async
async def test_a_medium_proposal_outside_the_stricter_limits_waits_for_a_human_then_fires(
    store: ScheduleStore, clock: FakeClock
) -> None:
    svc = service(store)
    held = svc.submit(proposal(name="standup_ping", target="notify", expression="20m", max_retries=1))
    assert held.status == "awaiting_approval" and held.decided_by is None
    assert held.expires_at == T0 + timedelta(hours=24)
    assert held.decision_reason is not None
    assert held.decision_reason.startswith("waits for a human: medium risk outside the auto-approval limits")
    assert "min_interval (expression): fires every 20m; at most every 1h allowed" in held.decision_reason
    assert held.report is not None and held.report["risk_tier"] == "medium"
    with pytest.raises(ScheduleNotFound):
        store.get("standup_ping")
    e = engine(store, clock)
    await e.start()
    await e.run_until(T0 + timedelta(hours=1))
    assert CALLS == []  # nothing runs while it waits
    approved = svc.approve(held.id, by=ALICE, reason="standup needs it")
    assert (approved.status, approved.decided_by, approved.decision_reason) == (
        "active",
        "cli:alice",
        "standup needs it",
    )
    assert (approved.decided_via, approved.decided_at) == ("cli", T0 + timedelta(hours=1))
    schedule = store.get("standup_ping")
    assert schedule.proposal_id == held.id and schedule.max_retries == 1
    await e.run_until(T0 + timedelta(hours=1, minutes=40))
    await e.wait_idle()
    await e.stop()
    assert succeeded(store, "standup_ping") == [
        (T0 + timedelta(hours=1, minutes=20)).isoformat(),
        (T0 + timedelta(hours=1, minutes=40)).isoformat(),
    ]


def test_a_high_risk_proposal_waits_and_its_own_proposer_cannot_approve_it(store: ScheduleStore) -> None:
    svc = service(store)
    held = svc.submit(proposal(name="weekly_payout", target="payout", expression="7d"))
    assert held.status == "awaiting_approval"
    assert held.report is not None and held.report["risk_tier"] == "high"
    assert held.decision_reason == "waits for a human: high_risk (risk_tier): high risk always waits for a human"
    with pytest.raises(DecisionRefused, match="agent-7 is an agent: agents may propose schedules"):
        svc.approve(held.id, by=Caller.agent("agent-7"))
    # A configured human who proposed something else may not approve a high-risk proposal.
    svc.submit(proposal(name="other_sweep", proposed_by=None), by=BOB)
    with pytest.raises(DecisionRefused, match="cli:bob proposes schedules itself"):
        svc.approve(held.id, by=BOB)
    with pytest.raises(DecisionRefused, match="str is not a caller identity"):
        svc.approve(held.id, by="alice")  # type: ignore[arg-type]
    assert store.get_proposal(held.id).status == "awaiting_approval"
    assert [s.name for s in store.list()] == ["other_sweep"]
    active = svc.approve(held.id, by=ALICE)
    assert (active.status, active.decided_by, active.decision_reason) == (
        "active",
        "cli:alice",
        "approved by cli:alice",
    )
    assert store.get("weekly_payout").risk_tier is RiskTier.HIGH


def test_an_expired_approval_never_activates(store: ScheduleStore, clock: FakeClock) -> None:
    svc = service(store)
    late = svc.submit(proposal(name="payout_a", target="payout", expression="1d"))
    swept = svc.submit(proposal(name="payout_b", target="payout", expression="1d"))
    clock.advance(timedelta(hours=23, minutes=59))
    assert svc.expire_overdue() == []
    clock.advance(timedelta(minutes=1))
    # payout_a is overdue but nobody swept it yet: approving it expires it and refuses.
    with pytest.raises(DecisionRefused, match="it expired at 2027-03-14T12:00:00"):
        svc.approve(late.id, by=ALICE)
    expired = store.get_proposal(late.id)
    assert (expired.status, expired.decided_by) == ("expired", "policy")
    assert expired.decision_reason == "expired: not approved by 2027-03-14T12:00:00+00:00"
    [b] = svc.expire_overdue()
    assert (b.id, b.status) == (swept.id, "expired")
    for pid in (late.id, swept.id):
        with pytest.raises(DecisionRefused, match="only a proposal awaiting approval can be approved; it is expired"):
            svc.approve(pid, by=ALICE)
        with pytest.raises(InvalidTransition):
            store.transition_proposal(store.get_proposal(pid), "approve", decided_by="cli:alice")
    assert store.list() == []
    assert [p.status for p in store.proposals()] == ["expired", "expired"]


def test_rejections_are_stored_with_their_report_and_write_no_schedule(store: ScheduleStore) -> None:
    svc = service(store)
    bad = svc.submit(proposal(name="fast_sweep", expression="10s", target="os.system", junk=True))
    assert (bad.status, bad.decided_by, bad.decided_via) == ("rejected", "policy", "policy")
    assert bad.decision_reason is not None and "unknown_field (junk)" in bad.decision_reason
    assert bad.report is not None and bad.report["schema_valid"] is False
    semantic = svc.submit(proposal(name="fast_sweep", expression="10s", target="os.system"))
    assert semantic.report is not None
    assert [f["rule"] for f in semantic.report["semantic_errors"]] == ["target_registered"]
    policy = svc.submit(proposal(name="fast_sweep", expression="10s", capabilities=["root"]))
    assert policy.report is not None
    assert sorted(f["rule"] for f in policy.report["policy_violations"]) == ["capability_scope", "min_interval"]
    junk = svc.submit(["not", "an", "object"])
    assert (junk.status, junk.name, junk.proposed_by) == ("rejected", "(unnamed)", "(unknown)")
    assert junk.payload == {"not_an_object": ["not", "an", "object"]}
    assert store.list() == []
    held = svc.submit(proposal(name="payout_x", target="payout", expression="1d"))
    with pytest.raises(DecisionRefused, match="say why"):
        svc.reject(held.id, by=ALICE, reason="")
    rejected = svc.reject(held.id, by=ALICE, reason="we do not pay on a schedule")
    assert (rejected.status, rejected.decided_by, rejected.decision_reason) == (
        "rejected",
        "cli:alice",
        "we do not pay on a schedule",
    )
    with pytest.raises(InvalidTransition):
        svc.reject(held.id, by=ALICE, reason="again")
    with pytest.raises(ProposalNotFound):
        svc.approve("prop_nope", by=ALICE)
    assert store.list() == []


def test_a_name_taken_while_waiting_refuses_the_approval_and_changes_nothing(store: ScheduleStore) -> None:
    svc = service(store)
    held = svc.submit(proposal(name="payout_y", target="payout", expression="1d"))
    assert svc.submit(proposal(name="payout_y")).status == "rejected"  # pending proposals claim their name
    store.add(ScheduleDefinition(name="payout_y", trigger_type="interval", expression="1h", target="sweep"))
    with pytest.raises(DecisionRefused, match=r"no longer validates: name_free \(name\)"):
        svc.approve(held.id, by=ALICE)
    assert store.get_proposal(held.id).status == "awaiting_approval"


def test_the_quota_counts_live_agent_schedules_per_proposer(store: ScheduleStore) -> None:
    from agent.scheduler.schedule_policy import ProposalRules

    svc = ProposalService(store, registry(), rules=ProposalRules(max_active_per_proposer=2))
    assert [svc.submit(proposal(name=f"s{i}", expression=f"{i + 1}h")).status for i in range(3)] == [
        "active",
        "active",
        "rejected",
    ]
    third = store.proposals(status="rejected")[0]
    assert third.report is not None and third.report["policy_violations"][0]["rule"] == "quota"
    assert svc.submit(proposal(name="s9", proposed_by="agent-8")).status == "active"
    store.remove("s0")
    assert svc.submit(proposal(name="s3", expression="4h")).status == "active"


def test_a_submission_left_submitted_is_decided_later(store: ScheduleStore) -> None:
    from agent.scheduler.records import ProposalRecord

    stuck = store.save_proposal(
        ProposalRecord(id="prop_stuck", name="tmp_sweep", status="submitted", proposed_by="agent-7", payload=proposal())
    )
    svc = service(store)
    with pytest.raises(DecisionRefused, match="only a proposal awaiting approval"):
        svc.approve(stuck.id, by=ALICE)  # a human cannot skip the policy
    decided = svc.decide(stuck.id)
    assert (decided.status, decided.schedule_id) == ("active", store.get("tmp_sweep").id)
    assert decided.report is not None and decided.report["decision"] == "approve"


def test_a_python_proposal_with_timedeltas_is_stored_as_json_and_can_still_be_approved(store: ScheduleStore) -> None:
    svc = service(store)
    held = svc.submit(proposal(name="pay_td", target="payout", timeout_s=timedelta(minutes=5)))
    assert held.status == "awaiting_approval"
    assert held.payload["timeout_s"] == 300.0 and held.payload["name"] == "pay_td"
    active = svc.approve(held.id, by=ALICE)
    assert active.status == "active" and store.get("pay_td").timeout == timedelta(minutes=5)


def test_an_approved_proposal_whose_activation_failed_is_activated_later(store: ScheduleStore) -> None:
    from agent.scheduler.records import ProposalRecord

    store.add(ScheduleDefinition(name="tmp_sweep", trigger_type="interval", expression="1h", target="sweep"))
    approved = store.save_proposal(
        ProposalRecord(id="prop_late", name="tmp_sweep", status="approved", proposed_by="agent-7", payload=proposal())
    )
    svc = service(store)
    with pytest.raises(DecisionRefused, match=r"no longer validates: name_free \(name\)"):
        svc.activate(approved.id)
    assert store.get_proposal(approved.id).status == "approved"
    store.remove("tmp_sweep")
    active = svc.activate(approved.id)
    assert (active.status, active.schedule_id) == ("active", store.get("tmp_sweep").id)
    with pytest.raises(DecisionRefused, match="only an approved proposal can be activated; it is active"):
        svc.activate(approved.id)


# ---------------------------------------------------------------------- the command line


def cli(db: Path, clock: FakeClock, *args: str) -> tuple[int, str]:
    out = StringIO()
    code = main(["--db", str(db), *args], out=out, clock=clock)
    return code, out.getvalue()


def test_cli_propose_list_approve_and_reject(
    store: ScheduleStore,
    db_path: Path,
    clock: FakeClock,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def write(name: str, data: Any, *, claim: bool = False) -> str:
        if not claim:
            data = {k: v for k, v in data.items() if k != "proposed_by"}  # the user running it proposes
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(data))
        return str(path)

    code, text = cli(db_path, clock, "propose", write("low", proposal()), "--tasks", MODULE)
    assert code == 0
    assert text.splitlines()[1] == "decision: auto-approved: low risk within the limits of bundle maintenance"
    assert "active, schedule sch_" in text.splitlines()[0]
    assert "simulation: 336 fire(s) within 7 days (48.0/day), at least 30m apart" in text
    code, raw = cli(db_path, clock, "propose", write("high", proposal(name="pay", target="payout")), "--json")
    assert (code, raw) == (2, "")  # without the worker's tasks nothing can be checked, nothing is stored
    assert "pass --tasks MODULE or set ACTP_SCHEDULER_TASKS" in capsys.readouterr().err
    assert len(store.proposals()) == 1
    code, raw = cli(db_path, clock, "propose", write("bad", proposal(name="p", target="os.system")), "--tasks", MODULE)
    assert code == 2 and "target_registered (target): no task named 'os.system'" in raw
    assert "the report above names each rule it breaks" in capsys.readouterr().err
    code, raw = cli(
        db_path, clock, "propose", write("high", proposal(name="pay", target="payout")), "--tasks", MODULE, "--json"
    )
    held = json.loads(raw)
    assert code == 0 and held["proposal"]["status"] == "awaiting_approval"
    assert held["report"]["hold_reasons"][0]["rule"] == "high_risk"
    code, raw = cli(db_path, clock, "proposals", "--status", "awaiting_approval", "--json")
    assert [p["name"] for p in json.loads(raw)] == ["pay"]
    code, text = cli(db_path, clock, "proposals")
    assert code == 0 and text.splitlines()[0].split()[:4] == ["ID", "NAME", "STATUS", "BY"]
    assert Counter(line.split()[2] for line in text.splitlines()[1:]) == {
        "active": 1,
        "rejected": 1,
        "awaiting_approval": 1,
    }
    pid = held["proposal"]["id"]
    me = operator_caller().id
    assert held["proposal"]["proposed_by"] == me  # the proposer is the user running the command
    monkeypatch.delenv("ACTP_APPROVER_OPERATORS", raising=False)
    code, _ = cli(db_path, clock, "approve", pid, "--tasks", MODULE)
    assert code == 2 and "is not an approver (ACTP_APPROVER_OPERATORS)" in capsys.readouterr().err
    monkeypatch.setenv("ACTP_APPROVER_OPERATORS", me.removeprefix("cli:"))
    code, _ = cli(db_path, clock, "approve", pid, "--tasks", MODULE)
    assert code == 2 and f"{me} proposed it and cannot approve it" in capsys.readouterr().err
    # Proposed by an agent through its registry handle, approved by the operator at the command line (a
    # medium one: the operator proposes schedules too, and may not approve a high-risk one).
    pay = service(store).submit(
        proposal(name="pay_agent", target="notify", expression="20m", proposed_by=None), by=Caller.agent("A-7")
    )
    assert pay.status == "awaiting_approval"
    assert pay.proposed_by == "a-7"
    code, text = cli(db_path, clock, "approve", pay.id, "--tasks", MODULE)
    assert code == 0 and text.startswith(f"proposal {pay.id} (pay_agent) approved by {me}: active as schedule sch_")
    assert store.get("pay_agent").proposal_id == pay.id
    assert (store.get_proposal(pay.id).decided_by, store.get_proposal(pay.id).decided_via) == (me, "cli")
    claimed = write("x", proposal(name="pay2", target="payout"), claim=True)
    code, raw = cli(db_path, clock, "propose", claimed, "--tasks", MODULE)
    assert code == 2 and "proposed_by" in capsys.readouterr().err  # agent-7 is not the user running it
    pid2 = service(store).submit(proposal(name="pay2", target="payout")).id
    code, raw = cli(db_path, clock, "reject", pid2, "--reason", "no", "--json")
    assert code == 0 and json.loads(raw)["status"] == "rejected" and json.loads(raw)["decided_by"] == me
    code, _ = cli(db_path, clock, "approve", "prop_missing", "--tasks", MODULE)
    assert code == 2 and "no proposal with id 'prop_missing'" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    code, _ = cli(db_path, clock, "propose", str(bad))
    assert code == 2 and f"propose {bad}: not JSON" in capsys.readouterr().err


def test_cli_proposals_expires_overdue_ones(store: ScheduleStore, db_path: Path, clock: FakeClock) -> None:
    held = service(store).submit(proposal(name="pay", target="payout"))
    clock.advance(timedelta(days=2))
    code, raw = cli(db_path, clock, "proposals", "--json")
    assert code == 0 and [(p["id"], p["status"]) for p in json.loads(raw)] == [(held.id, "expired")]


# ---------------------------------------------------------------------- random and malformed submissions


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(batch=st.lists(ANY_PROPOSAL, min_size=1, max_size=3))
def test_submitting_anything_stores_a_decision_and_only_valid_proposals_become_schedules(batch: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        clock = FakeClock(T0)
        store = ScheduleStore(Path(tmp) / "fuzz.db", clock=clock)
        svc = service(store)
        try:
            for data in batch:
                before = {s.id for s in store.list()}
                record = svc.submit(data)
                after = {s.id for s in store.list()}
                report = record.report
                assert report is not None and json.loads(json.dumps(report)) == report
                assert record.status in {"active", "awaiting_approval", "rejected", "approved"}
                if record.status == ProposalStatus.REJECTED.value:
                    assert report["decision"] == "reject" and after == before and record.schedule_id is None
                    assert report["schema_errors"] or report["semantic_errors"] or report["policy_violations"]
                elif record.status == ProposalStatus.AWAITING_APPROVAL.value:
                    assert report["decision"] == "hold" and after == before
                    assert record.expires_at == T0 + timedelta(hours=24)
                else:
                    assert report["decision"] == "approve" and report["risk_tier"] in ("low", "medium")
                    assert after - before == {record.schedule_id}
                    schedule = store.get(str(record.schedule_id))
                    assert schedule.source is ScheduleSource.AGENT and schedule.proposal_id == record.id
                    assert schedule.timeout is not None
            for p in store.proposals():
                if p.schedule_id is not None:
                    assert p.status == "active" and p.report is not None and p.report["decision"] == "approve"
        finally:
            store.close()


def test_a_proposal_the_format_refuses_is_stored_rejected_with_the_fields_words_and_writes_no_schedule(
    store: ScheduleStore,
) -> None:
    from tests.unit.test_schedule_proposal_schema import CASES

    svc = service(store)
    for case, data, rule, field, words in CASES:
        record = svc.submit(data)
        assert (record.status, record.schedule_id) == ("rejected", None), case
        assert record.report is not None and record.report["schema_valid"] is False
        [error] = record.report["schema_errors"]
        assert (error["rule"], error["field"]) == (rule.value, field), case
        assert all(word in error["message"] for word in words), error
        assert f"{rule.value} ({field})" in (record.decision_reason or "")
    assert store.list() == [] and store.runs() == []
    assert {p.status for p in store.proposals()} == {"rejected"} and len(store.proposals()) == len(CASES)
