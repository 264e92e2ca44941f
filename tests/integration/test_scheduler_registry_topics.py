"""The scheduler.* topics on a real SQLite file: success, unknown names, bad payloads, who changed what, per topic."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from agent.scheduler import FakeClock, RunStatus, ScheduleDefinition, ScheduleStore
from agent.scheduler.adapters.service_registry import register_scheduler_topics
from agent.scheduler.engine import ScheduleEngine
from agent.scheduler.enums import BreakerState, ProposalStatus, ScheduleSource
from agent.scheduler.errors import TaskNotConfigured
from agent.scheduler.identity import Approvers, Caller
from agent.scheduler.proposals import ProposalService
from agent.scheduler.settings import load_settings
from agent.scheduler.tasks import RunContext, TaskRegistry
from service_registry import ServiceRegistry
from tests.conftest import T0, run_async

MakeSchedule = Callable[..., ScheduleDefinition]
CALLER = "agent:ops-7"
#: The human these tests configure as an approver: Telegram chat 42, as the operator bot calls.
APPROVER_CHAT = 42
APPROVER = Caller.telegram(APPROVER_CHAT)
MIN = timedelta(minutes=1)

#: Every topic the adapter must register.
TOPICS = [
    "scheduler.approve_proposal",
    "scheduler.dead_letters",
    "scheduler.disable_schedule",
    "scheduler.emit_event",
    "scheduler.enable_schedule",
    "scheduler.get_schedule",
    "scheduler.list_proposals",
    "scheduler.list_runs",
    "scheduler.list_schedules",
    "scheduler.propose_schedule",
    "scheduler.reject_proposal",
    "scheduler.replay_dead_letter",
    "scheduler.reset_breaker",
    "scheduler.run_now",
    "scheduler.status",
]


class Work:
    """The tasks of these tests: one that works, one that fails, one never configured, one that waits."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    def registry(self) -> TaskRegistry:
        tasks = TaskRegistry()
        tasks.add("sweep", self.sweep, capabilities=["fs:tmp"])
        tasks.add("broken", self.broken)
        tasks.add("unconfigured", self.unconfigured)
        tasks.add("waits", self.waits)
        tasks.add("payout", self.sweep, risk_tier="high", side_effects=["payments"])
        return tasks

    async def sweep(self, ctx: RunContext) -> str:
        return "swept"

    async def broken(self, ctx: RunContext) -> str:
        raise ConnectionError("service down")

    async def unconfigured(self, ctx: RunContext) -> str:
        raise TaskNotConfigured("ACTP_NOWHERE_URL")

    async def waits(self, ctx: RunContext) -> str:
        await self.release.wait()
        return "released"


@dataclass
class World:
    """A store with schedules in every interesting state, an engine and the registry over them."""

    store: ScheduleStore
    clock: FakeClock
    engine: ScheduleEngine
    tasks: TaskRegistry
    proposals: ProposalService
    registry: ServiceRegistry
    work: Work

    async def call(self, topic: str, payload: Any = None, caller: Caller | str = CALLER) -> dict[str, Any]:
        return await self.registry.call(topic, payload, caller=caller)

    async def ok(self, topic: str, payload: Any = None, caller: Caller | str = CALLER) -> dict[str, Any]:
        answer = await self.call(topic, payload, caller)
        assert answer["ok"] is True, answer
        result: dict[str, Any] = answer["result"]
        return result

    async def error(self, topic: str, payload: Any = None, caller: Caller | str = CALLER) -> dict[str, Any]:
        answer = await self.call(topic, payload, caller)
        assert answer["ok"] is False, answer
        error: dict[str, Any] = answer["error"]
        return error

    async def close(self) -> None:
        self.work.release.set()
        await self.engine.stop()


def add_schedules(store: ScheduleStore, make: MakeSchedule) -> None:
    store.add(make("sweep", expression="5m", target="sweep", description="keep /tmp small"))
    store.add(make("fragile", expression="5m", target="broken", max_retries=0, breaker_threshold=1))
    store.add(make("lonely", expression="5m", target="unconfigured"))
    store.add(make("nightly", trigger_type="calendar", expression="0 3 * * *", timezone="Europe/Berlin"))
    store.add(make("on_stall", trigger_type="event", expression="job.stalled"))
    store.add(make("held", trigger_type="event", expression="job.held", target="waits"))
    store.add(make("retired", expression="1h", enabled=False, disabled_reason="old"))


async def make_world(store: ScheduleStore, clock: FakeClock, make: MakeSchedule, *, run: bool = True) -> World:
    """The world; with ``run``, the engine ran six minutes: sweep succeeded, fragile dead-lettered and
    opened its breaker, lonely was skipped as not configured."""
    add_schedules(store, make)
    work = Work()
    tasks = work.registry()
    engine = ScheduleEngine(store, tasks, clock=clock, tick_seconds=3600, worker_id="w1")
    proposals = ProposalService(store, tasks, clock, approvers=Approvers.of(telegram_chats=[APPROVER_CHAT]))
    registry = ServiceRegistry()
    register_scheduler_topics(registry, store=store, engine=engine, tasks=tasks, proposals=proposals)
    world = World(store, clock, engine, tasks, proposals, registry, work)
    if run:
        await engine.start()
        await engine.run_until(clock.now() + 6 * MIN)
        await engine.wait_idle()
    return world


def proposal(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "tmp_sweep",
        "trigger_type": "interval",
        "expression": "30m",
        "target": "sweep",
        "objective": "keep /tmp small",
        "timeout_s": 300,
    }
    data.update(overrides)
    return data


def snapshot(store: ScheduleStore) -> tuple[Any, ...]:
    """Everything a topic could change."""
    return (
        store.list(),
        store.runs(),
        store.dead_letters(),
        store.proposals(),
        store.events(limit=1000),
    )


# ---------------------------------------------------------------------- registration


@run_async
async def test_every_scheduler_topic_is_registered(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    world = await make_world(store, clock, make_schedule, run=False)
    assert world.registry.topics() == TOPICS


# ---------------------------------------------------------------------- bad payloads, for every topic


def bad_payloads(fields: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], str, str]]:
    """(kind, payload, field, words) for every way each field of a schema can be wrong."""
    valid: dict[str, Any] = {}
    for f in fields:
        if f["required"]:
            valid[f["name"]] = {"string": "sweep", "object": proposal()}[f["type"]]
    wrong_type = {"string": 42, "integer": "3", "boolean": "yes", "object": ["a"], "number": "x"}
    cases: list[tuple[str, dict[str, Any], str, str]] = [
        ("unknown field", {**valid, "bogus": 1}, "bogus", "not a field")
    ]
    for f in fields:
        name = f["name"]
        if f["required"]:
            cases.append(("missing required", {k: v for k, v in valid.items() if k != name}, name, "required"))
        cases.append(("wrong type", {**valid, name: wrong_type[f["type"]]}, name, "must be"))
        if f.get("allowed"):
            cases.append(("bad enum value", {**valid, name: "no_such_value"}, name, "is not allowed; one of"))
        if f.get("max_length"):
            too_long: Any = "x" * (f["max_length"] + 1)
            if f["type"] == "object":
                too_long = {"k": "x" * f["max_length"]}
            cases.append(("too long", {**valid, name: too_long}, name, f"at most {f['max_length']}"))
        if f.get("minimum") is not None:
            cases.append(("below minimum", {**valid, name: int(f["minimum"]) - 1}, name, "below the minimum"))
        if f.get("maximum") is not None:
            cases.append(("above maximum", {**valid, name: int(f["maximum"]) + 1}, name, "above the maximum"))
    return cases


@pytest.mark.parametrize("topic", TOPICS)
@run_async
async def test_every_kind_of_bad_payload_is_refused_naming_the_field_and_changes_nothing(
    topic: str, store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    world = await make_world(store, clock, make_schedule, run=False)
    cases = bad_payloads(world.registry.schema(topic))
    kinds = {kind for kind, *_ in cases}
    fields = world.registry.schema(topic)
    assert "unknown field" in kinds
    if any(f["required"] for f in fields):
        assert {"missing required", "wrong type"} <= kinds
    if any(f.get("allowed") for f in fields):
        assert "bad enum value" in kinds
    if any(f.get("max_length") for f in fields):
        assert "too long" in kinds
    before = snapshot(store)
    for kind, payload, field, words in cases:
        error = await world.error(topic, payload)
        assert (error["code"], error["field"]) == ("invalid", field), (kind, payload, error)
        assert words in error["message"], (kind, error)
    for not_an_object in (["sweep"], "sweep", 3):
        assert (await world.error(topic, not_an_object))["code"] == "invalid"
    assert snapshot(store) == before


#: Topics that name a schedule, and the payload naming one that does not exist.
UNKNOWN_SCHEDULE = [
    ("scheduler.get_schedule", {"name": "nope"}),
    ("scheduler.disable_schedule", {"name": "nope", "reason": "x"}),
    ("scheduler.enable_schedule", {"name": "nope"}),
    ("scheduler.run_now", {"name": "nope"}),
    ("scheduler.reset_breaker", {"name": "nope"}),
    ("scheduler.list_runs", {"schedule": "nope"}),
    ("scheduler.dead_letters", {"schedule": "nope"}),
]
#: Topics that name a run, dead letter or proposal by id.
UNKNOWN_ID = [
    ("scheduler.replay_dead_letter", {"id": "run_nope"}),
    ("scheduler.approve_proposal", {"id": "prop_nope"}),
    ("scheduler.reject_proposal", {"id": "prop_nope", "reason": "no"}),
]


@run_async
async def test_unknown_schedules_runs_and_proposals_are_not_found_and_change_nothing(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    world = await make_world(store, clock, make_schedule, run=False)
    before = snapshot(store)
    for topic, payload in UNKNOWN_SCHEDULE:
        error = await world.error(topic, payload)
        assert (error["code"], error["field"]) == ("not_found", "name"), topic
        assert "no schedule named 'nope'" in error["message"]
    for topic, payload in UNKNOWN_ID:
        error = await world.error(topic, payload, caller=APPROVER)  # an agent is refused before any lookup
        assert (error["code"], error["field"]) == ("not_found", "id"), topic
        assert payload["id"] in error["message"]
    assert snapshot(store) == before


@run_async
async def test_an_unknown_topic_is_answered_not_raised(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    world = await make_world(store, clock, make_schedule, run=False)
    error = await world.error("scheduler.delete_everything", {"name": "sweep"})
    assert error["code"] == "unknown_topic"
    assert "scheduler.list_schedules" in error["message"]


# ---------------------------------------------------------------------- reading topics


@run_async
async def test_list_schedules_shows_next_run_last_outcome_breaker_and_not_configured(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    world = await make_world(store, clock, make_schedule)
    result = await world.ok("scheduler.list_schedules")
    assert result["as_of"] == clock.now().isoformat()
    items = {i["name"]: i for i in result["schedules"]}
    assert list(items) == sorted(items) and result["count"] == 7
    sweep, fragile, lonely = items["sweep"], items["fragile"], items["lonely"]
    assert (sweep["last_status"], sweep["breaker_state"], sweep["not_configured"]) == ("succeeded", "closed", False)
    assert sweep["next_run_at"] == (T0 + 10 * MIN).isoformat()
    assert sweep["next_run_in"] == "in 4m"
    assert sweep["period_s"] == 300
    assert (fragile["last_status"], fragile["breaker_state"]) == ("dead_lettered", "open")
    assert fragile["last_reason"] == "ConnectionError: service down"
    assert (lonely["last_status"], lonely["not_configured"]) == ("skipped", True)
    assert lonely["last_reason"].startswith("not configured: set ACTP_NOWHERE_URL")
    nightly = items["nightly"]
    assert nightly["next_run_local"] == "2027-03-14T03:00:00+01:00"
    assert nightly["period_s"] == 86400
    assert nightly["last_status"] is None
    assert items["on_stall"]["next_run_at"] is None and items["on_stall"]["period_s"] is None
    assert items["retired"]["next_run_at"] is None and items["retired"]["enabled"] is False


@run_async
async def test_what_a_task_requires_is_judged_on_the_settings_the_worker_read(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ACTP_FOO_URL", raising=False)  # set only in the worker's settings (its .env, say)
    world = await make_world(store, clock, make_schedule, run=False)
    world.tasks.add("fetch", world.work.sweep, requires=["ACTP_FOO_URL"])
    store.add(make_schedule("fetcher", target="fetch"))
    world.engine.settings = load_settings({"ACTP_FOO_URL": "https://foo.example"})
    shown = await world.ok("scheduler.get_schedule", {"name": "fetcher"})
    assert (shown["schedule"]["not_configured"], shown["schedule"]["missing_configuration"]) == (False, [])
    world.engine.settings = load_settings({})
    shown = await world.ok("scheduler.get_schedule", {"name": "fetcher"})
    assert shown["schedule"]["missing_configuration"] == ["ACTP_FOO_URL"]
    await world.close()


@pytest.mark.parametrize(
    ("filters", "names"),
    [
        ({"enabled": True}, ["fragile", "held", "lonely", "nightly", "on_stall", "sweep"]),
        ({"enabled": False}, ["retired"]),
        ({"trigger_type": "event"}, ["held", "on_stall"]),
        ({"trigger_type": "calendar", "enabled": True}, ["nightly"]),
        ({"source": "user", "name_contains": "LON"}, ["lonely"]),
        ({"source": "agent"}, []),
        ({"name_contains": "zzz"}, []),
    ],
)
@run_async
async def test_list_schedules_filters_combine(
    filters: dict[str, Any], names: list[str], store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    world = await make_world(store, clock, make_schedule, run=False)
    result = await world.ok("scheduler.list_schedules", filters)
    assert [i["name"] for i in result["schedules"]] == names


@run_async
async def test_get_schedule_has_policies_and_the_latest_runs(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    world = await make_world(store, clock, make_schedule)
    result = await world.ok("scheduler.get_schedule", {"name": "fragile"})
    s = result["schedule"]
    assert (s["name"], s["max_retries"], s["breaker_threshold"], s["breaker_state"]) == ("fragile", 0, 1, "open")
    assert s["missed_run_policy"] == "skip" and s["concurrency_policy"] == "forbid"
    assert [r["status"] for r in result["runs"]] == ["dead_lettered"]
    assert "ConnectionError: service down" in result["runs"][0]["error"]
    assert (await world.ok("scheduler.get_schedule", {"name": "sweep", "runs": 0}))["runs"] == []


@run_async
async def test_list_runs_newest_first_by_schedule_and_status(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    world = await make_world(store, clock, make_schedule)
    await world.engine.run_until(clock.now() + 10 * MIN)
    await world.engine.wait_idle()
    runs = (await world.ok("scheduler.list_runs", {"schedule": "sweep"}))["runs"]
    assert [r["status"] for r in runs] == ["succeeded"] * 3
    assert [r["intended_run_at"] for r in runs] == sorted((r["intended_run_at"] for r in runs), reverse=True)
    skipped = (await world.ok("scheduler.list_runs", {"status": "skipped", "limit": 2}))["runs"]
    assert len(skipped) == 2 and {r["schedule"] for r in skipped} == {"lonely"}
    assert len((await world.ok("scheduler.list_runs", {"limit": 1}))["runs"]) == 1


@run_async
async def test_dead_letters_without_and_with_their_traceback(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    world = await make_world(store, clock, make_schedule)
    result = await world.ok("scheduler.dead_letters")
    assert result["total"] == 1
    (letter,) = result["dead_letters"]
    assert letter["schedule"] == "fragile" and "error_traceback" not in letter
    full = await world.ok("scheduler.dead_letters", {"schedule": "fragile", "with_traceback": True})
    assert "ConnectionError" in full["dead_letters"][0]["error_traceback"]
    assert (await world.ok("scheduler.dead_letters", {"schedule": "sweep"}))["dead_letters"] == []


@run_async
async def test_status_reports_the_engine_its_runs_in_flight_and_the_last_reconciliation(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    world = await make_world(store, clock, make_schedule)
    world.engine.emit("job.held")
    await world.engine.tick()
    result = await world.ok("scheduler.status", {})
    assert result["worker_id"] == "w1"
    assert [r["schedule"] for r in result["in_flight"]] == ["held"] and result["in_flight_count"] == 1
    last = result["last_reconciliation"]
    assert last["worker_id"] == "w1" and last["report"]["previous_shutdown"] == "first_start"
    assert last["summary"].startswith("reconciliation (first_start): 7 schedules")
    assert result["breakers"] == [{"name": "fragile", "state": "open"}]
    assert (result["schedules_enabled"], result["schedules_disabled"], result["dead_letters_waiting"]) == (6, 1, 1)
    world.work.release.set()
    await world.engine.wait_idle()
    assert (await world.ok("scheduler.status"))["in_flight"] == []
    await world.close()


# ---------------------------------------------------------------------- topics that change state


@run_async
async def test_disable_and_enable_change_the_store_and_record_the_caller(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule, caplog: pytest.LogCaptureFixture
) -> None:
    world = await make_world(store, clock, make_schedule, run=False)
    result = await world.ok("scheduler.disable_schedule", {"name": "sweep", "reason": "too noisy"})
    assert result == {"name": "sweep", "enabled": False, "disabled_reason": f"too noisy (by {CALLER})"}
    assert (store.get("sweep").enabled, store.get("sweep").disabled_reason) == (False, f"too noisy (by {CALLER})")
    await world.ok("scheduler.disable_schedule", {"name": "nightly"}, caller=APPROVER)
    assert store.get("nightly").disabled_reason == "disabled by telegram:42"
    with caplog.at_level(logging.INFO, logger="agent.scheduler.adapters.service_registry"):
        enabled = await world.ok("scheduler.enable_schedule", {"name": "sweep"})
    assert enabled == {"name": "sweep", "enabled": True, "was_enabled": False, "by": CALLER}
    assert store.get("sweep").enabled and store.get("sweep").disabled_reason is None
    assert f"schedule sweep enabled by {CALLER}" in caplog.text
    again = await world.ok("scheduler.enable_schedule", {"name": "sweep"})
    assert again["was_enabled"] is True


@run_async
async def test_run_now_queues_a_manual_run_through_the_engine(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule, caplog: pytest.LogCaptureFixture
) -> None:
    world = await make_world(store, clock, make_schedule, run=False)
    with caplog.at_level(logging.INFO, logger="agent.scheduler.adapters.service_registry"):
        result = await world.ok("scheduler.run_now", {"name": "on_stall"})
    (run,) = store.runs(schedule="on_stall")
    assert (run.run_id, run.status, run.origin) == (result["run_id"], RunStatus.PENDING, "manual")
    assert result["by"] == CALLER
    assert f"manual run {run.run_id} of on_stall queued by {CALLER}" in caplog.text
    await world.engine.tick()
    await world.engine.wait_idle()
    assert store.get_run(run.run_id).status is RunStatus.SUCCEEDED


@run_async
async def test_replay_is_refused_into_an_open_breaker_then_reset_lets_it_through_recording_the_caller(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule, caplog: pytest.LogCaptureFixture
) -> None:
    world = await make_world(store, clock, make_schedule)
    (letter,) = store.dead_letters()
    refused = await world.error("scheduler.replay_dead_letter", {"id": letter.run_id})
    assert refused["code"] == "refused" and "circuit breaker of fragile is open" in refused["message"]
    assert store.get_run(letter.run_id).status is RunStatus.DEAD_LETTERED

    with caplog.at_level(logging.INFO, logger="agent.scheduler.adapters.service_registry"):
        reset = await world.ok("scheduler.reset_breaker", {"name": "fragile"}, caller=APPROVER)
    assert reset == {"name": "fragile", "breaker_state": "closed", "by": "telegram:42"}
    assert store.get("fragile").breaker_state is BreakerState.CLOSED
    assert "breaker of fragile reset by telegram:42" in caplog.text
    closed = await world.error("scheduler.reset_breaker", {"name": "fragile"})
    assert closed["code"] == "refused"

    replayed = await world.ok("scheduler.replay_dead_letter", {"id": letter.id})
    assert (replayed["run_id"], replayed["status"], replayed["replayed_by"]) == (letter.run_id, "pending", CALLER)
    stored = store.dead_letter(letter.id)
    assert stored.replayed_by == CALLER and stored.replayed_at == clock.now()
    assert store.get_run(letter.run_id).reason == f"replayed by {CALLER}"
    again = await world.error("scheduler.replay_dead_letter", {"id": letter.id})
    assert again["code"] == "refused"


@run_async
async def test_replay_with_force_goes_into_an_open_breaker(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    world = await make_world(store, clock, make_schedule)
    (letter,) = store.dead_letters()
    replayed = await world.ok("scheduler.replay_dead_letter", {"id": letter.run_id, "force": True})
    assert replayed["status"] == "pending"
    assert store.get("fragile").breaker_state is BreakerState.OPEN


@run_async
async def test_a_low_risk_proposal_becomes_a_schedule_proposed_by_the_caller(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    world = await make_world(store, clock, make_schedule, run=False)
    result = await world.ok("scheduler.propose_schedule", {"proposal": proposal()})
    record = result["proposal"]
    assert (record["status"], record["proposed_by"], result["submitted_by"]) == ("active", CALLER, CALLER)
    created = store.get("tmp_sweep")
    assert (created.source, created.proposal_id) == (ScheduleSource.AGENT, record["id"])
    clock.advance(timedelta(seconds=1))
    invalid = await world.ok("scheduler.propose_schedule", {"proposal": proposal(name="x2", target="nope")})
    assert invalid["proposal"]["status"] == "rejected"
    assert any(f["field"] == "target" for f in invalid["report"]["semantic_errors"])
    clock.advance(timedelta(seconds=1))
    own = await world.ok("scheduler.propose_schedule", {"proposal": proposal(name="x3", proposed_by=CALLER)})
    assert own["proposal"]["proposed_by"] == CALLER
    before = snapshot(store)
    claimed = await world.error("scheduler.propose_schedule", {"proposal": proposal(name="x4", proposed_by="alice")})
    assert (claimed["code"], claimed["field"]) == ("invalid", "proposed_by")
    assert snapshot(store) == before
    listed = await world.ok("scheduler.list_proposals", {"status": "rejected"})
    assert [p["name"] for p in listed["proposals"]] == ["x2"]
    assert [p["name"] for p in (await world.ok("scheduler.list_proposals"))["proposals"]] == ["x3", "x2", "tmp_sweep"]


@run_async
async def test_approve_and_reject_record_the_caller_and_self_approval_is_refused(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    world = await make_world(store, clock, make_schedule, run=False)
    payout = proposal(name="weekly_payout", target="payout", expression="7d")
    held = (await world.ok("scheduler.propose_schedule", {"proposal": payout}, caller="agent-7"))["proposal"]
    other = (await world.ok("scheduler.propose_schedule", {"proposal": {**payout, "name": "payout_b"}}, "agent-7"))[
        "proposal"
    ]
    assert held["status"] == other["status"] == ProposalStatus.AWAITING_APPROVAL.value
    waiting = await world.ok("scheduler.list_proposals", {"status": "awaiting_approval"})
    assert {p["id"] for p in waiting["proposals"]} == {held["id"], other["id"]}
    assert waiting["proposals"][0]["target"] == "payout"

    own = await world.error("scheduler.approve_proposal", {"id": held["id"]}, caller="agent-7")
    assert own["code"] == "refused" and "agent-7 is an agent" in own["message"]
    posing = await world.error("scheduler.approve_proposal", {"id": held["id"]}, caller="telegram:42")
    assert (posing["code"], posing["field"]) == ("invalid", "caller")  # a human's id is no agent's to take
    assert store.get_proposal(held["id"]).status == "awaiting_approval"

    approved = await world.ok("scheduler.approve_proposal", {"id": held["id"], "reason": "ok'd"}, caller=APPROVER)
    assert approved["proposal"]["status"] == "active"
    record = store.get_proposal(held["id"])
    assert (record.decided_by, record.decided_via, record.decision_reason) == ("telegram:42", "telegram", "ok'd")
    assert record.decided_at == clock.now()
    assert store.get("weekly_payout").source is ScheduleSource.AGENT

    blank = await world.error("scheduler.reject_proposal", {"id": other["id"], "reason": "   "}, caller=APPROVER)
    assert (blank["code"], blank["field"]) == ("invalid", "reason")
    by_agent = await world.error("scheduler.reject_proposal", {"id": other["id"], "reason": "mine"})
    assert by_agent["code"] == "refused" and store.get_proposal(other["id"]).status == "awaiting_approval"
    rejected = await world.ok("scheduler.reject_proposal", {"id": other["id"], "reason": "too risky"}, caller=APPROVER)
    assert rejected["proposal"]["status"] == "rejected"
    record = store.get_proposal(other["id"])
    assert (record.decided_by, record.decided_via, record.decision_reason) == ("telegram:42", "telegram", "too risky")
    twice = await world.error("scheduler.reject_proposal", {"id": other["id"], "reason": "again"}, caller=APPROVER)
    assert twice["code"] == "refused"
