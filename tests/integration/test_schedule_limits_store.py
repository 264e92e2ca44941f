"""What passes the limits is what SQLite and PostgreSQL hold: any valid definition stores and reads back
unchanged, and what no store holds is refused before the database, naming the argument, on both."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import fields
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from sqlalchemy import delete, update

from agent.scheduler import FakeClock, InvalidSchedule, RunStatus, ScheduleDefinition, ScheduleStore, schema
from agent.scheduler.engine import ScheduleEngine
from agent.scheduler.errors import DuplicateSchedule
from agent.scheduler.identity import Approvers, Caller
from agent.scheduler.limits import json_storable, storable
from agent.scheduler.proposals import ProposalService, ScheduleProposal, parse_proposal
from agent.scheduler.store import LIMITS_CHECKED_KEY
from agent.scheduler.tasks import RunContext, TaskRegistry
from tests.conftest import run_async
from tests.unit.test_schedule_limits import hostile_proposals, valid_kwargs
from tests.unit.test_schedule_proposals_validation import proposal, registry

MakeSchedule = Any


@pytest.fixture
def store(any_url: str, clock: FakeClock) -> Iterator[ScheduleStore]:
    s = ScheduleStore(any_url, clock=clock)
    yield s
    s.close()


def _same(a: Any, b: Any) -> bool:
    """Equal, and of the same JSON types (1 is not 1.0) when ``a`` and ``b`` are params."""
    return bool(a == b) and json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


# The store is shared by the examples on purpose (a store per example would cost a migration each);
# every example removes the schedule it added.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(kw=valid_kwargs())
def test_every_valid_definition_stores_and_reads_back_field_by_field(store: ScheduleStore, kw: dict[str, Any]) -> None:
    stored = store.add(ScheduleDefinition(**kw))
    try:
        back = store.get(stored.id)
        for f in fields(ScheduleDefinition):
            mine, theirs = getattr(stored, f.name), getattr(back, f.name)
            assert _same(mine, theirs) if f.name == "params" else mine == theirs, (f.name, mine, theirs)
        assert store.get(stored.name) == back == stored
    finally:
        store.remove(stored.id)


def test_the_limits_themselves_store_and_read_back(store: ScheduleStore, make_schedule: MakeSchedule) -> None:
    widest = make_schedule(
        "N" * 128,
        id="i" * 64,
        proposal_id="p" * 64,
        target="t" * 128,
        expression="3653d",
        description="\U0001f600" * 4096,
        disabled_reason="\u00e9\t\n\r" * 500,
        max_retries=1000,
        catch_up_limit=1000,
        breaker_threshold=1000,
        consecutive_failures=2**31 - 1,
        retry_backoff=timedelta(hours=1),
        timeout=timedelta(days=7),
        grace=timedelta(days=7),
        shutdown_timeout=timedelta(hours=1),
        breaker_cooldown=timedelta(days=7) - timedelta(microseconds=1),
        params={"i": [2**63 - 1, -(2**63)], "f": 9.999999999999998e15, "z": -0.0, "c": "\x01\u2028", "k\u00e9": {}},
    )
    stored = store.add(widest)
    assert store.get(stored.id) == stored
    assert _same(store.get(stored.id).params, stored.params)


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda s: s.get("sweep\x00"), "name_or_id"),
        (lambda s: s.get("\udc80"), "name_or_id"),
        (lambda s: s.get("x" * 200), "name_or_id"),
        (lambda s: s.disable("sweep", reason="maintenance\x00"), "reason"),
        (lambda s: s.disable("sweep", reason="r" * 2001), "reason"),
        (lambda s: s.update("sweep", description="\udc80"), "description"),
        (lambda s: s.update("sweep", disabled_reason="\x00", enabled=False), "disabled_reason"),
        (lambda s: s.runs(schedule="sweep\udc80"), "schedule"),
        (lambda s: s.count_runs(schedule="\x00"), "schedule"),
        (lambda s: s.get_run("run\x00"), "run_id"),
        (lambda s: s.dead_letters(schedule="\udc80"), "schedule"),
        (lambda s: s.dead_letter("dl\x00"), "letter_or_run_id"),
        (lambda s: s.replay_dead_letter("dl_1", actor="alice\x00"), "actor"),
        (lambda s: s.replay_dead_letter("dl_1", actor="a" * 129), "actor"),
        (lambda s: s.get_proposal("prop\udc80"), "proposal_id"),
        (lambda s: s.proposals(proposed_by="agent\x00"), "proposed_by"),
    ],
)
def test_arguments_no_store_holds_are_refused_before_the_database_naming_the_argument(
    store: ScheduleStore, make_schedule: MakeSchedule, call: Any, argument: str
) -> None:
    before = store.add(make_schedule("sweep"))
    with pytest.raises(InvalidSchedule) as err:
        call(store)
    assert err.value.field == argument and len(str(err.value)) < 1000
    assert store.list() == [before]


def test_a_checkpoint_no_store_holds_is_refused_and_the_run_keeps_running(
    store: ScheduleStore, make_schedule: MakeSchedule, clock: FakeClock
) -> None:
    schedule = store.add(make_schedule("sweep"))
    run = store.create_run(schedule, clock.now(), occurrence_key="manual:1", origin="manual")
    assert run is not None
    started = store.transition(run, "start", owner="w")
    for data in ({"cursor": "a\x00"}, ["\udc80"], {"x": float("nan")}):
        with pytest.raises(InvalidSchedule) as err:
            store.save_checkpoint(started.run_id, data, owner="w")
        assert err.value.field == "checkpoint"
    store.save_checkpoint(started.run_id, {"cursor": "a\u00e9"}, owner="w")
    assert store.get_run(started.run_id).checkpoint == {"cursor": "a\u00e9"}


async def succeed(ctx: RunContext) -> str:
    return "ok"


@run_async
async def test_a_schedule_stored_before_the_limits_is_disabled_with_the_reason_and_the_rest_run(
    any_url: str, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    with ScheduleStore(any_url, clock=clock) as first:
        first.add(make_schedule("fast", expression="5m", target="succeed"))
        first.add(make_schedule("fine", expression="1m", target="succeed"))
        s = schema.schedules
        with first.db.engine.begin() as conn:  # type: ignore[union-attr]  # as an earlier version wrote it
            conn.execute(update(s).where(s.c.name == "fast").values(expression="0.5s", retry_backoff_s=7200.0))
            conn.execute(delete(schema.meta).where(schema.meta.c.key == LIMITS_CHECKED_KEY))  # nor knew the limits
    tasks = TaskRegistry()
    tasks.add("succeed", succeed)
    with ScheduleStore(any_url, clock=clock) as store:
        assert store.get("fast").enabled  # reading changes nothing
        engine = ScheduleEngine(store, tasks, clock=clock, tick_seconds=10, worker_id="w")
        await engine.start()
        fast = store.get("fast")
        assert not fast.enabled and fast.disabled_reason is not None
        assert fast.disabled_reason.startswith("disabled at start: invalid expression='0.5s': an interval from 1")
        assert store.get("fine").enabled
        try:
            await engine.run_until(clock.now() + timedelta(minutes=2))
            await engine.wait_idle()
        finally:
            await engine.stop()
        assert [r.status for r in store.runs(schedule="fine")] == [RunStatus.SUCCEEDED] * 2
        assert store.runs(schedule="fast") == []
        with pytest.raises(InvalidSchedule) as err:
            store.enable("fast")
        assert err.value.field == "expression"
        store.update("fast", expression="1s", retry_backoff=60)
        assert store.enable("fast").enabled


async def unprintable(ctx: RunContext) -> str:
    return "done\x00 \udc80"


async def raises_unprintable(ctx: RunContext) -> str:
    raise RuntimeError("bad\x00 \udc80")


@run_async
async def test_a_task_that_returns_or_raises_nul_or_surrogates_is_recorded_and_the_worker_goes_on(
    store: ScheduleStore, make_schedule: MakeSchedule, clock: FakeClock
) -> None:
    tasks = TaskRegistry()
    tasks.add("unprintable", unprintable)
    tasks.add("raises_unprintable", raises_unprintable)
    store.add(make_schedule("ok", trigger_type="delay", expression="+1m", target="unprintable"))
    store.add(make_schedule("bad", trigger_type="delay", expression="+1m", target="raises_unprintable", max_retries=0))
    engine = ScheduleEngine(store, tasks, clock=clock, tick_seconds=10, worker_id="w")
    with pytest.raises(InvalidSchedule) as err:
        engine.emit("job.done", {"file": "a\x00"})
    assert err.value.field == "payload"
    await engine.start()
    try:
        await engine.run_until(clock.now() + timedelta(minutes=2))
        await engine.wait_idle()
    finally:
        await engine.stop()
    [ok] = store.runs(schedule="ok")
    [bad] = store.runs(schedule="bad")
    assert (ok.status, ok.outcome) == (RunStatus.SUCCEEDED, "done\\x00 \\udc80")
    assert bad.status is RunStatus.DEAD_LETTERED and bad.error == "RuntimeError: bad\\x00 \\udc80"


def test_a_proposal_full_of_nul_and_surrogates_is_stored_rejected_with_escaped_text(store: ScheduleStore) -> None:
    service = ProposalService(store, registry(), approvers=Approvers.of(operators=["alice"]))
    data = proposal(name="tmp\x00sweep", proposed_by="agent\udc80", objective="\x00", params={"k\x00": "\udc80"})
    data["junk\x00"] = "\udfff"
    record = service.submit(data)
    assert record.status == "rejected"
    again = store.get_proposal(record.id)
    assert again == record
    assert storable(again.name) and storable(again.proposed_by) and again.name == "tmp\\x00sweep"
    assert json_storable(again.payload) and json_storable(again.report)
    assert again.payload.get("unstorable") is True
    with pytest.raises(InvalidSchedule) as err:
        service.reject(record.id, by=Caller.operator("alice"), reason="no\x00")
    assert err.value.field == "reason"


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=hostile_proposals())
def test_any_proposal_is_stored_with_its_decision_on_both_stores(store: ScheduleStore, data: Any) -> None:
    record = ProposalService(store, registry()).submit(data)
    again = store.get_proposal(record.id)
    assert again.status in ("rejected", "awaiting_approval", "active") and again.report is not None
    assert again == record
    parsed, problems, _ = parse_proposal(data)
    whole = not {"truncated", "unstorable", "not_an_object"} & set(again.payload)
    if parsed is not None and whole:  # a valid proposal stored whole reads back as the same proposal
        as_json = json.loads(json.dumps(parsed.to_dict()))
        assert not problems and ScheduleProposal.from_dict(again.payload).to_dict() == as_json
    if again.schedule_id is not None:
        assert store.get(again.schedule_id).proposal_id == again.id


def test_a_valid_proposal_at_the_limits_becomes_a_schedule_both_stores_hold(store: ScheduleStore) -> None:
    service = ProposalService(store, registry())
    record = service.submit(
        proposal(
            name="n" * 128,
            objective="\u00e9\n" * 1000,
            params={"k": "\U0001f600" * 100, "i": 2**63 - 1},
            retry_backoff_s=3600,
        )
    )
    assert record.status == "active", record.report
    schedule = store.get(str(record.schedule_id))
    assert schedule.description == "\u00e9\n" * 1000 and schedule.params["i"] == 2**63 - 1


def test_a_name_never_crosses_another_schedules_id(store: ScheduleStore, make_schedule: MakeSchedule) -> None:
    critical = store.add(make_schedule("critical"))
    with pytest.raises(DuplicateSchedule):
        store.add(make_schedule(critical.id))  # its name would be critical's id
    with pytest.raises(DuplicateSchedule):
        store.add(make_schedule("other", id="critical"))  # its id would be critical's name
    other = store.add(make_schedule("other"))
    with pytest.raises(DuplicateSchedule):
        store.update("other", name=critical.id)
    assert store.get(critical.id) == store.get("critical") and store.get("other") == other
    report = ProposalService(store, registry()).validate(proposal(name=critical.id))
    assert any(f.rule == "name_free" and "has the id" in f.message for f in report.findings)


def test_a_batch_of_schedules_never_crosses_an_id_stored_or_in_the_batch(
    store: ScheduleStore, make_schedule: MakeSchedule
) -> None:
    critical = store.add(make_schedule("critical"))
    crossing = [
        [make_schedule("fine"), make_schedule(critical.id)],  # a name that is a stored id
        [make_schedule("fine"), make_schedule("other", id="critical")],  # an id that is a stored name
        [make_schedule("fine", id="one"), make_schedule("one")],  # the second's name is the first's id
        [make_schedule("fine"), make_schedule("two", id="fine")],  # the second's id is the first's name
    ]
    for batch in crossing:
        with pytest.raises(DuplicateSchedule):
            store.add_many(batch, skip_existing=False)
        assert store.list() == [critical]  # nothing of the batch was written
        # Skipping what exists skips the crossing one too, and adds the rest.
        added = store.add_many(batch)
        assert [d.name for d in added] == ["fine"] and {d.name for d in store.list()} == {"critical", "fine"}
        store.remove("fine")
    # Adding stored schedules again is skipped, not refused, also when a name is its own id, or
    # the same definition comes twice.
    same = make_schedule("same", id="same")
    assert [d.name for d in store.add_many([critical, same, same])] == ["same"]
    assert [d.name for d in store.add_many([critical, same], skip_existing=True)] == []
    assert store.add_many([make_schedule("same", id="elsewhere")]) == []  # name taken: skipped
    assert {d.name for d in store.list()} == {"critical", "same"}
    # Only what is kept counts against the rest of the batch: the first crosses a stored id and is
    # skipped, so the second, named as the first's id, crosses nothing.
    kept = store.add_many([make_schedule(critical.id, id="first"), make_schedule("first", id="second")])
    assert [(d.id, d.name) for d in kept] == [("second", "first")]
