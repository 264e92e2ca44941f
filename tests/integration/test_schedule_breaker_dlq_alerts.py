"""Circuit breaker, dead-letter queue and durable alerts, on a real SQLite file and a local Bot API server."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest

from agent.scheduler import BreakerState, FakeClock, RunStatus, ScheduleDefinition, ScheduleStore
from agent.scheduler.adapters.telegram import TelegramNotifier
from agent.scheduler.alerts import chunks
from agent.scheduler.cli import main, operator_caller
from agent.scheduler.engine import ALERT_SWEEP, ScheduleEngine
from agent.scheduler.errors import GuardRejected, TaskNotConfigured
from agent.scheduler.tasks import RunContext, TaskRegistry
from tests.conftest import run_async
from tests.fixtures.telegram_api import TOKEN, FakeBotApi

MakeSchedule = Callable[..., ScheduleDefinition]
MIN = timedelta(minutes=1)
CHAT = 4242


class Flaky:
    """A task that fails until ``fixed``; also one that is never configured."""

    def __init__(self) -> None:
        self.fixed = False
        self.calls = 0

    def registry(self) -> TaskRegistry:
        tasks = TaskRegistry()
        tasks.add("flaky", self.flaky)
        tasks.add("unconfigured", self.unconfigured)
        return tasks

    async def flaky(self, ctx: RunContext) -> str:
        self.calls += 1
        if not self.fixed:
            raise ConnectionError(f"service down (call {self.calls})")
        return "ok"

    async def unconfigured(self, ctx: RunContext) -> None:
        raise TaskNotConfigured("ACTP_NOWHERE_URL")


@pytest.fixture
def bot_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBotApi]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    api = FakeBotApi().start()
    yield api
    api.stop()


def engine(
    store: ScheduleStore, work: Flaky, clock: FakeClock, notifier: TelegramNotifier | None = None
) -> ScheduleEngine:
    return ScheduleEngine(store, work.registry(), clock=clock, tick_seconds=3600, worker_id="w1", notifier=notifier)


@run_async
async def test_three_terminal_failures_open_the_breaker_stop_the_schedule_and_raise_an_alert(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    store.add(make_schedule("fragile", expression="1m", target="flaky", max_retries=0))
    work = Flaky()
    e = engine(store, work, clock)
    await e.start()
    await e.run_until(clock.now() + 3 * MIN)
    await e.wait_idle()
    fragile = store.get("fragile")
    assert (fragile.breaker_state, fragile.consecutive_failures) == (BreakerState.OPEN, 3)
    assert fragile.breaker_opened_at == clock.now()
    assert len(store.dead_letters()) == 3
    opened = [a for a in store.alerts() if a.kind == "breaker_opened"]
    assert len(opened) == 1 and "fragile: 3 consecutive failed runs" in opened[0].text.replace("for ", "")
    assert "python -m agent.scheduler reset fragile" in opened[0].text
    assert opened[0].payload["last_error"] == "ConnectionError: service down (call 3)"

    await e.run_until(clock.now() + 10 * MIN)
    assert len(store.runs(schedule="fragile")) == 3  # open: nothing new materializes

    work.fixed = True
    store.transition_breaker("fragile", "reset")
    e.wake()
    await e.run_until(clock.now() + MIN)
    await e.wait_idle()
    runs = store.runs(schedule="fragile")
    assert [r.status for r in runs] == [RunStatus.DEAD_LETTERED] * 3 + [RunStatus.SUCCEEDED]
    assert runs[-1].intended_run_at > clock.now() - MIN  # the next occurrence, not a catch-up of the open period
    assert store.get("fragile").consecutive_failures == 0
    await e.stop()


@run_async
async def test_with_a_cooldown_one_trial_run_closes_or_reopens_the_breaker(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    store.add(
        make_schedule(
            "probe_me", expression="1m", target="flaky", max_retries=0, breaker_threshold=2, breaker_cooldown=600
        )
    )
    work = Flaky()
    e = engine(store, work, clock)
    await e.start()
    await e.run_until(clock.now() + 2 * MIN)
    await e.wait_idle()
    assert store.get("probe_me").breaker_state is BreakerState.OPEN
    await e.run_until(clock.now() + 9 * MIN)
    assert len(store.runs(schedule="probe_me")) == 2 and store.get("probe_me").breaker_state is BreakerState.OPEN

    await e.run_until(clock.now() + 2 * MIN)  # cooldown over: half-open, one trial run, which fails
    await e.wait_idle()
    probe = store.get("probe_me")
    assert probe.breaker_state is BreakerState.OPEN and len(store.runs(schedule="probe_me")) == 3
    assert len([a for a in store.alerts() if a.kind == "breaker_opened"]) == 2

    work.fixed = True
    await e.run_until(clock.now() + 11 * MIN)
    await e.wait_idle()
    assert store.get("probe_me").breaker_state is BreakerState.CLOSED
    statuses = [r.status for r in store.runs(schedule="probe_me")]
    assert statuses[:3] == [RunStatus.DEAD_LETTERED] * 3 and set(statuses[3:]) == {RunStatus.SUCCEEDED}
    await e.stop()


@run_async
async def test_at_start_a_breaker_whose_cooldown_passed_while_down_half_opens_and_the_report_counts_it(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    one_failure = {"expression": "1h", "target": "flaky", "max_retries": 0, "breaker_threshold": 1}
    store.add(make_schedule("cooled", breaker_cooldown=600, **one_failure))
    store.add(make_schedule("rested", **one_failure))  # no cooldown: open until reset
    store.add(make_schedule("fine", expression="1h", target="flaky", breaker_threshold=5))
    work = Flaky()
    e = engine(store, work, clock)
    await e.start()
    await e.run_until(clock.now() + 61 * MIN)
    await e.wait_idle()
    await e.stop()
    assert store.get("cooled").breaker_state is BreakerState.OPEN
    assert store.get("rested").breaker_state is BreakerState.OPEN
    assert store.get("fine").breaker_state is BreakerState.CLOSED
    clock.advance(timedelta(minutes=30))  # down longer than the cooldown
    work.fixed = True
    again = engine(store, work, clock)
    report = await again.start()
    assert (report.schedules_loaded, report.breakers_half_opened) == (3, 1)
    assert store.get("cooled").breaker_state is not BreakerState.OPEN  # half-open: its trial run decides
    assert store.get("rested").breaker_state is BreakerState.OPEN
    await again.stop()


@run_async
async def test_skipped_runs_do_not_count_and_the_threshold_is_per_schedule(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    store.add(make_schedule("not_set_up", expression="1m", target="unconfigured", breaker_threshold=1))
    store.add(make_schedule("hair_trigger", expression="1m", target="flaky", max_retries=0, breaker_threshold=1))
    store.add(make_schedule("tolerant", expression="1m", target="flaky", max_retries=0, breaker_threshold=5))
    work = Flaky()
    e = engine(store, work, clock)
    await e.start()
    await e.run_until(clock.now() + 4 * MIN)
    await e.wait_idle()
    assert store.get("not_set_up").breaker_state is BreakerState.CLOSED
    assert store.get("not_set_up").consecutive_failures == 0
    assert Counter(r.status for r in store.runs(schedule="not_set_up")) == {RunStatus.SKIPPED: 4}
    assert (store.get("hair_trigger").breaker_state, len(store.runs(schedule="hair_trigger"))) == (BreakerState.OPEN, 1)
    assert (store.get("tolerant").breaker_state, store.get("tolerant").consecutive_failures) == (BreakerState.CLOSED, 4)
    await e.stop()


@run_async
async def test_dead_letters_keep_the_traceback_replay_goes_through_the_machine_and_purge_is_selective(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    store.add(
        make_schedule(
            "once",
            trigger_type="delay",
            expression="+1m",
            target="flaky",
            max_retries=1,
            retry_backoff=5,
            breaker_threshold=1,
        )
    )
    work = Flaky()
    e = engine(store, work, clock)
    await e.start()
    await e.run_until(clock.now() + 2 * MIN)
    await e.wait_idle()
    [letter] = store.dead_letters()
    assert (letter.attempts, letter.error_type) == (2, "ConnectionError")
    assert letter.error_traceback is not None and "ConnectionError: service down (call 2)" in letter.error_traceback
    assert store.get("once").breaker_state is BreakerState.OPEN

    with pytest.raises(GuardRejected, match="circuit breaker of once is open"):
        store.replay_dead_letter(letter.run_id, actor="alice")
    assert store.get_run(letter.run_id).status is RunStatus.DEAD_LETTERED
    work.fixed = True
    run = store.replay_dead_letter(letter.id, actor="alice", force=True)
    assert (run.status, run.attempt, run.origin) == (RunStatus.PENDING, 1, "replay")
    e.wake()
    await e.run_until(clock.now() + timedelta(seconds=1))
    await e.wait_idle()
    assert store.get_run(letter.run_id).status is RunStatus.SUCCEEDED
    [letter] = store.dead_letters()
    assert (letter.replayed_by, letter.replayed_at is not None) == ("alice", True)

    clock.advance(timedelta(days=10))
    store.add(make_schedule("fresh", trigger_type="delay", expression="+1m", target="flaky", max_retries=0))
    work.fixed = False
    store.transition_breaker("once", "reset")
    await e.run_until(clock.now() + 2 * MIN)
    await e.wait_idle()
    assert len(store.dead_letters()) == 2
    assert store.purge_dead_letters(timedelta(days=7)) == 1
    assert [d.schedule_name for d in store.dead_letters()] == ["fresh"]
    assert store.get_run(letter.run_id).status is RunStatus.SUCCEEDED  # the run's history stays
    await e.stop()


@run_async
async def test_alerts_are_delivered_through_the_real_client_to_a_local_bot_api(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule, bot_api: FakeBotApi
) -> None:
    for name in ("a", "b", "c"):
        store.add(
            make_schedule(
                name, trigger_type="delay", expression="+1m", target="flaky", max_retries=0, breaker_threshold=5
            )
        )
    notifier = TelegramNotifier(TOKEN, [CHAT], base_url=bot_api.base_url)
    e = engine(store, Flaky(), clock, notifier)
    await e.start()
    await e.run_until(clock.now() + MIN)
    await e.wait_idle()
    await e.deliver_alerts()
    texts = bot_api.texts(CHAT)
    assert len(texts) == 1, texts  # three dead letters in one tick: one message
    assert texts[0].startswith("Dead-lettered:") and all(f"{n} run" in texts[0] for n in "abc")
    assert {a.status for a in store.alerts()} == {"sent"}
    await e.stop()
    await notifier.close()


@run_async
async def test_undelivered_alerts_wait_out_an_outage_and_a_restart_and_go_out_once(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule, bot_api: FakeBotApi
) -> None:
    store.add(make_schedule("fragile", expression="1m", target="flaky", max_retries=0, breaker_threshold=2))
    bot_api.stop()  # Telegram unreachable
    notifier = TelegramNotifier(TOKEN, [CHAT], base_url=bot_api.base_url)
    first = engine(store, Flaky(), clock, notifier)
    await first.start()
    await first.run_until(clock.now() + 2 * MIN)
    await first.wait_idle()
    await first.deliver_alerts()
    await first.stop()
    waiting = store.alerts(status="pending")
    assert {a.kind for a in waiting} == {"dead_letter", "breaker_opened"}
    assert all(a.attempts >= 1 and a.last_error for a in waiting)
    assert bot_api.sent == []

    await notifier.close()

    bot_api.start()
    second_notifier = TelegramNotifier(TOKEN, [CHAT], base_url=bot_api.base_url)
    try:
        second = engine(store, Flaky(), clock, second_notifier)
        await second.start()
        await second.deliver_alerts()
        await second.deliver_alerts()
        await second.stop()
    finally:
        await second_notifier.close()
    texts = bot_api.texts(CHAT)
    assert len([t for t in texts if "Circuit breaker OPEN for fragile" in t]) == 1
    [letters] = [t for t in texts if t.startswith("Dead-lettered:")]
    assert letters.count("fragile run ") == 2  # both waiting dead letters, in one message
    assert len(texts) == 2
    assert {a.status for a in store.alerts()} == {"sent"}


@run_async
async def test_without_telegram_alerts_stay_in_the_outbox_as_undeliverable_with_the_reason(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    assert TelegramNotifier.from_env({}) is None
    assert TelegramNotifier.from_env({"TELEGRAM_BOT_TOKEN": TOKEN}) is None
    store.add(make_schedule("lonely", trigger_type="delay", expression="+1m", target="flaky", max_retries=0))
    e = engine(store, Flaky(), clock)
    await e.start()
    await e.run_until(clock.now() + MIN)
    await e.wait_idle()
    await e.deliver_alerts()
    [alert] = store.alerts()
    assert alert.status == "undeliverable" and "TELEGRAM_BOT_TOKEN" in (alert.last_error or "")
    await e.stop()


def test_long_alerts_are_split_under_telegrams_limit() -> None:
    text = "\n".join(f"line {i} " + "x" * 90 for i in range(200))
    pieces = chunks(text)
    assert all(len(p) <= 4096 for p in pieces) and len(pieces) > 1
    assert "\n".join(pieces) == text
    assert chunks("y" * 9000) == ["y" * 4096, "y" * 4096, "y" * 808]


@run_async
async def test_notifier_configuration_from_the_environment() -> None:
    env = {"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_ALLOWED_CHAT_IDS": "42, -1001"}
    notifier = TelegramNotifier.from_env(env)
    assert notifier is not None and notifier.chat_ids == [42, -1001]
    await notifier.close()
    with pytest.raises(ValueError, match="TELEGRAM_ALERT_CHAT_IDS='forty': chat ids as whole numbers"):
        TelegramNotifier.from_env({**env, "TELEGRAM_ALERT_CHAT_IDS": "forty"})


def test_cli_reset_dlq_and_alerts(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule, db_path: Path
) -> None:
    s = store.add(make_schedule("broken", max_retries=0, breaker_threshold=1))
    run = store.create_run(s, clock.now())
    assert run is not None
    failed = store.transition(
        store.transition(run, "start"), "fail", error_type="OSError", error="OSError: gone", error_traceback="TB"
    )
    store.transition(failed, "dead_letter")
    store.transition_breaker(store.record_outcome(s.id, failed=True) or s, "trip")
    store.add_alert("breaker_opened", "broken opened")

    def cli(*args: str) -> tuple[int, str]:
        out = StringIO()
        return main(["--db", str(db_path), *args], out=out, clock=clock), out.getvalue()

    code, text = cli("dlq", "list")
    assert code == 0 and run.run_id in text and "OSError: gone" in text
    code, raw = cli("dlq", "show", run.run_id, "--json")
    assert json.loads(raw)["error_traceback"] == "TB"
    assert cli("dlq", "replay", run.run_id)[0] == 2  # breaker open: refused
    assert store.get_run(run.run_id).status is RunStatus.DEAD_LETTERED
    code, text = cli("reset", "broken")
    assert (code, store.get("broken").breaker_state) == (0, BreakerState.CLOSED)
    code, raw = cli("dlq", "replay", run.run_id, "--json")
    assert (code, json.loads(raw)["status"]) == (0, "pending")
    assert store.dead_letters()[0].replayed_by == operator_caller().id  # the user running it, not a name given
    assert cli("dlq", "purge")[0] == 2
    code, raw = cli("dlq", "purge", "--older-than-days", "1", "--json")
    assert json.loads(raw) == {"purged": 0}
    code, raw = cli("alerts", "--json")
    assert [a["kind"] for a in json.loads(raw)] == ["breaker_opened"]
    assert cli("reset", "nope")[0] == 2


async def _until_sent(api: FakeBotApi, count: int) -> list[str]:
    """Wait (real I/O with the local Bot API server, at most 5 s) until ``count`` messages arrived."""
    for _ in range(100):
        if len(api.texts(CHAT)) >= count:
            break
        await asyncio.sleep(0.05)
    return api.texts(CHAT)


@run_async
async def test_an_alert_queued_by_a_task_goes_out_on_the_next_tick(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule, bot_api: FakeBotApi
) -> None:
    store.add(make_schedule("reporter", expression="1m", target="report"))
    tasks = TaskRegistry()

    def report(ctx: RunContext) -> None:  # a sync task, run in a thread like the report jobs
        store.add_alert("report", f"report of {ctx.intended_run_at:%H:%M}")

    tasks.add("report", report)
    notifier = TelegramNotifier(TOKEN, [CHAT], base_url=bot_api.base_url)
    e = ScheduleEngine(store, tasks, clock=clock, tick_seconds=3600, worker_id="w1", notifier=notifier)
    await e.start()
    began = clock.now()  # the start made an outbox pass: the next sweep is ALERT_SWEEP away
    await e.run_until(began + MIN)
    await e.wait_idle()
    assert await _until_sent(bot_api, 1) == [f"report of {began + MIN:%H:%M}"]
    assert clock.now() - began < ALERT_SWEEP
    await e.stop()
    await notifier.close()


@run_async
async def test_the_outbox_is_swept_for_alerts_other_processes_left_not_polled_every_tick(
    store: ScheduleStore, clock: FakeClock, make_schedule: MakeSchedule, bot_api: FakeBotApi, db_path: Path, mocker: Any
) -> None:
    store.add(make_schedule("ticker", expression="1m", target="flaky"))
    work = Flaky()
    work.fixed = True
    notifier = TelegramNotifier(TOKEN, [CHAT], base_url=bot_api.base_url)
    e = engine(store, work, clock, notifier)
    passes = mocker.spy(store, "claim_alerts")
    await e.start()
    elsewhere = ScheduleStore(f"sqlite:///{db_path}", clock=clock)  # the CLI, or a worker that died
    elsewhere.add_alert("note", "left by another process")
    elsewhere.close()
    began = clock.now()
    await e.run_until(began + ALERT_SWEEP + MIN)
    assert await _until_sent(bot_api, 1) == ["left by another process"]
    await e.run_until(began + timedelta(hours=1))
    await e.wait_idle()
    assert work.calls >= 60  # a tick a minute ...
    assert passes.call_count <= 1 + timedelta(hours=1) / ALERT_SWEEP + 1  # ... but a pass only every sweep
    await e.stop()
    await notifier.close()
