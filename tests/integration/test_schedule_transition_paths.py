"""The store's two ways of writing transitions agree: one UPDATE per run, or a few per batch.

The same runs go through the same calls (start_many, finish_many, transition_many,
reset_failures) on two fresh SQLite stores whose FakeClocks show the same times: one store writes
every item on its own (a threshold no batch reaches), the other writes every batch with its batch
statements (threshold 1). Every column of every row, and every result (the runs moved, the refusals and
their reasons), must be the same.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest.mock import patch

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import create_engine, select

from agent.scheduler import FakeClock, RunStatus, ScheduleDefinition, ScheduledRun, ScheduleStore, TriggerType
from agent.scheduler.errors import SchedulerError
from agent.scheduler.machines.run_lifecycle import RUN_MACHINE
from agent.scheduler.schema import dead_letters, scheduled_runs, schedules
from tests.conftest import T0

RUNS = 8
TRIGGERS = [
    "start",
    "succeed",
    "fail",
    "orphan",
    "requeue",
    "checkpoint",
    "resume",
    "skip",
    "cancel",
    "retry",
    "dead_letter",
    "replay",
]
#: The runs' pasts: how each got to the state the calls find it in (runs of b cannot retry).
PASTS = [
    [],
    ["start"],
    ["start", "fail"],
    ["start", "fail", "retry"],
    ["start", "fail", "retry", "start", "fail", "retry", "start", "fail"],
    ["start", "checkpoint"],
    ["start", "succeed"],
    ["skip"],
]
#: Values whose stored forms differ although Python may call them equal (1, True, 1.0).
CHECKPOINTS = [None, 1, True, 1.0, {"n": 1}, {"n": True}, [1, "a"], {"b": 1, "a": 2}, {"a": 2, "b": 1}]
VALUES = {
    "outcome": st.sampled_from([None, "ok", "3 synced"]),
    "reason": st.sampled_from([None, "operator", "shutdown"]),
    "error": st.sampled_from([None, "ValueError: boom"]),
    "checkpoint": st.sampled_from(CHECKPOINTS),
}


@dataclass(frozen=True)
class Item:
    run: int
    trigger: str
    changes: dict[str, Any]
    stale: bool
    """Fire on the run as it was created, not as it is now (a snapshot another worker outdated)."""


#: Triggers the engine records finished runs with.
ENDINGS = ["succeed", "fail", "skip", "cancel"]
KINDS = ["start_many", "transition_many", "finish_many", "reset_failures", "advance"]


def _allowed(status: RunStatus, pool: list[str]) -> list[str]:
    """The triggers of ``pool`` the run machine accepts from ``status`` (all of them when none is)."""
    fits = [t for t in pool if status.value in RUN_MACHINE.events[t].transitions]
    return fits or pool


def draw_call(data: st.DataObject, states: list[RunStatus], pool: list[str]) -> list[Item]:
    """The items of one call: runs in one status mostly get one trigger it allows, all changing the
    same fields (what a batch groups, with values that differ from run to run); some items are any
    trigger with any changes; mostly one item per run, sometimes a run twice."""
    keys = data.draw(st.sets(st.sampled_from(sorted(VALUES))))
    alike = st.fixed_dictionaries({k: VALUES[k] for k in keys})
    if data.draw(st.integers(0, 4)) == 0:
        runs = data.draw(st.lists(st.integers(0, RUNS - 1), max_size=RUNS))
    else:
        runs = data.draw(st.lists(st.integers(0, RUNS - 1), min_size=RUNS // 2, max_size=RUNS, unique=True))
    by_status = {
        status: data.draw(st.sampled_from(_allowed(status, pool) if data.draw(st.integers(0, 4)) else TRIGGERS))
        for status in sorted({states[i] for i in runs})
    }
    items = []
    for i in runs:
        stale = data.draw(st.integers(0, 5)) == 0
        if data.draw(st.integers(0, 4)) == 0:
            trigger = data.draw(st.sampled_from(TRIGGERS))
            items.append(Item(i, trigger, data.draw(st.fixed_dictionaries({}, optional=VALUES)), stale))
        else:
            items.append(Item(i, by_status[states[i]], data.draw(alike), stale))
    return items


def draw_step(data: st.DataObject, states: list[RunStatus]) -> tuple[str, Any, Any]:
    kind = data.draw(st.sampled_from(KINDS))
    if kind == "start_many":
        runs = data.draw(st.lists(st.integers(0, RUNS - 1), min_size=RUNS // 2, max_size=RUNS, unique=True))
        return (kind, runs, data.draw(st.sampled_from([None, "catch-up"])))
    if kind == "transition_many":
        return (kind, draw_call(data, states, TRIGGERS), None)
    if kind == "finish_many":
        return (kind, draw_call(data, states, ENDINGS), None)
    if kind == "reset_failures":
        return (kind, data.draw(st.lists(st.sampled_from(["a", "b"]), max_size=2)), None)
    return (kind, data.draw(st.integers(0, 120)), None)


class World:
    """One store, its runs by index (as created and as last returned), and what its calls returned."""

    def __init__(self, file: Path, batch_min: int, pasts: list[int]) -> None:
        self.url = f"sqlite:///{file}"
        self.clock = FakeClock(T0)
        self.store = ScheduleStore(self.url, clock=self.clock, batch_min=batch_min)
        a = self.store.add(_schedule("a", max_retries=2))
        b = self.store.add(_schedule("b", max_retries=0, breaker_threshold=1))
        self.store.record_outcome(b.id, failed=True)
        b = self.store.transition_breaker(self.store.get("b"), "trip")  # b's dead letters wait for a reset
        self.ids = {a.id: "a", b.id: "b"}
        self.created: list[ScheduledRun] = []
        for i in range(RUNS):
            # The same run ids in both stores: a retry's backoff jitter is derived from the run id.
            with patch("agent.scheduler.store.runs.new_id", return_value=f"run_{i}"):
                run = self.store.create_run((a, b)[i % 2], T0 + timedelta(minutes=i))
            assert run is not None
            self.created.append(run)
        self.current = list(self.created)
        self.results: list[Any] = []
        for i, past in enumerate(pasts):  # each run's past, from an hour ago, five minutes a step
            for k, trigger in enumerate(PASTS[past]):
                at = T0 - timedelta(hours=1) + timedelta(minutes=5 * k)
                changes: dict[str, Any] = {"owner": "w0"} if trigger == "start" else {}
                try:
                    self.current[i] = self.store.transition(self.current[i], trigger, now=at, **changes)
                except SchedulerError:  # a guard said no (b never retries): the run stays as it is
                    break

    def snapshot(self, item: Item) -> ScheduledRun:
        return self.created[item.run] if item.stale else self.current[item.run]

    def note(self, results: list[Any]) -> None:
        index = {r.run_id: i for i, r in enumerate(self.current)}
        for moved in results:
            if isinstance(moved, ScheduledRun):
                self.current[index[moved.run_id]] = moved
        self.results.append([self.describe(r, index) for r in results])

    def describe(self, result: Any, index: dict[str, int]) -> Any:
        if isinstance(result, ScheduledRun):
            return ("run", index[result.run_id], _without_ids(asdict(result)))
        if isinstance(result, SchedulerError):  # a refusal or a lost race, with its reason
            run_id = getattr(result, "run_id", "")
            return (type(result).__name__, index[run_id], str(result).replace(run_id, f"run #{index[run_id]}"))
        if isinstance(result, ScheduleDefinition):
            return ("schedule", self.ids[result.id], result.consecutive_failures, result.breaker_state)
        raise AssertionError(f"unexpected result {result!r}")

    def apply(self, step: tuple[str, Any, Any]) -> None:
        kind, arg, extra = step
        store = self.store
        if kind == "advance":
            self.clock.advance(timedelta(seconds=arg))
        elif kind == "start_many":
            runs = [self.current[i] for i in arg]
            reasons = {r.run_id: extra for r in runs if extra is not None}
            lease = self.clock.now() + timedelta(minutes=5)
            self.note(store.start_many(runs, owner="w1", lease_until=lease, reasons=reasons))
        elif kind in ("transition_many", "finish_many"):
            items = [(self.snapshot(i), i.trigger, dict(i.changes)) for i in arg]
            self.note(getattr(store, kind)(items))
        else:
            by_name = {name: sid for sid, name in self.ids.items()}
            self.results.append([self.describe(s, {}) for s in store.reset_failures(by_name[n] for n in arg)])

    def rows(self) -> dict[str, Any]:
        """Every column of every row the calls may change, ids replaced by run index or schedule name."""
        index = {r.run_id: i for i, r in enumerate(self.current)}

        engine = create_engine(self.url)
        with engine.connect() as conn:
            runs = {
                index[row["run_id"]]: _without_ids(dict(row)) for row in conn.execute(select(scheduled_runs)).mappings()
            }
            letters = sorted(
                (index[row["run_id"]], _without_ids(dict(row))) for row in conn.execute(select(dead_letters)).mappings()
            )
            # A schedule row's version is a random token each store draws for itself.
            kept = {
                self.ids[row["id"]]: _without_ids({k: v for k, v in row.items() if k != "version"})
                for row in conn.execute(select(schedules)).mappings()
            }
        engine.dispose()
        return {"runs": runs, "dead_letters": letters, "schedules": kept}


def _schedule(name: str, **kw: Any) -> ScheduleDefinition:
    return ScheduleDefinition(
        name=name,
        trigger_type=TriggerType.INTERVAL,
        expression="1h",
        target="t",
        retry_backoff=timedelta(seconds=30),
        **kw,
    )


def _without_ids(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("id", "run_id", "schedule_id")}


@given(
    pasts=st.lists(st.integers(0, len(PASTS) - 1), min_size=1, max_size=3).flatmap(
        lambda few: st.lists(st.sampled_from(few), min_size=RUNS, max_size=RUNS)
    ),
    steps=st.integers(1, 8),
    data=st.data(),
)
def test_the_batch_and_the_single_path_write_the_same_rows_and_return_the_same_results(
    pasts: list[int], steps: int, data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        single = World(Path(tmp) / "single.db", batch_min=10**9, pasts=pasts)
        batch = World(Path(tmp) / "batch.db", batch_min=1, pasts=pasts)
        try:
            for _ in range(steps):
                step = draw_step(data, [r.status for r in single.current])
                single.apply(step)
                batch.apply(step)
            # repr: equal values of another type or key order (1, True, 1.0) are not the same row
            assert repr(batch.results) == repr(single.results)
            assert repr(batch.rows()) == repr(single.rows())
        finally:
            single.store.close()
            batch.store.close()
