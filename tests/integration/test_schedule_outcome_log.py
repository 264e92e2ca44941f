"""One log line per recorded run outcome, and a ``status`` that says the same in the same words."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest

from agent.scheduler import FakeClock, MissedRunPolicy, RunStatus, ScheduleDefinition, ScheduleStore, TriggerType
from agent.scheduler.cli import main
from agent.scheduler.engine import ScheduleEngine
from agent.scheduler.engine.outcomes import log as outcome_log
from agent.scheduler.engine.reconciliation import Reconciler
from agent.scheduler.outcome_words import ATTEMPT_FAILED, DEAD_LETTERED, SKIPPED, SUCCEEDED, outcome_text
from agent.scheduler.scheduled_run import ScheduledRun
from agent.scheduler.tasks import RunContext, TaskRegistry
from tests.conftest import run_async

MakeSchedule = Callable[..., ScheduleDefinition]
#: How long each executing task takes on the fake clock.
TAKES = timedelta(milliseconds=40)
#: ``<schedule>: run <id> <word> (attempt <n>[, <ms> ms][, stands for <n> occurrences])[: <detail>]``
LINE = re.compile(
    r"^(?P<schedule>[\w-]+): run (?P<run_id>\S+) (?P<word>succeeded|skipped|attempt failed|dead-lettered)"
    r" \(attempt (?P<attempt>\d+)(?:, (?P<ms>\d+) ms)?(?:, stands for (?P<stands>\d+) occurrences)?\)"
    r"(?:: (?P<detail>.*))?$"
)


#: A schedule that fires once, a minute after it is added.
ONCE: dict[str, Any] = {"trigger_type": TriggerType.DELAY, "expression": "+1m"}


def outcome_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    found = []
    for record in caplog.records:
        if record.name != outcome_log.name:
            continue
        match = LINE.match(record.getMessage())
        assert match is not None, record.getMessage()
        found.append({**match.groupdict(), "level": record.levelno})
    return found


def tasks_for(clock: FakeClock) -> TaskRegistry:
    tasks = TaskRegistry()

    async def ok(ctx: RunContext) -> str:
        clock.advance(TAKES)
        return "synced 3\nsecond line"

    async def flaky(ctx: RunContext) -> str:
        clock.advance(TAKES)
        if ctx.attempt == 1:
            raise ConnectionError("upstream refused\nmore detail")
        return "recovered"

    async def broken(ctx: RunContext) -> None:
        clock.advance(TAKES)
        raise ValueError(f"bad input on attempt {ctx.attempt}")

    tasks.add("ok", ok)
    tasks.add("flaky", flaky)
    tasks.add("broken", broken)
    tasks.add("poller", ok, requires=["ACTP_TEST_NEVER_SET_TOKEN"])
    return tasks


def cli_status(db_path: Path, clock: FakeClock) -> tuple[str, dict[str, Any]]:
    text, data = StringIO(), StringIO()
    assert main(["--db", str(db_path), "status"], out=text, clock=clock) == 0
    assert main(["--db", str(db_path), "status", "--json"], out=data, clock=clock) == 0
    return text.getvalue(), json.loads(data.getvalue())


@run_async
async def test_each_outcome_is_one_log_line_and_status_counts_the_same(
    store: ScheduleStore,
    db_path: Path,
    clock: FakeClock,
    make_schedule: MakeSchedule,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ACTP_TEST_NEVER_SET_TOKEN", raising=False)
    # Missed for two hours while no worker ran: its policy skips them, one row for all.
    store.add(make_schedule("asleep", expression="5m", target="ok", missed_run_policy=MissedRunPolicy.SKIP))
    first = ScheduleEngine(store, tasks_for(clock), clock=clock)
    await first.start()
    await first.stop()
    clock.advance(timedelta(hours=2))
    store.add(make_schedule("steady", expression="10m", target="ok"))
    store.add(make_schedule("flaky", target="flaky", retry_backoff=timedelta(seconds=30), **ONCE))
    store.add(make_schedule("broken", target="broken", max_retries=1, retry_backoff=timedelta(seconds=30), **ONCE))
    store.add(make_schedule("poller", target="poller", **ONCE))
    engine = ScheduleEngine(store, tasks_for(clock), clock=clock, tick_seconds=10)
    with caplog.at_level(logging.INFO, logger=outcome_log.name):
        await engine.start()
        await engine.run_until(clock.now() + timedelta(minutes=25))
        await engine.stop()
    lines = outcome_lines(caplog)

    by_run: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_run.setdefault(line["run_id"], []).append(line)
    runs = {r.run_id: r for r in store.runs()}
    assert set(by_run) == {r.run_id for r in runs.values() if r.status is not RunStatus.PENDING}
    words = Counter((line["schedule"], line["word"]) for line in lines)
    assert words == {
        ("asleep", SKIPPED): 1,
        ("asleep", SUCCEEDED): 6,  # due now (within its grace), then every 5 min up to +25 min
        ("steady", SUCCEEDED): 2,  # +10 min, +20 min
        ("flaky", ATTEMPT_FAILED): 1,
        ("flaky", SUCCEEDED): 1,
        ("broken", ATTEMPT_FAILED): 2,
        ("broken", DEAD_LETTERED): 1,
        ("poller", SKIPPED): 1,
    }
    for line in lines:
        run = runs[line["run_id"]]
        assert line["schedule"] == run.schedule_name
        if line["word"] == SKIPPED:
            # Missed: never started. Not configured: started, and ended before its task was called.
            assert (line["ms"] is None) is (line["schedule"] == "asleep")
        else:  # the run executed: its duration is on its line (tasks started in one tick share the clock)
            assert int(line["ms"]) >= TAKES / timedelta(milliseconds=1)
        if line["word"] in (SUCCEEDED, DEAD_LETTERED) or line["schedule"] == "poller":
            assert int(line["attempt"]) == run.attempt
        expected = logging.WARNING if line["word"] in (ATTEMPT_FAILED, DEAD_LETTERED) else logging.INFO
        assert line["level"] == expected

    [asleep] = [line for line in lines if (line["schedule"], line["word"]) == ("asleep", SKIPPED)]
    assert asleep["ms"] is None and int(asleep["stands"]) >= 20
    assert asleep["detail"].startswith("missed: ") and "policy skip" in asleep["detail"]
    [poller] = [line for line in lines if line["schedule"] == "poller"]
    assert poller["detail"] == "not configured: set ACTP_TEST_NEVER_SET_TOKEN"
    flaky = [line for line in lines if line["schedule"] == "flaky"]
    assert [(f["word"], f["attempt"]) for f in flaky] == [(ATTEMPT_FAILED, "1"), (SUCCEEDED, "2")]
    assert flaky[0]["detail"].startswith("ConnectionError: upstream refused; retry at ")
    assert flaky[0]["detail"].endswith("(attempt 2 of 4)") and "more detail" not in flaky[0]["detail"]
    assert flaky[1]["detail"] == "recovered"
    broken = [line for line in lines if line["schedule"] == "broken"]
    assert [(b["word"], b["attempt"]) for b in broken] == [
        (ATTEMPT_FAILED, "1"),
        (ATTEMPT_FAILED, "2"),
        (DEAD_LETTERED, "2"),
    ]
    assert broken[0]["detail"].endswith("(attempt 2 of 2)") and "retry at" in broken[0]["detail"]
    assert broken[1]["detail"] == "ValueError: bad input on attempt 2; no retry: dead-lettered"
    assert broken[2]["detail"].startswith("retries exhausted") and "last error: ValueError" in broken[2]["detail"]

    # status: the outcomes of the last hour, counted under the log's words; each schedule's last one
    # shown as its log line said it.
    text, data = cli_status(db_path, clock)
    recent = data["recent_outcomes"]["schedules"]
    counted = Counter({(name, word): n for name, r in recent.items() for word, n in r["counts"].items()})
    assert counted == words
    for name, r in recent.items():
        last = [line for line in lines if line["schedule"] == name][-1]
        assert r["last"].startswith(f"run {last['run_id']} {last['word']} (attempt {last['attempt']}")
        assert f"  {name}: " in text and r["last"] in text
    assert "outcomes in the last 1 hour(s):" in text
    assert "  broken: attempt failed 2, dead-lettered 1; last: run " in text


@run_async
async def test_many_runs_of_one_schedule_skipped_in_one_tick_are_one_line_with_the_count(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule, caplog: pytest.LogCaptureFixture
) -> None:
    orphan = store.add(make_schedule("orphan", expression="1h", target="gone"))
    for i in range(7):
        assert store.create_run(orphan, clock.now(), occurrence_key=f"manual:{i}") is not None
    store.add(make_schedule("steady", expression="1h", target="ok"))
    engine = ScheduleEngine(store, tasks_for(clock), clock=clock)
    with caplog.at_level(logging.INFO, logger=outcome_log.name):
        await engine.start()
        await engine.wait_idle()
        await engine.stop()
    messages = [r.getMessage() for r in caplog.records if r.name == outcome_log.name]
    skipped = store.runs(schedule="orphan", status=RunStatus.SKIPPED)
    assert len(skipped) >= 7
    [line] = [m for m in messages if m.startswith("orphan:")]
    assert line.startswith(f"orphan: {len(skipped)} runs skipped, the last: run ")
    assert line.endswith("skipped (attempt 1): task 'gone' is not registered in worker " + engine.worker_id)
    assert [m for m in messages if m.startswith("steady:")] == [m for m in messages if " succeeded " in m]


@run_async
async def test_an_outcome_whose_transaction_rolls_back_is_logged_once_when_it_commits(
    store: ScheduleStore,
    clock: FakeClock,
    make_schedule: MakeSchedule,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store.add(make_schedule("steady", target="ok", **ONCE))
    engine = ScheduleEngine(store, tasks_for(clock), clock=clock)
    await engine.start()
    clock.advance(timedelta(minutes=1))
    await engine.tick()  # starts the run
    for _ in range(5):
        await asyncio.sleep(0)  # the task ends; its outcome waits for the next tick
    fail_once = [True]
    real = store.finish_many

    def finish_then_fail(*args: Any, **kwargs: Any) -> list[ScheduledRun | Exception]:
        out = real(*args, **kwargs)
        if fail_once.pop() if fail_once else False:
            raise RuntimeError("the transaction fails after the write")
        return out

    monkeypatch.setattr(store, "finish_many", finish_then_fail)
    with caplog.at_level(logging.INFO, logger=outcome_log.name):
        with pytest.raises(RuntimeError):
            await engine.tick()
        assert [r for r in caplog.records if r.name == outcome_log.name] == []
        assert store.runs()[0].status is RunStatus.RUNNING  # nothing committed
        await engine.tick()
    [record] = [r for r in caplog.records if r.name == outcome_log.name]
    [run] = store.runs()
    assert run.status is RunStatus.SUCCEEDED
    assert record.getMessage() == f"steady: {outcome_text(run)}"
    await engine.stop()


@run_async
async def test_without_info_only_failures_are_logged_and_nothing_else_is_formatted(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule, caplog: pytest.LogCaptureFixture
) -> None:
    store.add(make_schedule("steady", target="ok", **ONCE))
    store.add(make_schedule("broken", target="broken", max_retries=0, **ONCE))
    engine = ScheduleEngine(store, tasks_for(clock), clock=clock)
    with caplog.at_level(logging.WARNING, logger=outcome_log.name):
        await engine.start()
        await engine.run_until(clock.now() + timedelta(minutes=2))
        await engine.stop()
    assert {r.status for r in store.runs()} == {RunStatus.SUCCEEDED, RunStatus.DEAD_LETTERED}
    messages = [r.getMessage() for r in caplog.records if r.name == outcome_log.name]
    assert [m.split(" (")[0].split(" ", 3)[-1] for m in messages] == [ATTEMPT_FAILED, DEAD_LETTERED]
    assert all(m.startswith("broken: ") for m in messages)


@pytest.mark.parametrize(
    "found_by", ["the restart of its worker", "another worker's full scan", "another worker's reconcile task"]
)
@run_async
async def test_an_orphaned_attempt_is_one_line_with_what_follows_and_status_counts_it_the_same(
    store: ScheduleStore,
    db_path: Path,
    clock: FakeClock,
    make_schedule: MakeSchedule,
    caplog: pytest.LogCaptureFixture,
    mocker: Any,
    found_by: str,
) -> None:
    from tests.integration.test_schedule_durability import Work, crash
    from tests.integration.test_schedule_durability import engine as make_engine

    store.add(make_schedule("retryable", trigger_type="delay", expression="+1m", target="blocked"))
    store.add(make_schedule("one_shot", trigger_type="delay", expression="+1m", target="blocked", max_retries=0))
    work = Work(clock)
    first = make_engine(store, work, clock)
    await first.start()
    await first.run_until(clock.now() + timedelta(minutes=1))
    await crash(first)  # both runs left running, owned by w1
    work.gate.set()
    with caplog.at_level(logging.INFO, logger=outcome_log.name):
        if found_by == "the restart of its worker":
            clock.advance(5)
            second = make_engine(store, work, clock)
            assert (await second.start()).orphans_found == 2
        else:
            if found_by == "another worker's reconcile task":  # not the full scan's sweep: the task's
                mocker.patch.object(Reconciler, "sweep_orphans", return_value=())
            second = make_engine(store, work, clock, worker="survivor")
            assert (await second.start()).orphans_found == 0
            store.add(make_schedule("sweeper", expression="10s", target="scheduler.reconcile"))
            await second.run_until(clock.now() + timedelta(seconds=40))  # the 30 s leases lapse
        await second.wait_idle()
        await second.stop()
    lines = [line for line in outcome_lines(caplog) if line["schedule"] != "sweeper"]
    words = Counter((line["schedule"], line["word"]) for line in lines)
    assert words == {
        ("retryable", ATTEMPT_FAILED): 1,
        ("retryable", SUCCEEDED): 1,
        ("one_shot", ATTEMPT_FAILED): 1,
        ("one_shot", DEAD_LETTERED): 1,
    }
    failed = {line["schedule"]: line for line in lines if line["word"] == ATTEMPT_FAILED}
    for line in failed.values():
        assert line["attempt"] == "1" and line["level"] == logging.WARNING
        assert line["detail"].startswith("Orphaned: orphaned: owner w1 stopped renewing its lease")
    assert failed["retryable"]["detail"].endswith("; retry now (attempt 2 of 4)")
    assert failed["one_shot"]["detail"].endswith("; no retry: dead-lettered")

    _, data = cli_status(db_path, clock)
    recent = data["recent_outcomes"]["schedules"]
    counted = Counter({(name, word): n for name, r in recent.items() for word, n in r["counts"].items()})
    assert counted - Counter({k: v for k, v in counted.items() if k[0] == "sweeper"}) == words
    if found_by == "another worker's reconcile task":
        sweeps = [r.outcome for r in store.runs(schedule="sweeper") if r.outcome and not r.outcome.startswith("0 ")]
        assert sweeps == ["2 orphaned run(s) found; the next tick fails them over"]
