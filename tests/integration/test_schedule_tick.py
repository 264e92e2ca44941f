"""The database side of a tick on its own, on real SQLite files: one frozen result per tick, and a
transaction that runs again (its first commit failed) does the same work as one that did not."""

from __future__ import annotations

import dataclasses
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy import exc as sa

from agent.scheduler import ConcurrencyPolicy, FakeClock, ScheduleDefinition, ScheduleStore, TriggerType
from agent.scheduler.engine.breakers import Breakers
from agent.scheduler.engine.reconciliation import Reconciler
from agent.scheduler.engine.tick import EVERYTHING, Asks, Ended, TickInputs, TickResult, TickWork
from agent.scheduler.enums import RiskTier
from agent.scheduler.inbox import new_event
from agent.scheduler.store import connection as store_module
from tests.conftest import T0

WORKER = "w-tick"
SEC = timedelta(seconds=1)


class FirstCommitFails:
    """While ``armed``, the next commit of the store's transactions fails with "database is locked"."""

    def __init__(self, store: ScheduleStore) -> None:
        self.armed = False
        self.hits = 0
        event.listen(store.db.engine, "commit", self._commit)

    def _commit(self, conn: Any) -> None:
        if self.armed:
            self.armed = False
            self.hits += 1
            conn.connection.dbapi_connection.rollback()  # the commit failed: nothing was written
            raise sa.OperationalError("COMMIT", {}, sqlite3.OperationalError("database is locked"))


@pytest.fixture(autouse=True)
def quick_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "OUTAGE_RETRY_SECONDS", 0.0)


def seeded(path: Path, clock: FakeClock) -> ScheduleStore:
    store = ScheduleStore(path, clock=clock)
    every = {"trigger_type": TriggerType.INTERVAL, "target": "work"}
    store.add(ScheduleDefinition(name="every10", expression="10s", **every))
    store.add(
        ScheduleDefinition(name="one_at_a_time", expression="5s", concurrency_policy=ConcurrencyPolicy.FORBID, **every)
    )
    store.add(ScheduleDefinition(name="on_ping", trigger_type=TriggerType.EVENT, expression="ping", target="work"))
    store.add(
        ScheduleDefinition(name="unknown_task", trigger_type=TriggerType.INTERVAL, expression="10s", target="gone")
    )
    manual = store.add(ScheduleDefinition(name="manual", expression="1d", **every))
    store.create_run(manual, T0, occurrence_key="manual:1", origin="manual")
    return store


def tick_work(store: ScheduleStore) -> TickWork:
    breakers = Breakers(store)
    reconciler = Reconciler(store, breakers, worker_id=WORKER, boot_id="boot", tick_seconds=10)
    return TickWork(
        store,
        reconciler,
        breakers,
        worker_id=WORKER,
        lease=timedelta(seconds=30),
        tick_seconds=10,
        has_task=lambda target: target == "work",
        task_tier=lambda target: RiskTier.LOW if target == "work" else None,
    )


def three_ticks(store: ScheduleStore, clock: FakeClock, fault: FirstCommitFails | None) -> list[TickResult]:
    """Three ticks 10 s apart; each records what the one before started, and gets an event."""
    work = tick_work(store)
    results: list[TickResult] = []
    ended: tuple[Ended, ...] = ()
    for step in range(3):
        if step:
            clock.advance(10)
        if fault is not None:
            fault.armed = True
        inputs = TickInputs(
            now=clock.now(),
            finished=ended,
            events=(new_event("ping", {"step": step}, emitted_by="host", emitted_at=clock.now()),),
            asks=EVERYTHING if step == 0 else Asks(),
        )
        result = work.tick(inputs)
        assert work.state is result.state  # adopted once committed
        results.append(result)
        ended = tuple(
            Ended(run, "succeed", {"outcome": "ok", "completed_at": clock.now()}) for run, _ in result.started
        )
    return results


def summary(store: ScheduleStore, results: list[TickResult]) -> list[Any]:
    """What the ticks did, without what differs between two stores (run ids, real time)."""
    ticks = [
        (
            sorted((run.schedule_name, run.intended_run_at, run.origin) for run, _ in r.started),
            sorted(store.get(sid).name for sid in r.replace),
            r.asks,
            dataclasses.replace(
                r.state,
                last_full_scan_real=0.0,
                waiting=frozenset(store.get(sid).name for sid in r.state.waiting),
            ),
        )
        for r in results
    ]
    rows = sorted(
        (r.schedule_name, r.intended_run_at, r.status.value, r.attempt, r.origin, r.reason or "") for r in store.runs()
    )
    schedules = sorted((s.name, s.next_run_at, s.last_run_at, s.enabled) for s in store.list())
    heartbeat = (store.get_state(f"worker:{WORKER}") or {}).get("heartbeat_at")
    return [ticks, rows, schedules, heartbeat]


def test_a_tick_whose_first_commit_fails_runs_again_and_does_the_same_work(tmp_path: Path) -> None:
    clean_clock, faulty_clock = FakeClock(T0), FakeClock(T0)
    clean = seeded(tmp_path / "clean.db", clean_clock)
    faulty = seeded(tmp_path / "faulty.db", faulty_clock)
    fault = FirstCommitFails(faulty)

    expected = summary(clean, three_ticks(clean, clean_clock, None))
    got = summary(faulty, three_ticks(faulty, faulty_clock, fault))

    assert fault.hits == 3  # every tick's first attempt rolled back, and ran again as a whole
    assert got == expected
    ticks, rows, _, heartbeat = got
    assert all(started for started, *_ in ticks)  # the ticks did real work: runs were started each time
    assert (
        "unknown_task",
        T0 + 10 * SEC,
        "skipped",
        1,
        "schedule",
        "task 'gone' is not registered in worker w-tick",
    ) in rows
    assert sum(1 for row in rows if row[0] == "on_ping" and row[2] == "succeeded") == 2
    # Each tick's event was written to the inbox and consumed once, its attempt that rolled back included.
    assert [(e.status.value, len(e.run_ids)) for e in faulty.events()] == [("consumed", 1)] * 3
    assert heartbeat == (T0 + 20 * SEC).isoformat()  # written by the last tick, in its second attempt
    clean.close()
    faulty.close()


def test_a_tick_result_cannot_be_changed(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    store = seeded(tmp_path / "s.db", clock)
    result = tick_work(store).tick(TickInputs(now=clock.now(), asks=EVERYTHING))

    assert result.started and isinstance(result.started, tuple)
    assert isinstance(result.replace, frozenset) and isinstance(result.state.waiting, frozenset)
    for value, name in ((result, "started"), (result.state, "schedule_due"), (result.asks, "full_scan")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, name, None)
    assert result.state.next_due == min(d for d in (result.state.schedule_due, result.state.retry_due) if d)
    store.close()
