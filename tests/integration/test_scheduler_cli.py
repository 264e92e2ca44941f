"""The command line against a real SQLite file: text and JSON output, errors with exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.scheduler import FakeClock, RunStatus, ScheduleDefinition, ScheduleStore
from agent.scheduler.cli import humanize, main
from agent.scheduler.machines.diagrams import mermaid

ROOT = Path(__file__).resolve().parents[2]
MakeSchedule = Callable[..., ScheduleDefinition]


def cli(db: Path, clock: FakeClock, *args: str) -> tuple[int, str]:
    from io import StringIO

    out = StringIO()
    try:
        code = main(["--db", str(db), *args], out=out, clock=clock)
    except SystemExit as exc:  # an option argparse refused: one line on stderr, status 2
        assert isinstance(exc.code, int)
        code = exc.code
    return code, out.getvalue()


@pytest.fixture
def seeded(store: ScheduleStore, make_schedule: MakeSchedule, clock: FakeClock) -> ScheduleStore:
    store.add(make_schedule("report", trigger_type="calendar", expression="0 6 * * *", timezone="Europe/Berlin"))
    store.add(make_schedule("poll", expression="15m"))
    run = store.create_run(store.get("poll"), clock.now() - timedelta(minutes=15))
    assert run is not None
    store.transition(store.transition(run, "start"), "succeed", outcome="ok")
    return store


def test_list_shows_next_run_in_the_schedules_zone_relative_last_outcome_and_breaker(
    seeded: ScheduleStore, db_path: Path, clock: FakeClock
) -> None:
    code, text = cli(db_path, clock, "list")
    assert code == 0
    lines = text.splitlines()
    assert lines[0].split() == ["NAME", "TRIGGER", "NEXT", "RUN", "LAST", "BREAKER"]
    poll = next(line for line in lines if line.startswith("poll"))
    report = next(line for line in lines if line.startswith("report"))
    # the clock is 2027-03-13 12:00 UTC: 06:00 Berlin tomorrow is 05:00 UTC, 17 hours ahead
    assert "2027-03-14 06:00:00 Europe/Berlin (in 17h)" in report
    assert "succeeded" in poll and "closed" in poll and "interval 15m" in poll
    code, raw = cli(db_path, clock, "list", "--json")
    data = {item["name"]: item for item in json.loads(raw)}
    assert data["report"]["next_run_at"] == "2027-03-14T05:00:00+00:00"
    assert data["poll"]["last_status"] == "succeeded"


def test_disable_enable_and_list_all(seeded: ScheduleStore, db_path: Path, clock: FakeClock) -> None:
    assert cli(db_path, clock, "disable", "poll", "--reason", "vendor outage")[0] == 0
    assert seeded.get("poll").disabled_reason == "vendor outage"
    assert "poll" not in cli(db_path, clock, "list")[1]
    assert "disabled" in cli(db_path, clock, "list", "--all")[1]
    code, raw = cli(db_path, clock, "enable", "poll", "--json")
    assert (code, json.loads(raw)) == (0, {"name": "poll", "enabled": True})


def test_runs_newest_first_with_filters(seeded: ScheduleStore, db_path: Path, clock: FakeClock) -> None:
    code, raw = cli(db_path, clock, "runs", "--schedule", "poll", "--status", "succeeded", "--json")
    [run] = json.loads(raw)
    assert (code, run["status"], run["outcome"]) == (0, "succeeded", "ok")
    assert "no runs" in cli(db_path, clock, "runs", "--status", "failed")[1]


def test_run_now_queues_a_manual_pending_run(seeded: ScheduleStore, db_path: Path, clock: FakeClock) -> None:
    code, raw = cli(db_path, clock, "run-now", "report", "--json")
    run = json.loads(raw)
    assert (code, run["status"], run["origin"]) == (0, "pending", "manual")
    assert seeded.get_run(run["run_id"]).status is RunStatus.PENDING


def test_simulate_an_expression_or_a_schedule(seeded: ScheduleStore, db_path: Path, clock: FakeClock) -> None:
    code, raw = cli(db_path, clock, "simulate", "30 2 * * *", "--timezone", "Europe/Berlin", "--count", "3", "--json")
    assert code == 0
    assert [d["local"] for d in json.loads(raw)] == [
        "2027-03-14T02:30:00+01:00",
        "2027-03-15T02:30:00+01:00",
        "2027-03-16T02:30:00+01:00",
    ]
    code, raw = cli(db_path, clock, "simulate", "90s", "--count", "2", "--json")
    assert [d["in"] for d in json.loads(raw)] == ["in 1m 30s", "in 3m"]
    code, text = cli(db_path, clock, "simulate", "report", "--count", "1")
    assert text.startswith("2027-03-14T06:00:00+01:00")


def test_simulate_a_schedule_counts_from_its_anchor_as_list_does(
    seeded: ScheduleStore, db_path: Path, clock: FakeClock
) -> None:
    clock.advance(timedelta(minutes=5))  # poll (every 15m) was added at T0: it fires at T0 + 15m, in 10m
    listed = {item["name"]: item for item in json.loads(cli(db_path, clock, "list", "--json")[1])}
    code, raw = cli(db_path, clock, "simulate", "poll", "--count", "2", "--json")
    assert code == 0
    assert [d["in"] for d in json.loads(raw)] == ["in 10m", "in 25m"]
    assert json.loads(raw)[0]["utc"] == listed["poll"]["next_run_at"]


def test_diagram_prints_the_real_machines(db_path: Path, clock: FakeClock, store: ScheduleStore) -> None:
    code, raw = cli(db_path, clock, "diagram", "--json")
    assert code == 0 and json.loads(raw) == {name: mermaid(name) for name in ("run", "breaker", "proposal", "outbox")}
    assert "failed --> pending: retry [may_retry]" in cli(db_path, clock, "diagram", "--machine", "run")[1]
    assert "sending --> sending: claim [may_reclaim]" in cli(db_path, clock, "diagram", "--machine", "outbox")[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["disable", "nope"], "no schedule named 'nope'"),
        (["run-now", "nope"], "no schedule named 'nope'"),
        (["runs", "--schedule", "nope"], "no schedule named 'nope'"),
        (["simulate", "61 * * * *"], "invalid expression='61 * * * *'"),
        (["simulate", "0 6 * * *", "--timezone", "Mars/Base"], "invalid timezone='Mars/Base'"),
        (["reconcile"], "only runs as --dry-run"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_changes_nothing(
    seeded: ScheduleStore,
    db_path: Path,
    clock: FakeClock,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    before = (seeded.list(), seeded.runs())
    assert cli(db_path, clock, *args)[0] == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert (seeded.list(), seeded.runs()) == before


@pytest.mark.parametrize("args", [["runs", "--status", "exploded"], ["runs", "--limit", "0"], ["frobnicate"]])
def test_bad_arguments_exit_2(db_path: Path, clock: FakeClock, args: list[str]) -> None:
    assert cli(db_path, clock, *args)[0] == 2


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "in 0s"), (59, "in 59s"), (90, "in 1m 30s"), (3 * 86400 + 7200 + 5, "in 3d 2h"), (-3700, "1h 1m ago")],
)
def test_humanize(seconds: int, text: str) -> None:
    assert humanize(timedelta(seconds=seconds)) == text


def test_the_module_runs_as_a_program(seeded: ScheduleStore, db_path: Path) -> None:
    env: dict[str, Any] = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "agent.scheduler", "--db", str(db_path), "list", "--all", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(item["name"] for item in json.loads(done.stdout)) == ["poll", "report"]
