"""The real worker process consumes events that ``python -m agent.scheduler emit`` writes, while it runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.scheduler import RunStatus, ScheduleDefinition, ScheduleStore
from agent.scheduler.enums import EventStatus
from tests.system.worker_process import ROOT, WorkerProcess, wait_for

pytestmark = pytest.mark.system

#: The longest the worker may take to start, or to run what was emitted (a loaded machine: generous).
WAIT_SECONDS = 60


def scheduler(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "agent.scheduler", "--db", str(db), *args]
    return subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=WAIT_SECONDS)


def test_the_running_worker_runs_each_emitted_event_once_and_status_shows_the_inbox(tmp_path: Path) -> None:
    db, ledger = tmp_path / "events.db", tmp_path / "ledger.txt"
    with ScheduleStore(db) as store:
        store.add(
            ScheduleDefinition(name="on_done", trigger_type="event", expression="job.done", target="append_ledger")
        )
    worker = WorkerProcess(db, tmp_path / "worker.log", {"SAMPLE_LEDGER": str(ledger), "SAMPLE_SCHEDULES": ""})
    worker.start()
    try:
        with ScheduleStore(db) as store:
            wait_for(lambda: store.get_state("worker:system-test") is not None, WAIT_SECONDS, "the worker's heartbeat")
            for n in (1, 2):
                done = scheduler(db, "emit", "job.done", "--payload", json.dumps({"n": n}), "--json")
                assert done.returncode == 0, done.stderr
            assert scheduler(db, "emit", "nobody.listens").returncode == 0

            def ran() -> bool:
                runs = store.runs(schedule="on_done")
                pending = store.count_events(EventStatus.PENDING)
                return pending == 0 and len(runs) == 2 and all(r.status is RunStatus.SUCCEEDED for r in runs)

            wait_for(ran, WAIT_SECONDS, "both events' runs to succeed")
            status = scheduler(db, "status")
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=WAIT_SECONDS) == 0, worker.log()
    finally:
        worker.kill()
    with ScheduleStore(db) as store:
        runs = store.runs(schedule="on_done")
        events = {e.name: e for e in store.events()}
    assert sorted(r.params["payload"]["n"] for r in runs) == [1, 2]
    assert len(ledger.read_text().splitlines()) == 2  # each event's run executed once
    assert events["nobody.listens"].run_ids == () and events["nobody.listens"].consumed_by == "system-test"
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert any(line.startswith("events: 0 pending; last: nobody.listens at ") for line in lines), lines
    assert "  no schedule listens to: nobody.listens" in lines
