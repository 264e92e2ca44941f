"""The real worker with its Telegram bot on a local Bot API server: /schedules answered, /disable stops the runs."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.scheduler import ScheduleStore
from tests.fixtures.telegram_api import TOKEN, FakeBotApi
from tests.system.worker_process import WorkerProcess, wait_for

pytestmark = pytest.mark.system

CHAT = 4242
STRANGER = 9999
SCHEDULE = "ledger_every_second"
#: How long the worker may take to start and answer, in seconds.
START_TIMEOUT = 30.0
REPLY_TIMEOUT = 10.0
#: How long a disabled every-second schedule is watched for new runs, in seconds.
QUIET_SECONDS = 2.0


@pytest.fixture
def bot_api() -> Iterator[FakeBotApi]:
    api = FakeBotApi().start()
    yield api
    api.stop()


def bot_env(api: FakeBotApi, ledger: Path) -> dict[str, str]:
    return {
        "SAMPLE_LEDGER": str(ledger),
        "SAMPLE_SCHEDULES": SCHEDULE,
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "TELEGRAM_ALLOWED_CHAT_IDS": str(CHAT),
        "TELEGRAM_API_BASE_URL": api.base_url,
        "ACTP_OPERATOR_TIMEZONE": "Europe/Berlin",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


def reply(api: FakeBotApi, before: int, words: str) -> str:
    """The first message to CHAT after the first ``before`` sent ones that contains ``words``."""
    found: list[str] = []

    def arrived() -> bool:
        found[:] = [m.text for m in api.sent[before:] if m.chat_id == CHAT and words in m.text]
        return bool(found)

    wait_for(arrived, REPLY_TIMEOUT, f"a reply containing {words!r}; sent: {api.texts()}")
    return found[0]


def intended_times(db: Path) -> list[datetime]:
    with ScheduleStore(db) as store:
        return [r.intended_run_at for r in store.runs(schedule=SCHEDULE)]


def test_the_worker_answers_schedules_and_disable_stops_the_schedule(tmp_path: Path, bot_api: FakeBotApi) -> None:
    db = tmp_path / "worker.db"
    worker = WorkerProcess(db, tmp_path / "worker.log", bot_env(bot_api, tmp_path / "ledger.txt")).start()
    try:
        wait_for(lambda: db.exists() and len(intended_times(db)) >= 2, START_TIMEOUT, "two runs of the schedule")
        try:  # the bot starts right after the engine
            wait_for(lambda: "getUpdates" in bot_api.calls, REPLY_TIMEOUT, "the bot polling")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; worker log:\n{worker.log()}") from None

        before = len(bot_api.sent)
        bot_api.push_message(STRANGER, f"/disable {SCHEDULE}")
        bot_api.push_message(CHAT, "/schedules")
        listing = reply(bot_api, before, "enabled schedule")
        assert listing.startswith("1 enabled schedule · times in Europe/Berlin")
        assert f"• {SCHEDULE}\n  every 1s\n  next " in listing
        assert bot_api.texts(STRANGER) == []

        before = len(bot_api.sent)
        bot_api.push_message(CHAT, f"/disable {SCHEDULE} system test")
        answer = reply(bot_api, before, "disabled")
        disabled_at = datetime.now(UTC)
        assert answer == f"{SCHEDULE} disabled: system test (by telegram:{CHAT}). /enable {SCHEDULE} resumes it."
        with ScheduleStore(db) as store:
            schedule = store.get(SCHEDULE)
        assert (schedule.enabled, schedule.disabled_reason) == (False, f"system test (by telegram:{CHAT})")

        # An every-second schedule would make two or three runs in this time; disabled, it makes none.
        time.sleep(QUIET_SECONDS)
        late = [t for t in intended_times(db) if t > disabled_at + timedelta(seconds=1)]
        assert late == [], f"runs after the disable: {late}"

        before = len(bot_api.sent)
        bot_api.push_message(CHAT, "/status")
        assert reply(bot_api, before, "Worker system-test").startswith("Worker system-test · ")

        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0, worker.log()
    finally:
        worker.kill()
    log = worker.log()
    assert "Telegram bot @actp_test_bot answering 1 chat(s), times in Europe/Berlin" in log
    assert "ignored '/disable' from chat 9999 (not in TELEGRAM_ALLOWED_CHAT_IDS or TELEGRAM_APPROVER_CHAT_IDS)" in log
    assert "Telegram bot stopped" in log
    assert TOKEN not in log


def test_without_a_token_the_worker_runs_and_says_once_that_the_bot_is_off(tmp_path: Path) -> None:
    db = tmp_path / "worker.db"
    env = {"SAMPLE_LEDGER": str(tmp_path / "ledger.txt"), "SAMPLE_SCHEDULES": SCHEDULE, "TELEGRAM_BOT_TOKEN": ""}
    worker = WorkerProcess(db, tmp_path / "worker.log", env).start()
    try:
        wait_for(lambda: db.exists() and len(intended_times(db)) >= 2, START_TIMEOUT, "two runs without a bot")
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0, worker.log()
    finally:
        worker.kill()
    assert worker.log().count("Telegram bot off: TELEGRAM_BOT_TOKEN is not set (the worker runs without it)") == 1
