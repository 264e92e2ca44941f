"""Task code that cannot be stopped by wishing, on a SystemClock and a real SQLite file.

A sync task's thread cannot be cancelled, and an async task that blocks the event loop cannot be
interrupted until it yields. What is recorded must be what happened: a thread that ended is
recorded for its outcome, a thread still running when its run is requeued is left to end with the
process, a timeout is recorded only once the thread has ended, and an async task that held the
loop past its timeout failed by timeout.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.scheduler import RunStatus, ScheduleDefinition, ScheduleStore, SystemClock
from agent.scheduler.engine import ScheduleEngine
from agent.scheduler.scheduled_run import ScheduledRun
from agent.scheduler.tasks import RunContext, TaskRegistry
from tests.conftest import run_async

MakeSchedule = Callable[..., ScheduleDefinition]
#: Longest a test waits for a thread or a row to get somewhere (real seconds).
PATIENCE = 10.0


@pytest.fixture
def live_store(tmp_path: Path) -> Iterator[ScheduleStore]:
    store = ScheduleStore(tmp_path / "threads.db", clock=SystemClock())
    yield store
    store.close()


class Held:
    """A sync task that runs until the test releases it, and says when it began and ended."""

    def __init__(self) -> None:
        self.began = threading.Event()
        self.release = threading.Event()
        self.ended = threading.Event()
        self.saw_stop = threading.Event()

    def __call__(self, ctx: RunContext) -> str:
        self.began.set()
        while not self.release.wait(0.01):
            if ctx.stop_requested.is_set():
                self.saw_stop.set()
        self.ended.set()
        return "did all its work"


def held_async(held: Held) -> Callable[[RunContext], Any]:
    """``held`` as an async task: it yields while it waits, and likewise never stops when asked."""

    async def task(ctx: RunContext) -> str:
        held.began.set()
        while not held.release.is_set():
            if ctx.stop_requested.is_set():
                held.saw_stop.set()
            await asyncio.sleep(0.01)
        held.ended.set()
        return "did all its work"

    return task


def start_engine(store: ScheduleStore, **tasks: Any) -> ScheduleEngine:
    registry = TaskRegistry()
    for name, fn in tasks.items():
        registry.add(name, fn)
    return ScheduleEngine(store, registry, tick_seconds=0.05, worker_id="threads")


async def run_one(engine: ScheduleEngine, name: str) -> ScheduledRun:
    await engine.start()
    run = await engine.run_now(name)
    await engine.tick()
    return run


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("policy", ["requeue", "graceful_finish", "checkpoint_and_stop"])
@run_async
async def test_a_thread_that_ends_within_the_shutdown_timeout_is_recorded_for_its_outcome(
    live_store: ScheduleStore, make_schedule: MakeSchedule, policy: str
) -> None:
    held = Held()
    live_store.add(make_schedule("sync", expression="1h", target="held", shutdown_policy=policy, shutdown_timeout=30))
    engine = start_engine(live_store, held=held)
    run = await run_one(engine, "sync")
    await until(held.began.is_set, "the thread to begin")
    stopping = asyncio.create_task(engine.stop())
    await asyncio.sleep(0.2)  # the stop is under way, waiting for the thread
    held.release.set()
    await stopping
    done = live_store.get_run(run.run_id)
    assert (done.status, done.outcome) == (RunStatus.SUCCEEDED, "did all its work")


# An async task is cut at once under requeue; under the other policies it may end on its own.
@pytest.mark.parametrize("policy", ["graceful_finish", "checkpoint_and_stop"])
@run_async
async def test_an_async_task_that_ends_on_its_own_within_the_shutdown_timeout_is_recorded_for_its_outcome(
    live_store: ScheduleStore, make_schedule: MakeSchedule, policy: str
) -> None:
    held = Held()
    live_store.add(make_schedule("tardy", expression="1h", target="held", shutdown_policy=policy, shutdown_timeout=30))
    engine = start_engine(live_store, held=held_async(held))
    run = await run_one(engine, "tardy")
    await until(held.began.is_set, "the task to begin")
    stopping = asyncio.create_task(engine.stop())
    await asyncio.sleep(0.2)  # the stop is under way, waiting for the task
    held.release.set()
    await stopping
    done = live_store.get_run(run.run_id)
    # It saved no checkpoint, and did all its work: requeued, it would run again after the restart.
    assert (done.status, done.outcome) == (RunStatus.SUCCEEDED, "did all its work")


@pytest.mark.parametrize("policy", ["requeue", "graceful_finish"])
@run_async
async def test_a_thread_still_running_at_the_shutdown_timeout_is_requeued_and_not_waited_for(
    live_store: ScheduleStore, make_schedule: MakeSchedule, policy: str
) -> None:
    held = Held()
    live_store.add(make_schedule("sync", expression="1h", target="held", shutdown_policy=policy, shutdown_timeout=0.3))
    engine = start_engine(live_store, held=held)
    run = await run_one(engine, "sync")
    await until(held.began.is_set, "the thread to begin")
    await asyncio.wait_for(engine.stop(), PATIENCE)  # a stop that waited for the thread would never end
    requeued = live_store.get_run(run.run_id)
    assert requeued.status is RunStatus.PENDING
    assert requeued.reason is not None and "its thread ends with the process" in requeued.reason
    assert not held.ended.is_set()  # the stop did not wait for the thread
    held.release.set()  # the thread ends after its run was recorded: nothing more is written
    await until(held.ended.is_set, "the thread to end")
    await asyncio.sleep(0.05)
    assert live_store.get_run(run.run_id) == requeued


@run_async
async def test_a_thread_past_its_timeout_is_asked_to_stop_and_recorded_failed_only_once_it_ended(
    live_store: ScheduleStore, make_schedule: MakeSchedule
) -> None:
    held = Held()
    live_store.add(make_schedule("sync", expression="1h", target="held", timeout=0.2, retry_backoff=3600))
    engine = start_engine(live_store, held=held)
    runner = asyncio.create_task(engine.run_forever())
    run = await engine.run_now("sync")
    await until(held.saw_stop.is_set, "the thread to be asked to stop at its timeout")
    await asyncio.sleep(0.2)  # several ticks later the thread still runs: nothing may be recorded yet
    assert live_store.get_run(run.run_id).status is RunStatus.RUNNING
    held.release.set()
    await until(lambda: live_store.get_run(run.run_id).status is RunStatus.FAILED, "the run to be recorded")
    failed = live_store.get_run(run.run_id)
    assert (failed.reason, failed.error_type) == ("timeout", "TimeoutError")
    assert failed.error is not None and "its thread was asked to stop" in failed.error
    await engine.stop()
    await runner


@run_async
async def test_an_async_task_that_blocks_the_loop_past_its_timeout_fails_by_timeout_and_is_logged(
    live_store: ScheduleStore, make_schedule: MakeSchedule, caplog: pytest.LogCaptureFixture
) -> None:
    async def blocker(ctx: RunContext) -> str:
        time.sleep(1.2)  # blocking code in an async task: the loop can do nothing meanwhile
        return "finished late"

    live_store.add(make_schedule("blocking", expression="1h", target="blocker", timeout=0.2, retry_backoff=3600))
    engine = start_engine(live_store, blocker=blocker)
    run = await run_one(engine, "blocking")
    with caplog.at_level(logging.WARNING, logger="agent.scheduler.engine"):
        await engine.wait_idle()
    failed = live_store.get_run(run.run_id)
    assert (failed.status, failed.reason, failed.error_type) == (RunStatus.FAILED, "timeout", "TimeoutError")
    assert failed.error is not None and "held the event loop for 1." in failed.error
    assert any("held the event loop for 1." in r.getMessage() for r in caplog.records)
    await engine.stop()


@run_async
async def test_a_blocked_event_loop_is_logged_even_when_no_run_is_to_blame(
    live_store: ScheduleStore, caplog: pytest.LogCaptureFixture
) -> None:
    engine = start_engine(live_store)
    await engine.start()
    with caplog.at_level(logging.WARNING, logger="agent.scheduler.engine"):
        time.sleep(1.2)  # something else on the loop (a callback, the host's code) blocks it
        await asyncio.sleep(0.3)  # the next beats
    assert any("the event loop was blocked for 1." in r.getMessage() for r in caplog.records)
    await engine.stop()
