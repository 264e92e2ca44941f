"""Who may decide a proposal, through every door, on SQLite and on PostgreSQL: only a configured human,
never the proposer, and each decision records approver, door and time."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.scheduler import FakeClock, ScheduleDefinition, ScheduleStore
from agent.scheduler.adapters.service_registry import register_scheduler_topics
from agent.scheduler.engine import ScheduleEngine
from agent.scheduler.identity import Approvers, Caller
from agent.scheduler.proposals import DecisionRefused, ProposalService
from service_registry import ServiceRegistry
from tests.conftest import T0, run_async
from tests.integration.test_schedule_proposals import MODULE, proposal, registry
from tests.system.worker_process import ROOT

APPROVERS = Approvers.of(telegram_chats=[42], operators=["alice"])


@pytest.fixture
def shared_store(any_url: str, clock: FakeClock) -> Iterator[ScheduleStore]:
    with ScheduleStore(any_url, clock=clock) as s:
        yield s


def registry_over(store: ScheduleStore, clock: FakeClock) -> tuple[ProposalService, ServiceRegistry]:
    """The proposal service (APPROVERS decide) and a registry with the scheduler's topics over ``store``."""
    tasks = registry()
    svc = ProposalService(store, tasks, clock, approvers=APPROVERS)
    reg = ServiceRegistry()
    engine = ScheduleEngine(store, tasks, clock=clock, worker_id="w")
    register_scheduler_topics(reg, store=store, engine=engine, tasks=tasks, proposals=svc)
    return svc, reg


def held_payout(svc: ProposalService, name: str = "payout", **kwargs: Any) -> str:
    record = svc.submit(proposal(name=name, target="payout", expression="7d", **kwargs))
    assert record.status == "awaiting_approval"
    return record.id


#: Ids an agent's handle might carry: its own in other spacing, case and width, a homoglyph of
#: it, a fresh one, and ones that look like the configured humans'.
AGENT_VARIANTS = [
    "agent-7",
    "agent-7 ",
    "AGENT-7",
    "\uff41gent-7",
    "\u0430gent-7",
    "agent-9-never-proposed",
    "telegram:42",
    "cli:alice",
    "alice",
    "policy",
]


@run_async
async def test_an_agent_through_the_registry_never_decides_whatever_id_the_host_gave_it(
    shared_store: ScheduleStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    _, reg = registry_over(shared_store, clock)
    agent = reg.handle(Caller.agent("agent-7"))
    submitted = await agent.call("scheduler.propose_schedule", {"proposal": proposal(name="payout", target="payout")})
    pid = submitted["result"]["proposal"]["id"]
    assert submitted["result"]["proposal"]["proposed_by"] == "agent-7"
    with caplog.at_level(logging.WARNING, logger="agent.scheduler.proposals"):
        for variant in AGENT_VARIANTS:
            for topic, payload in (
                ("scheduler.approve_proposal", {"id": pid}),
                ("scheduler.reject_proposal", {"id": pid, "reason": "mine"}),
            ):
                answers = [await reg.call(topic, payload, caller=variant)]
                with contextlib.suppress(ValueError):  # a homoglyph: the host cannot even name an agent so
                    answers.append(await reg.handle(Caller.agent(variant)).call(topic, payload))
                for answer in answers:
                    assert answer["ok"] is False, (variant, topic)
                    assert answer["error"]["code"] in ("refused", "invalid"), answer
    assert shared_store.get_proposal(pid).status == "awaiting_approval"
    assert shared_store.list() == []
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refusals and all("via registry refused" in m and "is an agent" in m for m in refusals)

    approved = await reg.call(
        "scheduler.approve_proposal", {"id": pid, "reason": "payroll"}, caller=Caller.telegram(42)
    )
    assert approved["ok"] is True, approved
    record = shared_store.get_proposal(pid)
    assert (record.status, record.decided_by, record.decided_via, record.decided_at) == (
        "active",
        "telegram:42",
        "telegram",
        T0,
    )
    assert record.decision_reason == "payroll"
    reg.close()


def test_nobody_approves_their_own_proposal_compared_normalised(
    shared_store: ScheduleStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    svc = ProposalService(shared_store, registry(), clock, approvers=APPROVERS)
    # Host code (the Python API door) may submit on behalf of a named proposer, spelled any way.
    for n, spelling in enumerate(["cli:alice", "CLI:Alice", " cli:ALICE ", "\uff43li:alice"]):
        pid = held_payout(svc, name=f"payout_{n}", proposed_by=spelling)
        assert shared_store.get_proposal(pid).proposed_by == "cli:alice"
        with (
            caplog.at_level(logging.WARNING, logger="agent.scheduler.proposals"),
            pytest.raises(DecisionRefused, match="cli:alice proposed it and cannot approve it"),
        ):
            svc.approve(pid, by=Caller.operator("alice"))
        assert shared_store.get_proposal(pid).status == "awaiting_approval"
    assert "approve of proposal" in caplog.text and "by cli:alice via cli refused" in caplog.text
    # The same person through another door is another identity: the Telegram chat approves.
    approved = svc.approve(pid, by=Caller.telegram(42), reason="second pair of eyes")
    assert (approved.status, approved.decided_by, approved.decided_via) == ("active", "telegram:42", "telegram")


def test_a_configured_human_decides_and_the_record_names_approver_door_and_time(
    shared_store: ScheduleStore, clock: FakeClock
) -> None:
    svc = ProposalService(shared_store, registry(), clock, approvers=APPROVERS)
    first, second, third = (held_payout(svc, name=f"payout_{n}") for n in range(3))
    clock.advance(timedelta(minutes=5))
    with pytest.raises(DecisionRefused, match="operator 'bob' is not an approver"):
        svc.approve(first, by=Caller.operator("bob"))
    with pytest.raises(DecisionRefused, match="Telegram chat 7 is not an approver"):
        svc.reject(first, by=Caller.telegram(7), reason="no")
    with pytest.raises(DecisionRefused, match="not a human approver"):
        svc.approve(first, by=Caller.host())
    approved = svc.approve(first, by=Caller.operator("alice"))
    rejected = svc.reject(second, by=Caller.telegram(42), reason="not this quarter")
    assert [
        (r.status, r.decided_by, r.decided_via, r.decided_at)
        for r in (shared_store.get_proposal(first), shared_store.get_proposal(second))
    ] == [
        ("active", "cli:alice", "cli", T0 + timedelta(minutes=5)),
        ("rejected", "telegram:42", "telegram", T0 + timedelta(minutes=5)),
    ]
    assert approved.decision_reason == "approved by cli:alice" and rejected.decision_reason == "not this quarter"
    clock.advance(timedelta(days=2))
    [expired] = svc.expire_overdue()
    assert (expired.id, expired.decided_by, expired.decided_via, expired.decided_at) == (
        third,
        "policy",
        "policy",
        clock.now(),
    )
    auto = svc.submit(proposal(name="sweep_tmp"))
    assert (auto.status, auto.decided_by, auto.decided_via, auto.decided_at) == (
        "active",
        "policy",
        "policy",
        clock.now(),
    )


@run_async
async def test_an_agent_cannot_start_resume_or_retry_a_high_risk_schedule_a_human_can(
    shared_store: ScheduleStore, clock: FakeClock
) -> None:
    svc, reg = registry_over(shared_store, clock)
    svc.approve(held_payout(svc), by=Caller.operator("alice"))
    shared_store.disable("payout", reason="paused by a human")
    agent = reg.handle(Caller.agent("agent-7"))
    for topic in ("scheduler.enable_schedule", "scheduler.run_now", "scheduler.reset_breaker"):
        answer = await agent.call(topic, {"name": "payout"})
        assert answer["ok"] is False and answer["error"]["code"] == "refused", answer
        assert "agent-7 is an agent: only a human may" in answer["error"]["message"]
    assert not shared_store.get("payout").enabled and shared_store.runs(schedule="payout") == []
    assert (await agent.call("scheduler.disable_schedule", {"name": "payout"}))["ok"] is True  # stopping stays open
    human = await reg.call("scheduler.enable_schedule", {"name": "payout"}, caller=Caller.telegram(42))
    assert human["ok"] is True and shared_store.get("payout").enabled
    # A host's schedule left at the default tier is as high as its task.
    shared_store.add(ScheduleDefinition(name="host_payout", trigger_type="interval", expression="1h", target="payout"))
    answer = await agent.call("scheduler.run_now", {"name": "host_payout"})
    assert answer["ok"] is False and answer["error"]["code"] == "refused", answer
    assert shared_store.runs(schedule="host_payout") == []
    # A task this worker does not know may be high-risk on another: an agent is refused it too.
    shared_store.add(
        ScheduleDefinition(name="elsewhere", trigger_type="interval", expression="1h", target="other_hosts_task")
    )
    shared_store.add(ScheduleDefinition(name="on_done", trigger_type="event", expression="done", target="nowhere"))
    for topic, payload in (("scheduler.run_now", {"name": "elsewhere"}), ("scheduler.emit_event", {"name": "done"})):
        answer = await agent.call(topic, payload)
        assert answer["ok"] is False and answer["error"]["code"] == "refused", answer
        assert "is not registered in this worker (its risk cannot be told)" in answer["error"]["message"]
    assert shared_store.runs(schedule="elsewhere") == [] and shared_store.count_events() == 0
    assert (await reg.call("scheduler.run_now", {"name": "elsewhere"}, caller=Caller.telegram(42)))["ok"] is True
    # The scheduler's own sweep is known everywhere, and low-risk.
    shared_store.add(
        ScheduleDefinition(name="sweeper", trigger_type="interval", expression="1m", target="scheduler.reconcile")
    )
    assert (await agent.call("scheduler.run_now", {"name": "sweeper"}))["ok"] is True
    reg.close()


def test_a_refused_approval_at_the_command_line_is_one_line_on_stderr(tmp_path: Path) -> None:
    db = tmp_path / "scheduler.db"
    with ScheduleStore(f"sqlite:///{db}") as store:
        pid = held_payout(ProposalService(store, registry()))
    env = {**os.environ, "ACTP_APPROVER_OPERATORS": "nobody-here"}
    done = subprocess.run(
        [sys.executable, "-m", "agent.scheduler", "--db", str(db), "approve", pid, "--tasks", MODULE],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "is not an approver (ACTP_APPROVER_OPERATORS)" in done.stderr
