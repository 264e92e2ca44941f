"""The operations commands against a real SQLite file: status, timeline, config and install-service."""

from __future__ import annotations

import json
import os
import plistlib
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest

from agent.scheduler import FakeClock, RunStatus, ScheduleDefinition, ScheduleStore
from agent.scheduler import service_files as sf
from agent.scheduler.cli import main
from agent.scheduler.config import BY_NAME, env_example
from agent.scheduler.engine import HEARTBEAT_SECONDS, ScheduleEngine
from agent.scheduler.errors import StoreError
from agent.scheduler.settings import read_environment
from agent.scheduler.tasks import TaskRegistry
from tests.conftest import T0, run_async

ROOT = Path(__file__).resolve().parents[2]
MakeSchedule = Callable[..., ScheduleDefinition]


def cli(db: Path, clock: FakeClock, *args: str) -> tuple[int, str]:
    out = StringIO()
    try:
        code = main(["--db", str(db), *args], out=out, clock=clock)
    except SystemExit as exc:  # an option argparse refused: one line on stderr, status 2
        assert isinstance(exc.code, int)
        code = exc.code
    return code, out.getvalue()


def finish(store: ScheduleStore, schedule: ScheduleDefinition, at: datetime, status: RunStatus, key: str = "") -> None:
    run = store.create_run(schedule, at, occurrence_key=key or None)
    assert run is not None
    if status is RunStatus.SKIPPED:
        store.transition(run, "skip", reason="missed: test")
        return
    run = store.transition(run, "start", owner="w")
    if status is RunStatus.SUCCEEDED:
        store.transition(run, "succeed", outcome="ok")
    elif status is RunStatus.FAILED:
        store.transition(run, "fail", error="ValueError: boom", error_type="ValueError", reason="task raised")


# ---------------------------------------------------------------------- status


def test_status_of_a_database_no_worker_has_used(store: ScheduleStore, db_path: Path, clock: FakeClock) -> None:
    code, text = cli(db_path, clock, "status")
    assert code == 0
    assert text.startswith("engine: down (0 of 0 worker(s) up)")
    assert "no worker has ever started on this database" in text and "next runs: none" in text
    data = json.loads(cli(db_path, clock, "status", "--json")[1])
    assert (data["engine"], data["workers"], data["last_reconciliation"]) == ("down", [], None)
    assert data["heartbeat_limit_seconds"] == 3 * HEARTBEAT_SECONDS


@run_async
async def test_status_follows_the_workers_heartbeat(
    store: ScheduleStore, db_path: Path, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    store.add(make_schedule("poll", expression="15m"))
    tasks = TaskRegistry()
    tasks.add("sweep", lambda ctx: "swept")
    engine = ScheduleEngine(store, tasks, clock=clock, worker_id="w1")
    await engine.start()
    clock.advance(timedelta(seconds=20))
    data = json.loads(cli(db_path, clock, "status", "--json")[1])
    [worker] = data["workers"]
    assert data["engine"] == "up" and worker["up"] and worker["worker_id"] == "w1"
    assert (worker["uptime_seconds"], worker["uptime"], worker["pid"]) == (20.0, "20s", os.getpid())
    assert data["last_reconciliation"]["worker_id"] == "w1"
    assert data["last_reconciliation"]["summary"].startswith("reconciliation (first_start): 1 schedules")
    text = cli(db_path, clock, "status")[1]
    assert text.startswith("engine: up (1 of 1 worker(s) up)")
    assert "  w1: up, heartbeat 20s ago, up 20s; pid" in text

    clock.advance(timedelta(seconds=11))  # 31 s without a heartbeat: more than 3 intervals
    data = json.loads(cli(db_path, clock, "status", "--json")[1])
    assert data["engine"] == "down" and "crashed, killed or asleep" in data["workers"][0]["state"]
    await engine.tick()  # the heartbeat is written again
    assert json.loads(cli(db_path, clock, "status", "--json")[1])["engine"] == "up"

    await engine.stop()
    clock.advance(timedelta(minutes=5))
    data = json.loads(cli(db_path, clock, "status", "--json")[1])
    assert data["engine"] == "down" and data["workers"][0]["state"] == "stopped cleanly 5m ago"
    assert data["workers"][0]["uptime"] is None


def test_status_lists_runs_in_flight_breakers_dead_letters_alerts_and_the_next_five_runs(
    store: ScheduleStore, db_path: Path, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    for i in range(7):
        store.add(make_schedule(f"s{i}", expression=f"{10 + i}m"))
    broken = store.add(make_schedule("broken", expression="1h", max_retries=0, breaker_threshold=1))
    for owner in ("w1", "w1", "w2"):
        run = store.create_run(store.get("s0"), clock.now(), occurrence_key=f"manual:{owner}:{clock.now()}")
        assert run is not None
        store.transition(run, "start", owner=owner, lease_expires_at=clock.now() + timedelta(seconds=30))
        clock.advance(timedelta(seconds=1))
    run = store.create_run(broken, clock.now())
    assert run is not None
    failed = store.transition(store.transition(run, "start"), "fail", error="OSError: gone", error_type="OSError")
    store.transition(failed, "dead_letter")
    store.transition_breaker(store.record_outcome(broken.id, failed=True) or broken, "trip")
    store.add_alert("breaker_opened", "broken opened")

    data = json.loads(cli(db_path, clock, "status", "--json")[1])
    assert data["in_flight"]["total"] == 3 and data["in_flight"]["by_owner"] == {"w1": 2, "w2": 1}
    assert [b["name"] for b in data["open_breakers"]] == ["broken"]
    assert data["dead_letters"] == 1
    assert data["alerts"] == {"pending": 1, "sending": 0, "undeliverable": 0}
    assert [n["schedule"] for n in data["next_runs"]] == ["s0", "s1", "s2", "s3", "s4"]
    assert data["next_runs"][0]["in"] == "in 9m 57s"
    text = cli(db_path, clock, "status")[1]
    assert "in flight: 3 run(s) (w1 2, w2 1)" in text
    assert "open breakers: broken (1 failures) (reset NAME closes one)" in text
    assert "dead letters: 1 (dlq list)" in text and "unsent alerts: 1 pending, 0 undeliverable" in text
    assert "  2027-03-13 12:10:00 UTC  s0  (in 9m 57s)" in text


# ---------------------------------------------------------------------- timeline


@pytest.fixture
def history(store: ScheduleStore, make_schedule: MakeSchedule, clock: FakeClock) -> ScheduleStore:
    poll = store.add(make_schedule("poll", expression="15m"))
    store.add(make_schedule("report", trigger_type="calendar", expression="0 6 * * *", timezone="Europe/Berlin"))
    store.add(make_schedule("hook", trigger_type="event", expression="job.stalled"))
    store.add(make_schedule("off", expression="1m"))
    store.disable("off", reason="vendor outage")
    for minutes, status in ((-115, RunStatus.SUCCEEDED), (-100, RunStatus.FAILED), (-55, RunStatus.SKIPPED)):
        finish(store, poll, T0 + timedelta(minutes=minutes), status)
    finish(store, poll, T0 - timedelta(minutes=50), RunStatus.SUCCEEDED)
    finish(store, poll, T0 - timedelta(hours=30), RunStatus.FAILED)  # outside the window
    return store


def test_timeline_of_one_schedule(history: ScheduleStore, db_path: Path, clock: FakeClock) -> None:
    code, raw = cli(db_path, clock, "timeline", "poll", "--json")
    data = json.loads(raw)
    assert code == 0 and data["schedules"] == ["poll"]
    assert data["upcoming_total"] == 96 and len(data["upcoming"]) == 30
    assert [u["at"] for u in data["upcoming"][:2]] == ["2027-03-13T12:15:00+00:00", "2027-03-13T12:30:00+00:00"]
    assert data["past"]["counts"] == {"poll": {"failed": 1, "skipped": 1, "succeeded": 2}}
    assert [(h["hour"], h["runs"]) for h in data["past"]["hours"]["poll"]] == [
        ("2027-03-13T10:00:00+00:00", ".x"),
        ("2027-03-13T11:00:00+00:00", "s."),
    ]
    assert data["legend"]["."] == "succeeded" and data["legend"]["x"] == "failed" and data["legend"]["s"] == "skipped"
    text = cli(db_path, clock, "timeline", "poll")[1]
    assert "upcoming (96 in the next 24h, first 30 shown):" in text
    assert "  2027-03-13 12:15:00  poll  (in 15m)" in text
    assert "  poll: failed 1, skipped 1, succeeded 2" in text
    assert "    2027-03-13  10:00 .x  11:00 s." in text
    assert "legend: . succeeded  x failed  s skipped" in text
    assert text.isascii()


def test_timeline_of_all_schedules_merges_their_fire_times(
    history: ScheduleStore, db_path: Path, clock: FakeClock
) -> None:
    data = json.loads(cli(db_path, clock, "timeline", "--all", "--hours", "18", "--json")[1])
    assert data["upcoming_by_schedule"] == {"poll": 72, "report": 1}
    times = [u["at"] for u in data["upcoming"]]
    assert times == sorted(times) and len(times) == 31  # the 30 soonest, and the report's first beyond them
    assert data["upcoming"][-1] == {
        "schedule": "report",
        "at": "2027-03-14T05:00:00+00:00",
        "local": "2027-03-14T05:00:00+00:00",
        "in": "in 17h",
        "overdue": False,
    }
    assert "disabled" in data["notes"]["off"] and "event job.stalled" in data["notes"]["hook"]
    short = json.loads(cli(db_path, clock, "timeline", "--all", "--hours", "1", "--json")[1])
    assert short["past"]["counts"] == {"poll": {"skipped": 1, "succeeded": 1}}
    text = cli(db_path, clock, "timeline", "--all", "--hours", "18")[1]
    assert text.startswith("timeline of all schedules: 18h either side")
    assert "  per schedule: poll 72, report 1" in text
    assert "  2027-03-14 05:00:00  report  (in 17h)" in text


def test_timeline_shows_times_in_a_zone_and_counts_a_busy_hour(
    store: ScheduleStore, db_path: Path, clock: FakeClock, make_schedule: MakeSchedule
) -> None:
    busy = store.add(make_schedule("busy", expression="1m"))
    for minute in range(14):
        status = RunStatus.FAILED if minute == 3 else RunStatus.SUCCEEDED
        finish(store, busy, T0 - timedelta(hours=3) + timedelta(minutes=minute), status, key=f"m{minute}")
    data = json.loads(cli(db_path, clock, "timeline", "busy", "--timezone", "Europe/Berlin", "--json")[1])
    [hour] = data["past"]["hours"]["busy"]
    assert (hour["hour"], hour["runs"], hour["count"]) == ("2027-03-13T10:00:00+01:00", "[.13 x1]", 14)
    assert data["upcoming"][0]["local"] == "2027-03-13T13:01:00+01:00"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["timeline"], "a schedule NAME or --all"),
        (["timeline", "poll", "--all"], "a schedule NAME or --all"),
        (["timeline", "nope"], "no schedule named 'nope'"),
        (["timeline", "poll", "--timezone", "Mars/Base"], "invalid timezone='Mars/Base'"),
    ],
)
def test_timeline_bad_input_exits_2(
    history: ScheduleStore,
    db_path: Path,
    clock: FakeClock,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    assert cli(db_path, clock, *args)[0] == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize("hours", ["0", "745", "a day"])
def test_timeline_hours_out_of_range_exit_2(db_path: Path, clock: FakeClock, hours: str) -> None:
    assert cli(db_path, clock, "timeline", "--all", "--hours", hours)[0] == 2


# ---------------------------------------------------------------------- config


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name in BY_NAME or name.startswith(("ACTP_", "TELEGRAM_")):
            monkeypatch.delenv(name)
    return monkeypatch


def test_config_shows_the_effective_values_with_secrets_masked(
    clean_env: pytest.MonkeyPatch, db_path: Path, clock: FakeClock
) -> None:
    clean_env.setenv("TELEGRAM_BOT_TOKEN", "123456789:AAH-very-secret")
    clean_env.setenv("TELEGRAM_ALERT_CHAT_IDS", "42")
    clean_env.setenv("SUPABASE_DB_URL", "postgresql://postgres:hunter2pw@db.x.supabase.co:5432/postgres")
    clean_env.setenv("ACTP_MPLITE_URL", "https://mplite.example.com")
    clean_env.setenv("ACTP_MPLITE_KEY", "sk-live-0123456789")
    clean_env.setenv("ACTP_WORKER_ID", "laptop-1")
    code, text = cli(db_path, clock, "config")
    assert code == 0
    for secret in ("AAH-very-secret", "hunter2pw", "0123456789"):
        assert secret not in text
    rows = {
        line.split()[0]: line.split()[1:] for line in text.splitlines() if line.startswith(("ACTP_", "TELEG", "SUP"))
    }
    assert rows["TELEGRAM_BOT_TOKEN"] == ["123***", "env", "(secret)"]
    assert rows["SUPABASE_DB_URL"][0] == "postgresql://postgres:***@db.x.supabase.co:5432/postgres"
    assert rows["ACTP_MPLITE_KEY"][:2] == ["sk-***", "env"] and rows["ACTP_WORKER_ID"][:2] == ["laptop-1", "env"]
    assert rows["ACTP_LOG_FORMAT"] == ["human", "default"]
    assert "ACTP_GENLITE_URL" not in rows and "services configured: mplite" in text
    assert text.startswith(f"database: {db_path} (--db)")

    code, raw = cli(db_path, clock, "config", "--json")
    data = json.loads(raw)
    assert "AAH-very-secret" not in raw and "hunter2pw" not in raw
    values = {r["name"]: r for r in data["variables"]}
    assert values["TELEGRAM_BOT_TOKEN"]["value"] == "123***" and values["TELEGRAM_BOT_TOKEN"]["secret"]
    assert values["ACTP_TIMEZONE"]["source"] == "computed" and values["ACTP_GENLITE_URL"]["source"] == "unset"
    assert (data["services"], data["problems"], data["warnings"]) == (["mplite"], [], [])
    assert "ACTP_GENLITE_URL" in cli(db_path, clock, "config", "--all")[1]


def test_config_with_bad_variables_lists_them_all_and_exits_2(
    clean_env: pytest.MonkeyPatch, db_path: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("ACTP_LOG_FORMAT", "xml")
    clean_env.setenv("TELEGRAM_ALERT_CHAT_IDS", "42,@ops")
    clean_env.setenv("TELEGRAM_BOT_TOKEN", "no-colon-secret-token")
    code, raw = cli(db_path, clock, "config", "--json")
    assert code == 2
    data = json.loads(raw)
    assert [p["variable"] for p in data["problems"]] == [
        "ACTP_LOG_FORMAT",
        "TELEGRAM_BOT_TOKEN",
        "TELEGRAM_ALERT_CHAT_IDS",
    ]
    assert "no-colon-secret-token" not in raw
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert json.loads(err)["error"].startswith("3 variable(s) invalid: ACTP_LOG_FORMAT: one of human, json")


def test_config_needs_no_database_and_prints_the_env_example(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    unreachable = blocker / "sub" / "scheduler.db"  # its directory cannot be created
    clock = FakeClock(T0)
    with pytest.raises(StoreError, match="cannot create the directory"):
        ScheduleStore(unreachable)
    assert cli(unreachable, clock, "config")[0] == 0
    code, text = cli(unreachable, clock, "config", "--env-example")
    assert (code, text) == (0, env_example()) and text == (ROOT / ".env.example").read_text()


# ---------------------------------------------------------------------- install-service


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("HOME", str(path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("ACTP_LOG_DIR", raising=False)
    return path


def test_install_service_print_writes_nothing(
    home: Path, db_path: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = cli(db_path, clock, "install-service", "--print", "--system", "linux")
    expected = sf.render("linux", sf.placement(db=str(db_path), environ=read_environment()))
    assert code == 0 and text == expected  # the global --db, by default
    assert "systemctl --user daemon-reload && systemctl --user enable --now actp-worker" in capsys.readouterr().err
    code, raw = cli(db_path, clock, "install-service", "--print", "--system", "macos", "--json")
    data = json.loads(raw)
    agent = plistlib.loads(data["content"].encode())
    assert agent["StandardOutPath"] == str(home / ".actp/logs/worker.log")
    assert data["path"] == str(home / "Library/LaunchAgents/com.actp.worker.plist")
    assert data["load_command"] == f"launchctl load -w {home}/Library/LaunchAgents/com.actp.worker.plist"
    assert list(home.iterdir()) == []


def test_install_service_writes_into_home_and_says_how_to_load_it(home: Path, db_path: Path, clock: FakeClock) -> None:
    unit = home / ".config/systemd/user/actp-worker.service"
    code, text = cli(db_path, clock, "install-service", "--system", "linux")
    expected = sf.render("linux", sf.placement(db=str(db_path), environ=read_environment()))
    assert code == 0 and unit.read_text() == expected
    assert text.splitlines()[:2] == [
        f"created {unit} (systemd)",
        "load it with: systemctl --user daemon-reload && systemctl --user enable --now actp-worker",
    ]
    assert cli(db_path, clock, "install-service", "--system", "linux")[1].startswith(f"unchanged {unit}")
    code, raw = cli(db_path, clock, "install-service", "--system", "linux", "--db", "/srv/actp.db", "--json")
    data = json.loads(raw)
    assert data["action"] == "replaced" and "systemctl --user restart actp-worker" in data["reload_command"]
    assert '"--db" "/srv/actp.db"' in unit.read_text()

    plist = home / "Library/LaunchAgents/com.actp.worker.plist"
    code, text = cli(db_path, clock, "install-service", "--system", "macos")
    assert code == 0 and plistlib.loads(plist.read_bytes())["ExitTimeOut"] == 90
    assert (home / ".actp/logs").is_dir()  # launchd does not create the log directory
    assert f"load it with: launchctl load -w {plist}" in text


def test_install_service_runs_as_a_program_without_opening_the_database(home: Path) -> None:
    env: dict[str, Any] = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(home)}
    env.pop("ACTP_SCHEDULER_DB", None)
    done = subprocess.run(
        [sys.executable, "-m", "agent.scheduler", "install-service", "--print", "--system", "macos"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    agent = plistlib.loads(done.stdout.encode())
    assert agent["Label"] == "com.actp.worker" and "--db" not in agent["ProgramArguments"]
    assert "launchctl load -w" in done.stderr
    assert not (home / ".actp").exists()  # the default database was not created
