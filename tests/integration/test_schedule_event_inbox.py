"""The event inbox: events from the command line, the registry and engine.emit reach the event schedules through
one durable table, each consumed by exactly one worker, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, text

from agent.scheduler import FakeClock, RunStatus, ScheduleDefinition, ScheduleStore, SystemClock, inbox
from agent.scheduler.cli import main, operator_caller
from agent.scheduler.engine import ScheduleEngine
from agent.scheduler.engine.events import NO_LISTENER
from agent.scheduler.enums import EventStatus
from agent.scheduler.errors import EventRefused, InvalidSchedule, TooLong
from agent.scheduler.identity import Caller
from agent.scheduler.schema import TABLES, UPGRADES
from agent.scheduler.tasks import TaskRegistry
from tests.conftest import T0, run_async

ROOT = Path(__file__).resolve().parents[2]
MakeSchedule = Callable[..., ScheduleDefinition]
BY = Caller.operator("tester")


def tasks() -> TaskRegistry:
    registry = TaskRegistry()
    registry.add("record", lambda ctx: f"got {ctx.params.get('payload')}")
    return registry


def listening(store: ScheduleStore, make: MakeSchedule) -> None:
    """Two schedules on job.done, one on another event, one on the clock."""
    store.add(make("on_done_a", trigger_type="event", expression="job.done", target="record", params={"k": 1}))
    store.add(make("on_done_b", trigger_type="event", expression="job.done", target="record"))
    store.add(make("on_other", trigger_type="event", expression="job.other", target="record"))
    store.add(make("clockwork", expression="1d", target="record"))


def event_runs(store: ScheduleStore) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for run in store.runs():
        if run.origin == "event":
            out.setdefault(run.schedule_name, []).append(run)
    return out


# ---------------------------------------------------------------------- consumption by the engine


@run_async
async def test_an_event_written_by_another_store_gets_one_run_per_listening_schedule_with_its_payload(
    any_url: str, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    store = ScheduleStore(any_url, clock=clock)
    listening(store, make_schedule)
    engine = ScheduleEngine(store, tasks(), clock=clock, tick_seconds=3600, worker_id="w1")
    await engine.start()
    with ScheduleStore(any_url, clock=clock) as other:  # another process: the command line, a registry
        event = inbox.emit_event(other, "job.done", {"file": "a.csv", "rows": 3}, by=BY)
    assert store.events() == [event] and event.status is EventStatus.PENDING
    engine.wake()  # what the change feed does when another process commits (see the subprocess test)
    await engine.tick()
    await engine.wait_idle()
    runs = event_runs(store)
    assert sorted(runs) == ["on_done_a", "on_done_b"]
    assert [len(r) for r in runs.values()] == [1, 1]
    (a,), (b,) = runs["on_done_a"], runs["on_done_b"]
    assert a.params == {"k": 1, "event": "job.done", "payload": {"file": "a.csv", "rows": 3}}
    assert b.params == {"event": "job.done", "payload": {"file": "a.csv", "rows": 3}}
    assert a.status is b.status is RunStatus.SUCCEEDED
    assert a.occurrence_key == b.occurrence_key == f"event:{event.id}"
    (consumed,) = store.events()
    assert (consumed.status, consumed.consumed_by, consumed.consumed_at) == (EventStatus.CONSUMED, "w1", clock.now())
    assert sorted(consumed.run_ids) == sorted([a.run_id, b.run_id]) and consumed.reason is None
    assert (consumed.emitted_by, consumed.payload) == (BY.id, {"file": "a.csv", "rows": 3})
    # Consumed once: more ticks, even full scans, create nothing more.
    engine.wake()
    await engine.tick()
    await engine.wait_idle()
    assert [len(r) for r in event_runs(store).values()] == [1, 1]
    await engine.stop()
    store.close()


@run_async
async def test_engine_emit_goes_through_the_inbox_and_is_recorded_like_any_other_event(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    listening(store, make_schedule)
    engine = ScheduleEngine(store, tasks(), clock=clock, tick_seconds=3600, worker_id="w1")
    await engine.start()
    event_id = engine.emit("job.other", {"n": 7})
    assert store.events() == []  # the next tick writes it, in its own transaction
    await engine.tick()
    await engine.wait_idle()
    (event,) = store.events()
    (run,) = event_runs(store)["on_other"]
    assert (event.id, event.emitted_by, event.status, event.run_ids) == (
        event_id,
        "host",
        EventStatus.CONSUMED,
        (run.run_id,),
    )
    assert run.params == {"event": "job.other", "payload": {"n": 7}} and run.status is RunStatus.SUCCEEDED
    await engine.stop()


@run_async
async def test_an_event_no_schedule_listens_to_is_consumed_with_no_run_and_status_says_so(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule, db_path: Path
) -> None:
    listening(store, make_schedule)
    engine = ScheduleEngine(store, tasks(), clock=clock, tick_seconds=3600, worker_id="w1")
    await engine.start()
    inbox.emit_event(store, "nobody.listens", {}, by=BY)
    await engine.tick()
    await engine.wait_idle()
    (event,) = store.events()
    assert (event.status, event.run_ids, event.reason) == (EventStatus.CONSUMED, (), NO_LISTENER)
    assert event_runs(store) == {}
    await engine.stop()
    out = StringIO()
    assert main(["--db", str(db_path), "status"], out=out, clock=clock) == 0
    lines = out.getvalue().splitlines()
    when = T0.strftime("%Y-%m-%d %H:%M:%S UTC")
    assert f"events: 0 pending; last: nobody.listens at {when}, 0 run(s) (no schedule listens)" in lines
    assert "  no schedule listens to: nobody.listens" in lines
    out = StringIO()
    assert main(["--db", str(db_path), "status", "--json"], out=out, clock=clock) == 0
    data = json.loads(out.getvalue())["events"]
    assert (data["pending"], data["last"]["name"], data["last"]["runs"]) == (0, "nobody.listens", 0)
    assert data["no_listener"] == ["nobody.listens"]


@run_async
async def test_events_are_not_applied_to_schedules_created_after_them_nor_to_disabled_ones(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    store.add(make_schedule("paused", trigger_type="event", expression="job.done", target="record", enabled=False))
    early = inbox.emit_event(store, "job.done", {"n": 1}, by=BY)  # no worker is running
    clock.advance(timedelta(seconds=1))
    store.add(make_schedule("late", trigger_type="event", expression="job.done", target="record"))
    engine = ScheduleEngine(store, tasks(), clock=clock, tick_seconds=3600, worker_id="w1")
    await engine.start()  # consumes what waited in the inbox
    await engine.wait_idle()
    (consumed,) = store.events()
    assert (consumed.id, consumed.status, consumed.run_ids) == (early.id, EventStatus.CONSUMED, ())
    assert consumed.reason == "listening but not run: late (created after the event), paused (disabled)"
    # An event emitted once the schedule exists reaches it.
    inbox.emit_event(store, "job.done", {"n": 2}, by=BY)
    await engine.tick()
    await engine.wait_idle()
    (run,) = event_runs(store)["late"]
    assert run.params["payload"] == {"n": 2} and "paused" not in event_runs(store)
    await engine.stop()


@run_async
async def test_a_stopping_engine_leaves_events_pending_for_the_next_start(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    listening(store, make_schedule)
    engine = ScheduleEngine(store, tasks(), clock=clock, tick_seconds=3600, worker_id="w1")
    await engine.start()
    engine.emit("job.other", {"n": 1})
    await engine.stop()  # the stop's last tick writes the event but starts nothing new
    (event,) = store.events()
    assert event.status is EventStatus.PENDING and event_runs(store) == {}
    again = ScheduleEngine(store, tasks(), clock=clock, tick_seconds=3600, worker_id="w1")
    await again.start()
    await again.wait_idle()
    assert store.events()[0].status is EventStatus.CONSUMED and len(event_runs(store)["on_other"]) == 1
    await again.stop()


# ---------------------------------------------------------------------- exactly one consumer


def test_of_many_threads_taking_one_event_exactly_one_wins(any_url: str, clock: FakeClock) -> None:
    stores = [ScheduleStore(any_url, clock=clock) for _ in range(6)]
    event = inbox.emit_event(stores[0], "job.done", {}, by=BY)
    barrier = threading.Barrier(len(stores))
    won: list[str] = []

    def take(i: int) -> None:
        barrier.wait()
        if stores[i].consume_event(event.id, worker_id=f"w{i}", now=clock.now()):
            won.append(f"w{i}")

    threads = [threading.Thread(target=take, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (consumed,) = stores[0].events()
    assert len(won) == 1 and consumed.consumed_by == won[0]
    for s in stores:
        s.close()


#: Events the two-engine test emits.
EVENTS = 40


@pytest.mark.postgres
@run_async
async def test_two_engines_on_one_postgresql_database_consume_each_event_exactly_once(
    pg_url: str, make_schedule: MakeSchedule
) -> None:
    clock = FakeClock(T0)
    one, two, emitter = (ScheduleStore(pg_url, clock=clock) for _ in range(3))
    listening(one, make_schedule)
    engines = [
        ScheduleEngine(store, tasks(), clock=clock, tick_seconds=3600, worker_id=wid)
        for store, wid in ((one, "w1"), (two, "w2"))
    ]
    for engine in engines:
        await engine.start()
    emitted = []
    for n in range(EVENTS):
        emitted.append(inbox.emit_event(emitter, "job.done", {"n": n}, by=BY))
        if n % 8 == 7:  # both engines tick at once, each on its own database thread, while events arrive
            for engine in engines:
                engine.wake()
            await asyncio.gather(*(engine.tick() for engine in engines))
    while emitter.count_events(EventStatus.PENDING):
        for engine in engines:
            engine.wake()
        await asyncio.gather(*(engine.tick() for engine in engines))
    for engine in engines:
        await engine.wait_idle()
    runs = event_runs(emitter)
    for name in ("on_done_a", "on_done_b"):
        assert sorted(r.params["payload"]["n"] for r in runs[name]) == list(range(EVENTS))
        assert len({r.occurrence_key for r in runs[name]}) == EVENTS
    events = emitter.events(limit=1000)
    assert {e.id for e in events} == {e.id for e in emitted}
    assert all(e.status is EventStatus.CONSUMED and len(e.run_ids) == 2 for e in events)
    assert {e.consumed_by for e in events} <= {"w1", "w2"}
    for engine in engines:
        await engine.stop()
    for store in (one, two, emitter):
        store.close()


# ---------------------------------------------------------------------- bad input: refused, nothing written

#: (name, payload, the field named, words the one-line message holds)
BAD_EVENTS: list[tuple[Any, Any, str, str]] = [
    ("bad name", {}, "name", "an event name of 1 to 128 characters from A-Z a-z 0-9 _ . : -"),
    ("", {}, "name", "an event name"),
    ("x" * 129, {}, "name", "an event name"),
    (42, {}, "name", "an event name"),
    ("job.done", [1, 2], "payload", "; got an array"),
    ("job.done", "text", "payload", "; got a string"),
    ("job.done", {"big": "x" * inbox.EVENT_PAYLOAD_BYTES}, "payload", "at most 16384 bytes as UTF-8 JSON"),
    ("job.done", {"n": float("nan")}, "payload", "; a float out of range at payload['n']"),
    ("job.done", {"nul": "a\x00"}, "payload", "; NUL or a lone surrogate at payload['nul']"),
]


@pytest.mark.parametrize(("name", "payload", "field", "words"), BAD_EVENTS)
def test_a_bad_event_is_refused_naming_the_field_and_nothing_is_written(
    any_url: str, clock: FakeClock, name: Any, payload: Any, field: str, words: str
) -> None:
    with ScheduleStore(any_url, clock=clock) as store:
        with pytest.raises(InvalidSchedule) as caught:
            inbox.emit_event(store, name, payload, by=BY)
        message = str(caught.value)
        assert caught.value.field == field and message.startswith(f"invalid {field}=")
        assert "\n" not in message and words in message
        if field == "payload" and "bytes" not in words:
            assert "a JSON object of at most 16384 bytes" in message  # the inbox's bound, not the params'
        assert store.count_events() == 0


def test_the_payload_limit_is_on_the_compact_json_bytes() -> None:
    filler = inbox.EVENT_PAYLOAD_BYTES - len('{"a":""}')
    assert inbox.check_payload({"a": "x" * filler}) == {"a": "x" * filler}
    with pytest.raises(TooLong):
        inbox.check_payload({"a": "x" * (filler + 1)})
    with pytest.raises(TooLong):
        inbox.check_payload({"a": "é" * (filler // 2 + 1)})  # two bytes each in UTF-8


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["bad name"], "error: emit: argument NAME: 'bad name': must be an event name"),
        (["job.done", "--payload", "[1]"], "error: emit: argument --payload: '[1]': must be a JSON object"),
        (["job.done", "--payload", '{"a":'], "not JSON: Expecting value at character 5"),
        (["job.done", "--payload", json.dumps({"a": "x" * 20_000})], "at most 16384 bytes as UTF-8 JSON"),
        (["job.done", "--payload", '{"a":NaN}'], "a float out of range at payload['a']"),
    ],
)
def test_the_emit_command_refuses_bad_input_in_one_line_and_writes_nothing(
    store: ScheduleStore,
    db_path: Path,
    clock: FakeClock,
    args: list[str],
    words: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--db", str(db_path), "emit", *args], out=StringIO(), clock=clock)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err
    assert store.count_events() == 0


def test_the_emit_command_writes_as_the_user_running_it(store: ScheduleStore, db_path: Path, clock: FakeClock) -> None:
    out = StringIO()
    assert (
        main(["--db", str(db_path), "emit", "job.done", "--payload", '{"a": [1]}', "--json"], out=out, clock=clock) == 0
    )
    shown = json.loads(out.getvalue())
    (event,) = store.events()
    assert shown["id"] == event.id and shown["status"] == "pending"
    assert (event.name, event.payload, event.emitted_by, event.emitted_at) == (
        "job.done",
        {"a": [1]},
        operator_caller().id,
        T0,
    )


# ---------------------------------------------------------------------- the doors share one function


@run_async
async def test_the_command_line_and_the_topic_go_through_emit_event(
    store: ScheduleStore, db_path: Path, clock: FakeClock, make_schedule: MakeSchedule, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.integration.test_scheduler_registry_topics import CALLER, make_world

    calls: list[tuple[str, Any, str]] = []
    real = inbox.emit_event

    def spy(store: ScheduleStore, name: Any, payload: Any, *, by: Caller) -> Any:
        calls.append((name, payload, by.id))
        return real(store, name, payload, by=by)

    monkeypatch.setattr(inbox, "emit_event", spy)
    world = await make_world(store, clock, make_schedule, run=False)
    assert main(["--db", str(db_path), "emit", "job.stalled", "--payload", '{"job": "a"}'], clock=clock) == 0
    result = await world.ok("scheduler.emit_event", {"name": "job.stalled", "payload": {"job": "b"}})
    assert calls == [("job.stalled", {"job": "a"}, operator_caller().id), ("job.stalled", {"job": "b"}, CALLER)]
    assert result["emitted_by"] == CALLER and result["status"] == "pending"
    assert sorted(e.payload["job"] for e in store.events()) == ["a", "b"]


@run_async
async def test_the_topic_refuses_bad_events_naming_the_field_and_an_agent_cannot_set_off_a_high_risk_schedule(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    from tests.integration.test_scheduler_registry_topics import APPROVER, make_world

    world = await make_world(store, clock, make_schedule, run=False)
    store.add(make_schedule("payout_on_ok", trigger_type="event", expression="pay.ok", target="payout"))
    bad = await world.error("scheduler.emit_event", {"name": "bad name"})
    assert (bad["code"], bad["field"]) == ("invalid", "name")
    too_big = await world.error("scheduler.emit_event", {"name": "a", "payload": {"x": "y" * 20_000}})
    assert (too_big["code"], too_big["field"]) == ("invalid", "payload") and "16384 bytes" in too_big["message"]
    refused = await world.error("scheduler.emit_event", {"name": "pay.ok"})
    assert refused["code"] == "refused" and "payout_on_ok" in refused["message"]
    assert store.count_events() == 0
    assert (await world.ok("scheduler.emit_event", {"name": "pay.ok"}, APPROVER))["emitted_by"] == APPROVER.id
    assert store.count_events() == 1


@run_async
async def test_an_agent_cannot_queue_an_event_for_a_disabled_high_risk_schedule_to_fire_once_enabled(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    from tests.integration.test_scheduler_registry_topics import make_world

    world = await make_world(store, clock, make_schedule, run=False)
    store.add(make_schedule("payout_on_ok", trigger_type="event", expression="pay.ok", target="payout"))
    store.disable("payout_on_ok", reason="not yet")
    refused = await world.error("scheduler.emit_event", {"name": "pay.ok", "payload": {"amount": 1}})
    assert refused["code"] == "refused" and "payout_on_ok" in refused["message"]
    assert store.count_events() == 0
    await world.close()


@run_async
async def test_the_worker_does_not_let_an_agents_event_start_a_high_risk_schedule_whatever_it_was_when_emitted(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    from tests.integration.test_scheduler_registry_topics import APPROVER, make_world

    world = await make_world(store, clock, make_schedule, run=False)
    # Emitted while nothing high-risk listened: the door lets it in ...
    assert (await world.ok("scheduler.emit_event", {"name": "pay.ok", "payload": {"amount": 1}}))["status"] == "pending"
    # ... then a high-risk schedule on that name appears before a worker consumes the event.
    store.add(make_schedule("payout_on_ok", trigger_type="event", expression="pay.ok", target="payout", created_at=T0))
    store.add(make_schedule("note_on_ok", trigger_type="event", expression="pay.ok", target="sweep", created_at=T0))
    # A task another worker may know but this one does not: its risk cannot be told, so it is held too.
    store.add(
        make_schedule("mystery_on_ok", trigger_type="event", expression="pay.ok", target="elsewhere", created_at=T0)
    )
    assert (await world.ok("scheduler.emit_event", {"name": "pay.ok"}, APPROVER))["status"] == "pending"
    world.engine.wake()
    await world.engine.tick()
    await world.engine.wait_idle()
    by_emitter = {e.emitted_by: e for e in store.events()}
    agents, humans = by_emitter["agent:ops-7"], by_emitter[APPROVER.id]
    ran = {r.run_id: r.schedule_name for r in store.runs() if r.origin == "event"}
    assert sorted(ran[r] for r in agents.run_ids) == ["note_on_ok"]
    assert (
        agents.reason is not None
        and "payout_on_ok (high-risk task: an agent's event does not start it)" in agents.reason
    )
    assert "mystery_on_ok (task elsewhere unknown to this worker, its risk unknown" in agents.reason
    assert sorted(ran[r] for r in humans.run_ids) == ["mystery_on_ok", "note_on_ok", "payout_on_ok"]
    assert humans.reason is None
    await world.close()


def test_an_agent_may_emit_at_most_its_hourly_quota_and_people_are_not_counted(
    store: ScheduleStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inbox, "AGENT_EVENTS_PER_HOUR", 5)  # the rule, not the production size
    agent = Caller.agent("chatty")
    for n in range(inbox.AGENT_EVENTS_PER_HOUR):
        inbox.emit_event(store, "tick.tock", {"n": n}, by=agent)
    with pytest.raises(EventRefused, match=f"chatty emitted {inbox.AGENT_EVENTS_PER_HOUR} events in the last hour"):
        inbox.emit_event(store, "tick.tock", {}, by=agent)
    assert store.count_events() == inbox.AGENT_EVENTS_PER_HOUR
    inbox.emit_event(store, "tick.tock", {}, by=BY)  # a person at the command line is not counted
    inbox.emit_event(store, "tick.tock", {}, by=Caller.agent("quiet"))  # nor is another agent
    clock.advance(timedelta(hours=1, seconds=1))
    inbox.emit_event(store, "tick.tock", {}, by=agent)  # an hour on, the agent may emit again
    assert store.count_events() == inbox.AGENT_EVENTS_PER_HOUR + 3


def test_simultaneous_emits_by_one_agent_never_pass_its_quota(
    any_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight stores (eight connections, as eight processes would have) emit at once: the count and
    the write are one transaction under the emitter's lock, so exactly the quota gets in."""
    monkeypatch.setattr(inbox, "AGENT_EVENTS_PER_HOUR", 20)
    agent = Caller.agent("burst")
    stores = [ScheduleStore(any_url, clock=clock) for _ in range(8)]
    start = threading.Barrier(len(stores))
    written: list[str] = []
    refused: list[str] = []

    def emit_ten(store: ScheduleStore) -> None:
        start.wait()
        for n in range(10):
            try:
                written.append(inbox.emit_event(store, "tick.tock", {"n": n}, by=agent).id)
            except EventRefused as exc:
                refused.append(str(exc))

    threads = [threading.Thread(target=emit_ten, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    with ScheduleStore(any_url, clock=clock) as store:
        assert (len(written), len(refused), store.count_events()) == (20, 60, 20)
    assert all(r.startswith(f"{agent.id} emitted 20 events in the last hour") for r in refused)


def test_purging_the_inbox_deletes_only_events_consumed_before_the_cutoff(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    old = inbox.emit_event(store, "job.done", {}, by=BY)
    assert store.consume_event(old.id, worker_id="w1", now=clock.now())
    clock.advance(timedelta(days=10))
    recent = inbox.emit_event(store, "job.done", {}, by=BY)
    assert store.consume_event(recent.id, worker_id="w1", now=clock.now())
    waiting = inbox.emit_event(store, "job.done", {}, by=BY)
    assert store.purge_events(consumed_before=clock.now() - timedelta(days=7)) == 1
    assert sorted(e.id for e in store.events()) == sorted([recent.id, waiting.id])


def test_the_events_command_lists_the_inbox_read_only_and_purges_consumed_events(
    store: ScheduleStore, db_path: Path, clock: FakeClock
) -> None:
    old = inbox.emit_event(store, "job.done", {"n": 1}, by=BY)
    assert store.consume_event(old.id, worker_id="w1", now=clock.now())
    clock.advance(timedelta(days=10))
    waiting = inbox.emit_event(store, "job.other", {}, by=BY)
    out = StringIO()
    assert main(["--db", str(db_path), "events", "--json"], out=out, clock=clock) == 0
    assert [e["id"] for e in json.loads(out.getvalue())] == [waiting.id, old.id]
    out = StringIO()
    assert main(["--db", str(db_path), "events", "--status", "pending"], out=out, clock=clock) == 0
    assert "job.other" in out.getvalue() and "job.done" not in out.getvalue()
    assert main(["--db", str(db_path), "events", "purge"], clock=clock) == 2  # needs --older-than-days
    out = StringIO()
    assert main(["--db", str(db_path), "events", "purge", "--older-than-days", "7"], out=out, clock=clock) == 0
    assert out.getvalue().startswith("1 consumed event(s) purged")
    assert [e.id for e in store.events()] == [waiting.id]


# ---------------------------------------------------------------------- the command line reaches a running worker


def test_emit_from_the_command_line_reaches_a_running_engine(db_path: Path, make_schedule: MakeSchedule) -> None:
    asyncio.run(_emit_from_another_process(f"sqlite:///{db_path}", str(db_path), make_schedule))


@pytest.mark.postgres
def test_emit_from_the_command_line_reaches_a_running_engine_on_postgresql(
    pg_url: str, make_schedule: MakeSchedule
) -> None:
    asyncio.run(_emit_from_another_process(pg_url, pg_url, make_schedule))


#: The longest the engine may take to run what the other process emitted (a loaded machine: generous).
REACH_SECONDS = 60.0


async def _emit_from_another_process(url: str, db: str, make: MakeSchedule) -> None:
    store = ScheduleStore(url, clock=SystemClock())
    listening(store, make)
    # An hour between scans of its own: only the change feed can bring the event in.
    engine = ScheduleEngine(store, tasks(), tick_seconds=3600, worker_id="feed")
    await engine.start()
    runner = asyncio.ensure_future(engine.run_forever())
    try:
        command = [sys.executable, "-m", "agent.scheduler", "--db", db, "emit", "job.done", "--payload", '{"n": 1}']
        proc = await asyncio.create_subprocess_exec(
            *command, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=REACH_SECONDS)
        assert proc.returncode == 0, err.decode()
        assert out.decode().startswith("event job.done (ev_")

        async def ran() -> None:
            while not (
                store.count_events(EventStatus.PENDING) == 0
                and all(r.status is RunStatus.SUCCEEDED for rs in event_runs(store).values() for r in rs)
                and len(event_runs(store)) == 2
            ):
                await asyncio.sleep(0.05)

        await asyncio.wait_for(ran(), timeout=REACH_SECONDS)
    finally:
        await engine.stop()
        await runner
    runs = event_runs(store)
    assert sorted(runs) == ["on_done_a", "on_done_b"] and all(len(r) == 1 for r in runs.values())
    assert all(r[0].params["payload"] == {"n": 1} for r in runs.values())
    (event,) = store.events()
    assert (event.consumed_by, len(event.run_ids)) == ("feed", 2)
    store.close()


# ---------------------------------------------------------------------- the schema upgrade


def test_the_upgrade_statements_create_the_inbox_as_the_schema_describes_it(any_url: str, clock: FakeClock) -> None:
    ScheduleStore(any_url, clock=clock).close()
    engine = create_engine(any_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE event_inbox"))
            for statement in UPGRADES[3]:
                conn.execute(text(statement))
            conn.execute(text(UPGRADES[3][0]))  # again: a database create_all already gave the table
            columns = [c["name"] for c in inspect(conn).get_columns("event_inbox")]
            indexes = [i["column_names"] for i in inspect(conn).get_indexes("event_inbox")]
    finally:
        engine.dispose()
    assert columns == [c.name for c in TABLES["event_inbox"].columns]
    assert sorted(indexes) == [["emitted_by", "emitted_at"], ["status", "emitted_at"]]
    with ScheduleStore(any_url, clock=clock) as store:
        event = inbox.emit_event(store, "job.done", {"a": 1}, by=BY)
        assert store.consume_event(event.id, worker_id="w", now=clock.now())
        store.record_event_runs(event.id, run_ids=["run_1"], reason=None)
        (back,) = store.events()
        assert (back.payload, back.run_ids, back.status) == ({"a": 1}, ("run_1",), EventStatus.CONSUMED)
